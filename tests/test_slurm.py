"""``--launcher slurm`` against a real single-node SLURM (tests/slurm/start.sh starts one: Debian's slurmctld,
slurmd and munge on localhost; .ci/run calls it). The cluster tests are system tests: without a cluster they are
skipped with the reason, and fail under CI=true; the checks that need none run in the default suite."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fixtures import ROOT, call_main, missing, numbers, read_metrics, run_fit, tiny_raw, write_yaml
from config import from_dict
from config.sweep import Point
from train.rundir import RunDir, read_results
from launch.slurm import parameters
from launch.plan import Job
from launch.tune import NOT_COUNTED, SUMMARY


def cluster_state() -> str | None:
    """None when a SLURM cluster answers with an idle (or mixed) node; otherwise why not."""
    if shutil.which("sinfo") is None:
        return "sinfo not found"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"sinfo failed ({e})"
    if out.returncode != 0:
        return f"sinfo failed: {out.stderr.strip().splitlines()[0] if out.stderr.strip() else out.returncode}"
    if not {"idle", "mixed"} & set(out.stdout.split()):
        return f"no idle node (sinfo: {' '.join(out.stdout.split())})"
    return None


@pytest.fixture(scope="module")
def cluster():
    """A SLURM cluster that answers with an idle node (``missing`` otherwise)."""
    why = cluster_state()
    if why is not None:
        missing("SLURM", f"no cluster answers here ({why})",
                "tests/slurm/start.sh starts a single-node one: root, Debian's slurmctld/slurmd/munge")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from fixtures import write_mnist

    return write_mnist(tmp_path_factory.mktemp("slurm") / "fmnist", n_train=512, n_test=100)


def sweep_raw(root: Path, out: Path, epochs: int = 4, **slurm) -> dict:
    raw = tiny_raw(root, out, name="s", epochs=epochs, batch_size=16, log_every=1)
    raw["slurm"] = {"partition": "debug", "time_min": 10, **slurm}
    return raw


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / "sweep.json").read_text())
    except (OSError, ValueError):
        return {}


@pytest.mark.system
@pytest.mark.numeric
def test_preempted_job_requeues_and_a_resume_gathers_after_the_submitter_died(cluster, data_root, tmp_path, capsys):
    """Two points as two jobs. One gets SIGUSR2 (what SLURM sends at the time limit or on preemption): it
    checkpoints, requeues itself and continues where it stopped. The submitting process is then killed with
    SIGKILL (its shell went away); ``--resume COMPARE_DIR`` waits for the jobs still on the cluster and
    writes the comparison. Every number equals the same runs trained here, uninterrupted. 10 epochs of ~0.3 s:
    time enough to signal the job after its first, however loaded the machine that waits for it."""
    raw = sweep_raw(data_root, tmp_path / "runs", epochs=10)
    raw["sweep"] = {"seed": [0, 1]}
    cfg_file = write_yaml(tmp_path / "sweep.yaml", raw)
    folder = tmp_path / "cmp"
    submitter = subprocess.Popen([sys.executable, "main.py", "--cfg", str(cfg_file), "--launcher", "slurm",
                                  "--out", str(folder)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)

    def first_epoch():
        # The job's own note of its run directory (launch/slurm.py), not sweep.json: the submitter copies it
        # there only every few seconds, which left the signal a second or so before the run ended.
        marker = folder / "slurm" / "point-0.run_dir"
        d = marker.read_text().strip() if marker.is_file() else None
        results = (read_results(d) or {}) if d else {}
        assert results.get("status") != "completed", "the point finished before it could be signalled"
        return d if results.get("epochs_done", 0) >= 1 else None

    run_dir = Path(wait_for(first_epoch, 120, "the first point's first epoch"))
    def job_ids():
        ids = [p.get("slurm_job") for p in manifest(folder).get("points") or []]
        return ids if ids and all(ids) else None

    job_ids = wait_for(job_ids, 30, "both points' job ids in sweep.json")
    subprocess.run(["scancel", "--signal=USR2", job_ids[0]], check=True)
    wait_for(lambda: (read_results(run_dir) or {}).get("status") == "interrupted", 60, "the checkpoint on SIGUSR2")
    submitter.kill()
    submitter.communicate(timeout=30)

    r = call_main(capsys, "--resume", folder)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "still queued or running on SLURM" in r.stdout and (folder / "index.md").is_file()
    results = read_results(run_dir)
    assert results["status"] == "completed"
    assert [a["status"] for a in results["attempts"]] == ["interrupted", "completed"]
    assert "SIGUSR2 received" in (run_dir / "train.log").read_text()  # the job's own log, in its run directory
    for point, seed in zip(manifest(folder)["points"], (0, 1)):
        ref_dir, _ = run_fit(from_dict({**tiny_raw(data_root, tmp_path / f"ref{seed}", name="s", epochs=10,
                                                   batch_size=16, log_every=1), "seed": seed}))
        assert numbers(read_metrics(Path(point["run_dir"]))) == numbers(read_metrics(ref_dir))
        a, b = (torch.load(Path(d) / "last.pt", weights_only=True)["model"] for d in (point["run_dir"], ref_dir))
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.system
def test_an_unknown_partition_fails_its_point_only_and_a_two_task_point_trains_with_ddp(cluster, data_root, tmp_path,
                                                                                       capsys):
    raw = sweep_raw(data_root, tmp_path / "runs", tasks_per_node=2)
    raw["train"]["epochs"] = 2
    raw["sweep"] = {"slurm.partition": ["debug", "no_such_partition"]}
    r = call_main(capsys, "--cfg", write_yaml(tmp_path / "sweep.yaml", raw), "--launcher", "slurm",
                  "--out", tmp_path / "cmp")
    assert r.returncode == 1, r.stdout + r.stderr
    line = next(x for x in r.stdout.splitlines() if x.strip().startswith("failed") and "no_such_partition" in x)
    assert "not submitted" in line and "invalid partition" in line.lower(), line
    assert any(x.strip().startswith("ok") and "partition=debug" in x for x in r.stdout.splitlines()), r.stdout
    points = manifest(tmp_path / "cmp")["points"]
    ok = read_results(points[0]["run_dir"])
    assert ok["status"] == "completed" and ok["processes"] == 2 and ok["global_batch"] == 32
    assert all(row["train_images"] == 512 for row in read_metrics(Path(points[0]["run_dir"])))
    assert "no_such_partition" in (tmp_path / "cmp" / "index.md").read_text()


def test_launcher_needs_sbatch_and_excludes_jobs(tmp_path, capsys, monkeypatch):
    raw = tiny_raw(tmp_path, tmp_path / "runs")
    raw["sweep"] = {"seed": [0, 1]}
    cfg = write_yaml(tmp_path / "s.yaml", raw)
    r = call_main(capsys, "--cfg", cfg, "--launcher", "slurm", "--jobs", "2")
    assert r.returncode == 2 and "--jobs: only with --launcher local" in r.stderr
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    r = call_main(capsys, "--cfg", cfg, "--launcher", "slurm")
    assert r.returncode == 2 and "sbatch not found" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "runs").exists()  # nothing made before the check


def test_slurm_section_becomes_submitit_parameters_and_does_not_change_the_math(tmp_path):
    from train.checkpoint import fingerprint

    raw = tiny_raw(tmp_path, tmp_path)
    plain = from_dict(raw)
    cfg = from_dict({**raw, "slurm": {"partition": "gpu", "time_min": 120, "gpus_per_node": 4, "nodes": 2,
                                      "cpus_per_task": 8, "mem_gb": 64, "sbatch": {"account": "lab", "qos": "high"}}})
    job = Job(0, Point("p", {}, cfg, "s.yaml", "p"), RunDir(tmp_path, "p"), cfg)
    assert parameters(job) == {"timeout_min": 120, "nodes": 2, "tasks_per_node": 4, "gpus_per_node": 4, "name": "p",
                               "slurm_partition": "gpu", "cpus_per_task": 8, "mem_gb": 64,
                               "slurm_additional_parameters": {"account": "lab", "qos": "high"}}
    assert fingerprint(cfg) == fingerprint(plain)  # a run moved to another cluster still resumes


@pytest.mark.system
def test_a_tune_search_runs_in_slurm_worker_jobs_then_its_finals_as_jobs(cluster, data_root, tmp_path, capsys):
    """--launcher slurm --jobs 2 with a tune: section: two SLURM jobs draw the trials from the call's SQLite
    study, then the best setting's other seed trains as a job of its own and the comparison is written."""
    import optuna

    raw = sweep_raw(data_root, tmp_path / "runs", epochs=2)
    raw["data"]["limit_train"] = 128
    raw["sweep"] = {"seed": [0, 1]}
    raw["tune"] = {"params": {"train.lr": {"log_uniform": [1.0e-3, 1.0e-2]}}, "trials": 3, "pruner": "none"}
    cmp = tmp_path / "cmp"
    r = call_main(capsys, "--cfg", write_yaml(tmp_path / "tune.yaml", raw), "--launcher", "slurm", "--jobs", "2",
                  "--out", cmp)
    assert r.returncode == 0, r.stdout + r.stderr
    m = manifest(cmp)
    assert len(m["tune"]["slurm_workers"]) == 2 and m["tune"]["searched"] is True
    storage = f"sqlite:///{cmp / 'study.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    every = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    # Two workers that ask at once may both take the last trial; the one past the budget is told FAIL and
    # marked not counted (launch/tune.py, Worker._next), so the search still trains exactly three.
    trials = [t for t in every if NOT_COUNTED not in t.user_attrs]
    extra = [t for t in every if NOT_COUNTED in t.user_attrs]
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE")], every
    assert all(t.state.name == "FAIL" and t.user_attrs[NOT_COUNTED] == "asked past the budget" for t in extra), every
    assert [t["number"] for t in json.loads((cmp / SUMMARY).read_text())["experiments"][0]["trials"]] == [0, 1, 2]
    assert all(t.user_attrs["owner"]["pid"] != os.getpid() for t in trials)  # trained in the jobs, not here
    best = max(trials, key=lambda t: t.value)
    seed0, seed1 = m["points"]
    assert read_results(seed0["run_dir"])["trial"]["number"] == best.number  # the trials' seed: the best trial
    assert seed1["slurm_job"] and read_results(seed1["run_dir"])["status"] == "completed"
    assert seed1["config"]["train"]["lr"] == best.params["train.lr"]
    assert "## Tuning" in (cmp / "index.md").read_text()
