"""tune: with real processes and real signals: a search stopped by SIGTERM, then killed with SIGKILL, then resumed,
runs no trial twice and loses none; two ``--jobs`` workers share one SQLite study without a lost or duplicated
trial, and a SIGTERM to their launcher saves both their trials."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures import ROOT, read_metrics, tiny_raw, write_yaml
from train.rundir import read_results

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from fixtures import write_mnist

    return write_mnist(tmp_path_factory.mktemp("tune") / "fmnist", n_train=256, n_test=128)


def tune_yaml(data_root: Path, tmp_path: Path, trials: int, epochs: int) -> Path:
    """simple_cnn on 256 images: about a second an epoch on one core, so a signal lands inside a trial."""
    raw = tiny_raw(data_root, tmp_path / "runs", epochs=epochs, batch_size=16, model={"name": "simple_cnn"},
                   data={"augment": False})
    raw["tune"] = {"params": {"train.lr": {"log_uniform": [1.0e-4, 1.0e-2]}}, "trials": trials, "pruner": "none"}
    return write_yaml(tmp_path / "tune.yaml", raw)


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), *map(str, args)], cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def trial_dirs(compare: Path) -> dict[int, Path]:
    """Each trial's run directory, by trial number (from its results.json)."""
    out = {}
    for d in sorted((compare / "trials").glob("*/")):
        r = read_results(d) or {}
        if "trial" in r:
            assert r["trial"]["number"] not in out, f"trial {r['trial']['number']} has two run directories"
            out[r["trial"]["number"]] = d
    return out


def wait_for(proc: subprocess.Popen, compare: Path, number: int, epochs: int, timeout: float = 240) -> Path:
    """Trial ``number``'s run directory once it has finished ``epochs`` epochs (and is still training)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = trial_dirs(compare).get(number) if (compare / "trials").is_dir() else None
        if d is not None and (read_results(d) or {}).get("epochs_done", 0) >= epochs:
            return d
        if proc.poll() is not None:
            pytest.fail(f"it ended early (exit {proc.returncode}):\n{proc.stdout.read()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"trial {number} did not reach epoch {epochs} in time")


def study(compare: Path):
    """(the study's trials, every trial of the storage with the not-counted ones) of the call's one study."""
    import optuna

    storage = f"sqlite:///{compare / 'study.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()


def test_sigterm_then_sigkill_mid_study_then_resume_runs_no_trial_twice(data_root, tmp_path):
    cfg = tune_yaml(data_root, tmp_path, trials=4, epochs=3)
    compare = tmp_path / "compare"

    p = start("--cfg", cfg, "--out", compare, "--quiet")
    wait_for(p, compare, 1, 1)  # trial 0 done, trial 1 one epoch in
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 143, out
    assert f"python main.py --resume {compare}" in out
    trials = study(compare)
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE"), (1, "RUNNING")]
    first = {"value": trials[0].value, "params": trials[0].params}
    dirs = trial_dirs(compare)
    untouched = (dirs[0] / "metrics.jsonl").stat().st_mtime_ns
    assert read_results(dirs[1])["status"] == "interrupted" and (dirs[1] / "last.pt").is_file()

    p = start("--resume", compare, "--quiet")
    wait_for(p, compare, 2, 1)  # trial 1 finished in its own directory, trial 2 one epoch in
    p.kill()  # SIGKILL: no checkpoint beyond trial 2's epoch 1, the trial RUNNING in the study
    p.wait(timeout=60)
    trials = study(compare)
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "RUNNING")]

    p = start("--resume", compare, "--quiet")
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0, out
    trials = study(compare)
    assert [(t.number, t.state.name) for t in trials] == [(n, "COMPLETE") for n in range(4)], \
        [(t.number, t.state.name, t.user_attrs) for t in trials]
    assert {"value": trials[0].value, "params": trials[0].params} == first
    dirs2 = trial_dirs(compare)
    assert sorted(dirs2) == [0, 1, 2, 3] and all(dirs2[n] == dirs[n] for n in dirs)  # continued in place
    assert (dirs2[0] / "metrics.jsonl").stat().st_mtime_ns == untouched  # trial 0 not trained again
    for n, d in dirs2.items():
        results = read_results(d)
        assert [r["epoch"] for r in read_metrics(d)] == [1, 2, 3], (n, read_metrics(d))  # each epoch once
        assert results["status"] == "completed" and results["best_val_acc"] == trials[n].value
        assert results["trial"]["params"] == trials[n].params
    assert len(read_results(dirs2[1])["attempts"]) == 2 and len(read_results(dirs2[2])["attempts"]) == 2
    summary = json.loads((compare / "tune.json").read_text())["experiments"][0]
    assert [t["number"] for t in summary["trials"]] == [0, 1, 2, 3]
    assert summary["best"]["value"] == max(t.value for t in trials)
    assert (compare / "index.html").is_file()


def test_two_workers_share_one_sqlite_study_and_a_sigterm_saves_both_trials(data_root, tmp_path):
    cfg = tune_yaml(data_root, tmp_path, trials=6, epochs=2)
    compare = tmp_path / "compare"

    p = start("--cfg", cfg, "--out", compare, "--quiet", "--jobs", "2")
    wait_for(p, compare, 2, 1)  # both workers are training (trials 0 and 1 started together)
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 143, out
    running = [t for t in study(compare) if t.state.name == "RUNNING"]
    # A worker the signal reaches between two trials (asking the next, building its config) tells the trial it
    # just asked FAIL, not counted; only a trial that had a run directory stays RUNNING (tolerant all the same).
    trained = [t for t in running if "run_dir" in t.user_attrs]
    assert trained, "a stop mid-trial leaves its trial running, to continue"
    assert all(t.user_attrs["owner"] == {"released": True} for t in running), [t.user_attrs for t in running]
    for t in trained:
        assert read_results(t.user_attrs["run_dir"])["status"] == "interrupted"

    p = start("--resume", compare, "--quiet", "--jobs", "2")
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0, out
    trials = study(compare)
    counted = [t for t in trials if "not_counted" not in t.user_attrs]
    assert len(counted) == 6 and all(t.state.name == "COMPLETE" for t in counted), \
        [(t.number, t.state.name, t.user_attrs) for t in trials]
    dirs = trial_dirs(compare)
    assert sorted(dirs) == sorted(t.number for t in counted)  # one run directory per trial, none lost
    for t in counted:
        assert [r["epoch"] for r in read_metrics(dirs[t.number])] == [1, 2]
        assert read_results(dirs[t.number])["trial"]["params"] == t.params
    owners = {t.user_attrs["owner"]["pid"] for t in counted}
    assert len(owners) >= 2, "both workers drew trials"
    for k in (0, 1):
        assert (compare / "trials" / f"worker-{k}.log").is_file()
