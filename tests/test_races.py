"""Two processes on one directory, started together as a hurried user or two cluster jobs would: one writes,
the other is refused in one line before it changes anything (core/lock.py), and nothing is trained twice."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import pytest

from fixtures import ROOT, read_metrics, run_dirs_at, tiny_raw, write_mnist, write_yaml
from train.rundir import read_results

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_mnist(tmp_path_factory.mktemp("races") / "fmnist", n_train=256, n_test=128)


def start(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # OMP_NUM_THREADS: conftest's
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def together(*commands: tuple) -> list[tuple[int, str, str]]:
    """Start every command at once; (exit code, stdout, stderr) of each."""
    procs = [start(*c) for c in commands]
    outputs = [p.communicate(timeout=300) for p in procs]  # read while they run: a full pipe would block a child
    return [(p.returncode, *out) for p, out in zip(procs, outputs)]


def refused(stderr: str) -> bool:
    """The one line a second writer gets (exit 2)."""
    lines = stderr.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("error: ") and " in use by pid " in lines[0]


def killed_after(cmd: tuple, out, epochs: int, count: int = 1):
    """Start ``cmd``, SIGKILL it once ``count`` of its runs under ``out`` have ``epochs`` epochs."""
    proc = start(*cmd)
    run_dirs_at(out, proc, epochs, count)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def test_two_resumes_of_one_run_at_once_train_it_once(data_root, tmp_path):
    cfg = write_yaml(tmp_path / "run.yaml", tiny_raw(data_root, tmp_path / "runs", epochs=24))
    killed_after(("--cfg", cfg), tmp_path / "runs", 1)
    (run,) = (tmp_path / "runs").iterdir()
    ends = together(("--resume", run), ("--resume", run))
    codes = sorted(code for code, _, _ in ends)
    assert codes in ([0, 0], [0, 2]), ends
    if codes == [0, 2]:  # the usual case: they overlapped
        (loser,) = [e for e in ends if e[0] == 2]
        assert refused(loser[2]), loser
    else:  # one finished before the other looked: it found the run completed
        assert any("already completed" in out + err for _, out, err in ends), ends
    assert [r["epoch"] for r in read_metrics(run)] == list(range(1, 25))  # each epoch once
    results = read_results(run)
    assert results["status"] == "completed"
    assert [a["status"] for a in results["attempts"]] == ["killed", "completed"]  # no attempt lost or added


def test_two_resumes_of_one_sweep_at_once_train_each_point_once(data_root, tmp_path):
    raw = tiny_raw(data_root, tmp_path / "runs", epochs=6)
    raw["sweep"] = {"seed": [0, 1, 2]}
    cfg = write_yaml(tmp_path / "sweep.yaml", raw)
    out = tmp_path / "cmp"
    killed_after(("--cfg", cfg, "--out", out), tmp_path / "runs", 2)  # in the first point
    ends = together(("--resume", out), ("--resume", out))
    codes = sorted(code for code, _, _ in ends)
    assert codes in ([0, 0], [0, 2]), ends
    if codes == [0, 2]:
        (loser,) = [e for e in ends if e[0] == 2]
        assert refused(loser[2]), loser
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 3  # no point started twice in two directories
    for run in runs:
        assert [r["epoch"] for r in read_metrics(run)] == list(range(1, 7))
        assert read_results(run)["status"] == "completed"
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(row["status"] == "completed" for row in rows)
    recorded = [p["run_dir"] for p in json.loads((out / "sweep.json").read_text())["points"]]
    assert sorted(recorded) == [str(r.resolve()) for r in runs]


def test_two_sweeps_given_one_out_at_once_leave_no_orphan_runs(data_root, tmp_path):
    out = tmp_path / "cmp"
    commands = []
    for k in (0, 1):
        raw = tiny_raw(data_root, tmp_path / f"runs{k}", epochs=2)
        raw["sweep"] = {"seed": [0, 1]}
        commands.append(("--cfg", write_yaml(tmp_path / f"s{k}.yaml", raw), "--out", out))
    ends = together(*commands)
    assert sorted(code for code, _, _ in ends) == [0, 2], ends
    (loser,) = [k for k, e in enumerate(ends) if e[0] == 2]
    err = ends[loser][2]
    assert refused(err) or (len(err.strip().splitlines()) == 1 and "already holds a multi-run call" in err), err
    assert not (tmp_path / f"runs{loser}").exists()  # the refused sweep trained nothing
    winner_runs = sorted((tmp_path / f"runs{1 - loser}").iterdir())
    recorded = [p["run_dir"] for p in json.loads((out / "sweep.json").read_text())["points"]]
    assert sorted(recorded) == [str(r.resolve()) for r in winner_runs] and len(winner_runs) == 2
