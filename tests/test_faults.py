"""Faults with real signals to real processes, and sweeps that resume: the run directory stays consistent
and truthful, and ``--resume`` ends where an uninterrupted run ends, bit for bit."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train.engine
from fixtures import (ROOT, TINY_VIT, call_main, hold_lock, missing, numbers, read_metrics, run_dirs_at, run_fit,
                      tiny_raw, write_yaml)
from config import from_dict
from core.errors import RunFailed
from core.files import TEMP_PREFIX
from train.rundir import is_live, read_results

def long_raw(root, out, **train):
    """Long enough (16 tiny epochs) that a signal lands mid-run; every source of randomness on."""
    return tiny_raw(root, out, model={**TINY_VIT, "dropout": 0.1, "drop_path": 0.1}, epochs=16,
                    mixup_alpha=0.8, warmup_epochs=1, data={"random_erasing": 0.25}, **train)


def start(cfg_file: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # OMP_NUM_THREADS: conftest's
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--cfg", str(cfg_file)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from fixtures import write_mnist

    return write_mnist(tmp_path_factory.mktemp("faults") / "fmnist", n_train=256, n_test=128)


@pytest.mark.system
@pytest.mark.numeric
def test_sigterm_and_sigkill_to_real_runs_then_resume_exactly(data_root, tmp_path, capsys):
    """Two real runs of one config, started together: SIGTERM to one after epoch 2 (exit 143, checkpoint,
    the resume command printed), SIGKILL to the other inside an epoch after 3 (the directory stays
    consistent, a temporary file it may have left is removed). Both resume to the uninterrupted run."""
    raw = long_raw(data_root, tmp_path / "term", log_every=1)
    raw["output"]["checkpoint_every_steps"] = 3  # mid-epoch checkpoints too: a kill may land in a write
    term = start(write_yaml(tmp_path / "term.yaml", raw))
    killed = start(write_yaml(tmp_path / "kill.yaml", {**raw, "output": {**raw["output"], "dir": str(tmp_path / "kill")}}))

    (term_dir,) = run_dirs_at(tmp_path / "term", term, 2)
    term.send_signal(signal.SIGTERM)
    (kill_dir,) = run_dirs_at(tmp_path / "kill", killed, 3)
    time.sleep(0.13)  # somewhere inside an epoch
    killed.kill()
    out = term.communicate(timeout=120)[0]
    killed.wait(timeout=60)

    assert term.returncode == 143, out
    assert f"resume with: python main.py --resume {term_dir}" in out
    results = read_results(term_dir)
    assert results["status"] == "interrupted" and "SIGTERM" in results["error"]
    assert not list(term_dir.glob(f"{TEMP_PREFIX}*"))
    ckpt = torch.load(term_dir / "last.pt", weights_only=True)
    assert len(read_metrics(term_dir)) == ckpt["epoch"] and results["checkpoint"] == results["error"].split(
        "(continues ")[1].rstrip(")")

    # Killed: every file whole and loadable, the log only complete lines, the status not a lie.
    results = read_results(kill_dir)
    assert results["status"] == "running" and is_live(results) is False
    rows = read_metrics(kill_dir)
    assert rows and [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
    ckpt = torch.load(kill_dir / "last.pt", weights_only=True)
    assert ckpt["epoch"] <= len(rows) <= ckpt["epoch"] + 1
    torch.load(kill_dir / "best.pt", weights_only=True)

    ref_dir, _ = run_fit(from_dict(long_raw(data_root, tmp_path / "ref", log_every=1)))
    for run_dir, first_attempt in ((term_dir, "interrupted"), (kill_dir, "killed")):
        r = call_main(capsys, "--resume", run_dir)
        assert r.returncode == 0, r.stderr
        assert not list(run_dir.glob(f"{TEMP_PREFIX}*"))
        results = read_results(run_dir)
        assert results["status"] == "completed" and results["resume_command"] is None
        assert [a["status"] for a in results["attempts"]] == [first_attempt, "completed"]
        assert numbers(read_metrics(run_dir)) == numbers(read_metrics(ref_dir))
        assert all(torch.equal(a, b) for a, b in zip(torch.load(run_dir / "best.pt").values(),
                                                      torch.load(ref_dir / "best.pt").values()))


def test_resume_refuses_a_held_run_but_not_a_reused_pid(data_root, tmp_path, capsys):
    run_dir, _ = run_fit(from_dict(tiny_raw(data_root, tmp_path)))
    results = json.loads((run_dir / "results.json").read_text())
    holder = hold_lock(run_dir)
    try:
        r = call_main(capsys, "--resume", run_dir)
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
        assert f"in use by pid {holder.pid} on " in r.stderr and "one process writes a run directory at a time" in r.stderr
        assert read_results(run_dir) == results  # nothing changed
    finally:
        holder.kill()
        holder.wait()
    # A killed run's pid now names another live process (here: this test's parent), and nobody holds the lock:
    # not "running". The same with the pid of the resuming process itself (a restarted container).
    for pid in (os.getppid(), os.getpid()):
        (run_dir / "results.json").write_text(json.dumps({**results, "status": "running", "pid": pid}))
        assert is_live(read_results(run_dir), run_dir) is False
    r = call_main(capsys, "--resume", run_dir)
    assert r.returncode == 0, r.stderr
    assert read_results(run_dir)["status"] == "completed"


# ----------------------------------------------------------------------------- sweeps


def sweep_yaml(root, tmp_path, name="s.yaml"):
    raw = tiny_raw(root, tmp_path / "runs", model={**TINY_VIT, "dropout": 0.1}, epochs=1)
    raw["sweep"] = {"seed": [0, 1, 2]}
    return write_yaml(tmp_path / name, raw)


@pytest.mark.numeric
def test_a_stopped_sweep_resumes_without_training_anything_twice(plain_comparisons, unsaved_figures, data_root,
                                                                 tmp_path, capsys, monkeypatch):
    cfg = sweep_yaml(data_root, tmp_path)
    ref_runs = {}  # each point trained alone, uninterrupted
    for seed in (0, 1, 2):
        raw = {**tiny_raw(data_root, tmp_path / "ref", model={**TINY_VIT, "dropout": 0.1},
                          epochs=1, seed=seed), "name": f"t-fashion_mnist-seed={seed}"}
        ref_runs[raw["name"]] = run_fit(from_dict(raw))[0]

    # Stop with SIGTERM in the middle of the second point (step 4 of its epoch).
    real, calls = train.engine.train_step, [0]

    def step_then_signal(*args):
        out = real(*args)
        calls[0] += 1
        if calls[0] == 8 + 4:  # points have 1 epoch of 8 steps
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(train.engine, "train_step", step_then_signal)
    compare = tmp_path / "compare"
    r = call_main(capsys, "--cfg", cfg, "--set", f"output.dir={tmp_path / 'runs2'}", "--out", compare)
    assert r.returncode == 143, r.stderr
    assert f"python main.py --resume {compare}" in r.stdout and (compare / "index.md").is_file()
    manifest = json.loads((compare / "sweep.json").read_text())
    first, second, third = (p["run_dir"] for p in manifest["points"])
    assert read_results(first)["status"] == "completed" and read_results(second)["status"] == "interrupted"
    assert third is None
    untouched = (Path(first) / "metrics.jsonl").stat().st_mtime_ns

    monkeypatch.setattr(train.engine, "train_step", real)
    r = call_main(capsys, "--resume", compare)
    assert r.returncode == 0, r.stderr
    assert "1 of 3 runs already finished; 2 to run or continue" in r.stdout
    manifest = json.loads((compare / "sweep.json").read_text())
    dirs = [Path(p["run_dir"]) for p in manifest["points"]]
    assert dirs[:2] == [Path(first), Path(second)]
    assert (dirs[0] / "metrics.jsonl").stat().st_mtime_ns == untouched  # not trained twice
    for d in dirs:
        name = read_results(d)["name"]
        assert read_results(d)["status"] == "completed"
        assert numbers(read_metrics(d)) == numbers(read_metrics(ref_runs[name]))
    assert "Runs that did not complete" not in (compare / "index.md").read_text()

    r = call_main(capsys, "--resume", compare)  # all done: nothing runs, the comparison is rewritten
    assert r.returncode == 0 and "3 of 3 runs already finished; 0 to run" in r.stdout


def test_a_sweep_resumes_from_another_directory_and_after_a_kill_before_a_config(plain_comparisons, unsaved_figures,
                                                                                 data_root, tmp_path,
                                                                                 capsys, monkeypatch):
    """Relative output.dir / data.root are taken from where the call started; a point killed right after its
    directory was made (no config.yaml yet) starts afresh."""
    raw = tiny_raw("fmnist", "runs", model={**TINY_VIT}, precision="fp32", epochs=1)
    raw["sweep"] = {"seed": [0, 1]}
    (tmp_path / "fmnist").symlink_to(data_root)
    monkeypatch.chdir(tmp_path)
    r = call_main(capsys, "--cfg", write_yaml(tmp_path / "s.yaml", raw), "--out", "cmp")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "cmp" / "sweep.json").read_text())
    first, second = (Path(p["run_dir"]) for p in manifest["points"])
    assert first.is_absolute()
    for f in second.iterdir():  # as if killed before config.yaml was written
        shutil.rmtree(f) if f.is_dir() else f.unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = call_main(capsys, "--resume", tmp_path / "cmp")
    assert r.returncode == 0, r.stderr
    assert "1 of 2 runs already finished; 1 to run" in r.stdout
    manifest = json.loads((tmp_path / "cmp" / "sweep.json").read_text())
    assert Path(manifest["points"][0]["run_dir"]) == first
    assert Path(manifest["points"][1]["run_dir"]).parent == tmp_path / "runs"  # not elsewhere/runs
    assert not (elsewhere / "runs").exists()


def test_a_resumed_sweep_reruns_failed_points(plain_comparisons, unsaved_figures, data_root, tmp_path, capsys,
                                              monkeypatch):
    cfg = sweep_yaml(data_root, tmp_path)
    real, calls = train.engine.train_step, [0]

    def second_point_breaks(*args):
        calls[0] += 1
        if calls[0] == 8 + 1:  # the second point's first step
            raise RuntimeError("a broken GPU")
        return real(*args)

    monkeypatch.setattr(train.engine, "train_step", second_point_breaks)
    compare = tmp_path / "compare"
    r = call_main(capsys, "--cfg", cfg, "--out", compare)
    assert r.returncode == 1 and "a broken GPU" in r.stdout
    monkeypatch.setattr(train.engine, "train_step", real)
    r = call_main(capsys, "--resume", compare)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 of 3 runs already finished; 1 to run or continue" in r.stdout
    manifest = json.loads((compare / "sweep.json").read_text())
    assert [read_results(p["run_dir"])["status"] for p in manifest["points"]] == ["completed"] * 3


def test_sigterm_while_the_comparison_is_written_is_one_line_and_the_resume_writes_it(plain_comparisons, data_root,
                                                                                    tmp_path, capsys, monkeypatch):
    import launch.call

    raw = tiny_raw(data_root, tmp_path / "runs", epochs=1)
    raw["sweep"] = {"seed": [0, 1]}
    cfg, out = write_yaml(tmp_path / "s.yaml", raw), tmp_path / "cmp"
    plain = launch.call.compare

    def signalled(*args, **kwargs):  # a real SIGTERM to this process once the comparison has begun
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler raises here
        raise AssertionError("SIGTERM did not stop the comparison")

    monkeypatch.setattr(launch.call, "compare", signalled)
    r = call_main(capsys, "--cfg", cfg, "--out", out)
    assert r.returncode == 143
    assert r.stderr.strip() == (f"stopped by SIGTERM while writing the comparison; every run is saved, and "
                                f"python main.py --resume {out} writes it")
    monkeypatch.setattr(launch.call, "compare", plain)
    r = call_main(capsys, "--resume", out)
    assert r.returncode == 0, r.stderr
    assert "2 of 2 runs already finished; 0 to run" in r.stdout and (out / "results.csv").is_file()


def test_a_comparison_that_cannot_be_written_says_how_to_write_it_again(plain_comparisons, data_root, tmp_path, capsys,
                                                                       monkeypatch):
    import launch.call

    raw = tiny_raw(data_root, tmp_path / "runs", epochs=1)
    raw["sweep"] = {"seed": [0, 1]}
    cfg, out = write_yaml(tmp_path / "s.yaml", raw), tmp_path / "cmp"

    def full_disk(*args, **kwargs):
        raise RunFailed(f"{out / 'loss.png'}: cannot write (No space left on device)")

    monkeypatch.setattr(launch.call, "compare", full_disk)
    r = call_main(capsys, "--cfg", cfg, "--out", out)
    assert r.returncode == 1
    assert r.stderr.strip() == (f"error: {out / 'loss.png'}: cannot write (No space left on device); every run is "
                                f"saved, and python main.py --resume {out} writes the comparison")


# ----------------------------------------------------------------------------- recorded truthfully


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB file system (tmpfs) to fill up; needs root and mount (``missing`` otherwise)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        missing("a 1 MiB tmpfs", f"it cannot be mounted ({(r.stderr or r.stdout).strip() or 'mount failed'})",
                "run the system tests as root")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def read_only():
    """Makes a folder read-only for real: a read-only bind mount as root (where permissions do not stop writes),
    the write bits off otherwise."""
    undo = []

    def make(folder: Path) -> None:
        if os.geteuid() != 0:
            for p in (folder, *folder.rglob("*")):
                p.chmod(p.stat().st_mode & ~0o222)
            undo.append(lambda: [p.chmod(p.stat().st_mode | 0o200) for p in (folder, *folder.rglob("*"))])
            return
        r = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True, text=True)
        if r.returncode != 0:
            missing("a read-only bind mount", f"it cannot be made ({(r.stderr or r.stdout).strip()})",
                    "run the system tests as root")
        undo.append(lambda: subprocess.run(["umount", "-l", str(folder)], capture_output=True))

    yield make
    for step in reversed(undo):
        step()


@pytest.mark.system
def test_resuming_a_read_only_run_is_one_line(data_root, tmp_path, capsys, read_only):
    run_dir, _ = run_fit(from_dict(tiny_raw(data_root, tmp_path, epochs=1)))
    results = read_results(run_dir)
    (run_dir / "results.json").write_text(json.dumps({**results, "status": "interrupted"}))
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    read_only(run_dir)
    r = call_main(capsys, "--resume", run_dir, "--set", "train.epochs=2")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"error: {run_dir}: cannot write there (") and "needs a writable directory" in r.stderr
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


@pytest.mark.system
def test_a_full_disk_is_one_line_and_leaves_no_temporary_files(data_root, small_disk, capsys):
    # A model whose checkpoint (weights + AdamW state) outgrows what the disk has left after epoch 1.
    raw = tiny_raw(data_root, small_disk / "runs", model={**TINY_VIT, "embed_dim": 64}, epochs=6)
    (small_disk / "filler").write_bytes(b"\0" * (1024 * 1024 - 400 * 1024))
    r = call_main(capsys, "--cfg", write_yaml(small_disk.parent / "c.yaml", raw))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1].startswith("error: cannot write ") and "No space left" in r.stderr
    (run_dir,) = (small_disk / "runs").iterdir()
    assert not list(run_dir.glob(f"{TEMP_PREFIX}*"))
    results = read_results(run_dir)  # whole, whatever it could record
    assert results["status"] == "failed" and "No space left" in results["error"] or \
        results["status"] == "running" and "could not record status 'failed'" in r.stderr
    for pt in run_dir.glob("*.pt"):
        torch.load(pt, weights_only=True)


def test_a_nan_validation_loss_is_diverged_not_completed(data_root, tmp_path, capsys, monkeypatch):
    import train.fit

    real = train.fit.evaluate

    def nan_eval(*args, **kwargs):
        return {**real(*args, **kwargs), "val_loss": float("nan")}

    monkeypatch.setattr(train.fit, "evaluate", nan_eval)
    r = call_main(capsys, "--cfg", write_yaml(tmp_path / "c.yaml", tiny_raw(data_root, tmp_path / "runs")))
    assert r.returncode == 1 and "validation loss became nan" in r.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    text = (run_dir / "results.json").read_text()
    assert json.loads(text)["status"] == "diverged" and "NaN" not in text


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "a/b", ".hidden", "", "x" * 300])
def test_a_run_name_cannot_leave_output_dir(data_root, tmp_path, capsys, name):
    raw = tiny_raw(data_root, tmp_path / "runs", name=None)
    raw["name"] = name
    r = call_main(capsys, "--cfg", write_yaml(tmp_path / "c.yaml", raw))
    assert r.returncode == 2 and r.stderr.startswith("error: name: ") and len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "escape").exists()


def test_a_stop_just_before_a_run_starts_stops_that_run_not_the_next(data_root, tmp_path, monkeypatch, capsys):
    """SIGTERM after a multi-run call last looked for one and before the run installed its own handling: the
    run inherits it (core/signals.py), checkpoints before its first step and ends interrupted; the call
    starts nothing more. The resume trains the run to the end."""
    import launch.run
    from config.sweep import Point
    from launch.plan import Job
    from train.rundir import RunDir

    jobs = []
    for i in range(2):
        cfg = from_dict(tiny_raw(data_root, tmp_path / "runs", name=f"p{i}"))
        jobs.append(Job(i, Point(f"p{i}", {}, cfg, "s.yaml", f"p{i}"), RunDir(tmp_path / "runs", f"p{i}"), cfg))
    announce = launch.run.log.info

    def info(text, *args, **kwargs):
        announce(text, *args, **kwargs)
        if text.startswith("\n=== run 1/2"):  # the call has looked: no stop yet
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(launch.run.log, "info", info)
    first, *rest = launch.run.Sequential().run(jobs, 2)
    monkeypatch.undo()
    assert (first.status, first.exit_code, rest) == ("interrupted", 128 + signal.SIGTERM, [])
    results = read_results(first.run_dir)
    assert results["status"] == "interrupted" and results["epochs_done"] == 0 and read_metrics(first.run_dir) == []
    ckpt = torch.load(first.run_dir / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (0, 0)
    assert [d.name for d in (tmp_path / "runs").iterdir()] == [first.run_dir.name]  # the second never started
    assert call_main(capsys, "--resume", first.run_dir).returncode == 0
    assert read_results(first.run_dir)["status"] == "completed" and len(read_metrics(first.run_dir)) == 2


def test_checkpoints_every_n_steps_and_minutes(data_root, tmp_path, monkeypatch):
    from train.rundir import RunDir

    saved = []
    real = RunDir.save_state
    def recording(self, state, filename="last.pt"):
        if filename == "last.pt":
            saved.append((state["epoch"], state["step"]))
        real(self, state, filename)

    monkeypatch.setattr(RunDir, "save_state", recording)
    raw = tiny_raw(data_root, tmp_path)
    raw["output"]["checkpoint_every_steps"] = 3
    run_fit(from_dict(raw))
    assert saved == [(0, 3), (0, 6), (1, 0), (1, 1), (1, 4), (1, 7), (2, 0)]  # global steps 3, 6, 9, ...
    saved.clear()
    raw["output"] = {"dir": str(tmp_path), "checkpoint_every_minutes": 1e-9}  # every step, in effect
    run_fit(from_dict(raw))
    assert saved == [(0, s) for s in range(1, 8)] + [(1, 0)] + [(1, s) for s in range(1, 8)] + [(2, 0)]
