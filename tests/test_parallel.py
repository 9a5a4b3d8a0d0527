"""``--jobs N``: points of a multi-run call in worker processes. Each point ends exactly where it ends run alone
(at the same thread count), stop signals reach the workers, and a crashed worker is one failed point.

The launcher's bookkeeping is tested with stand-in workers (small scripts speaking the worker's protocol, no
torch); the real worker (``python -m launch.worker``) in three tests, since each process imports torch."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from io import StringIO
from pathlib import Path

import pytest
import torch

from config.sweep import expand
from core.errors import UserError
from fixtures import (ROOT, TINY_VIT, call_main, numbers, read_metrics, run_dirs_at, run_fit, tiny_config, tiny_raw,
                      write_yaml)
from launch.board import StatusBoard
from launch.local import Workers, plan_workers, run_parallel
from train.rundir import is_live, read_results
from launch.plan import Manifest, jobs_for
from launch.worker import job_spec

# ----------------------------------------------------------------------------- the plan


def test_jobs_and_jobs_per_gpu_rules():
    assert plan_workers(None, None, gpus=[]) is None and plan_workers(1, None, gpus=["0"]) is None
    assert plan_workers(2, None, gpus=[], threads=2) == Workers(2, [], 1)
    assert plan_workers(3, None, gpus=[], threads=16) == Workers(3, [], 5)
    assert plan_workers(4, None, gpus=[], threads=2).threads == 1  # at least one each
    w = plan_workers(None, 2, gpus=["0", "1"], threads=16)  # K per GPU: N = K x GPUs
    assert w.count == 4 and [w.gpu(s) for s in range(4)] == ["0", "1", "0", "1"] and w.threads == 4
    assert plan_workers(3, None, gpus=["GPU-a", "GPU-b"], threads=6).gpu(2) == "GPU-a"  # round-robin
    assert plan_workers(3, 2, gpus=["0", "1"], threads=6).count == 3
    with pytest.raises(UserError, match=r"^--jobs 5: more than --jobs-per-gpu 2 x 2 GPU\(s\) = 4; lower"):
        plan_workers(5, 2, gpus=["0", "1"])
    with pytest.raises(UserError, match=r"^--jobs-per-gpu 2: no CUDA GPU is visible here; use --jobs N"):
        plan_workers(None, 2, gpus=[])


@pytest.mark.parametrize("args, says", [
    (["--jobs", "0"], "error: --jobs: got 0; must be at least 1"),
    (["--jobs", "-1"], "error: --jobs: got -1; must be at least 1"),
    (["--jobs-per-gpu", "0"], "error: --jobs-per-gpu: got 0; must be at least 1"),
    (["--list-models", "--jobs", "2"], "error: --jobs: only used with --cfg or --resume"),
])
def test_bad_jobs_flags_are_one_line(tmp_path, capsys, fmnist_root, args, says):
    cfg = write_yaml(tmp_path / "s.yaml", {**tiny_raw(fmnist_root, tmp_path / "runs"), "sweep": {"seed": [0, 1]}})
    r = call_main(capsys, *([] if "--list-models" in args else ["--cfg", cfg]), *args)
    assert r.returncode == 2 and r.stderr.startswith(says) and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_jobs_per_gpu_without_a_gpu_is_an_error_and_jobs_with_one_run_a_note(tmp_path, capsys, fmnist_root):
    sweep = write_yaml(tmp_path / "s.yaml", {**tiny_raw(fmnist_root, tmp_path / "runs"), "sweep": {"seed": [0, 1]}})
    r = call_main(capsys, "--cfg", sweep, "--jobs-per-gpu", "2")
    assert r.returncode == 2 and r.stderr.startswith("error: --jobs-per-gpu 2: no CUDA GPU is visible here")
    assert r.stderr.count("\n") == 1 and not (tmp_path / "runs").exists()
    single = write_yaml(tmp_path / "one.yaml", tiny_raw(fmnist_root, tmp_path / "runs", epochs=1))
    r = call_main(capsys, "--cfg", single, "--jobs", "2")
    assert r.returncode == 0, r.stderr
    assert r.stderr == "note: --jobs 2: ignored for a single run (it runs in this process)\n"


# ----------------------------------------------------------------------------- the console


def test_status_board_plain_lines_and_live_redraw():
    out = StringIO()
    board = StatusBoard(["a", "bb"], out, live=False)
    board.update(0, "epoch 1/2  val acc 50.00%")
    board.update(0, "epoch 1/2  val acc 50.00%")  # no change: no line
    board.note("a: log in /x/train.log")
    assert out.getvalue() == "point a: epoch 1/2  val acc 50.00%\na: log in /x/train.log\n"

    out = StringIO()
    board = StatusBoard(["a", "bb"], out, live=True)
    board.update(1, "starting")
    board.update(1, "epoch 0/2, running")
    frames = out.getvalue().split("\x1b[2F\x1b[J")  # each redraw goes back up over the board's 2 lines
    assert frames == ["a   queued\nbb  starting\n", "a   queued\nbb  epoch 0/2, running\n"]
    many = StatusBoard([f"p{i}" for i in range(30)], StringIO(), live=True)
    many.texts[3] = "epoch 1/2"
    assert many.lines(rows=5) == ["p3   epoch 1/2", "... and 29 more queued"]


# ----------------------------------------------------------------------------- the launcher, stand-in workers

# Speaks the worker's protocol (spec on stdin, JSON events on stdout) and does what FAKE_PLAN says for its index.
FAKE_WORKER = r'''
import json, os, signal, sys, time
spec = json.loads(sys.stdin.read())
what = os.environ["FAKE_PLAN"].split(",")[spec["index"]]
out = os.environ["FAKE_OUT"]
def send(**event):
    print(json.dumps(event), flush=True)
def run_dir():
    path = os.path.join(out, spec["name"])
    os.makedirs(path, exist_ok=True)
    send(event="run_dir", path=path, log=os.path.join(path, "train.log"), epochs_done=0, epochs=2)
if what == "crash":
    print("Fatal Python error: a stand-in crash", file=sys.stderr, flush=True)
    sys.exit(3)
if what == "kill":
    run_dir()
    os.kill(os.getpid(), signal.SIGKILL)
if what == "wait":  # for a stop signal, then as fit: interrupted, exit 128 + signal
    def stop(signum, frame):
        send(event="outcome", outcome={"status": "interrupted", "run_dir": None, "error": "stopped by SIGTERM "
             "after epoch 1; resume with ...", "exit_code": 128 + signum})
        sys.exit(128 + signum)
    signal.signal(signal.SIGTERM, stop)
    run_dir()
    os.kill(os.getppid(), signal.SIGTERM)  # as if the user stopped the call now
    time.sleep(30)
    sys.exit(5)
run_dir()
print("not an event", flush=True)
send(event="epoch", epoch=1, epochs=2, val_acc=50.0)
env = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")}
send(event="outcome", outcome={"status": "completed", "run_dir": None, "exit_code": None, "results": {
    "best_val_acc": 50.0, "best_epoch": 1, "final_val_acc": 50.0, "env": env, "spec": spec}})
'''


def fake_call(tmp_path, monkeypatch, plan: list[str], workers: Workers):
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    monkeypatch.setenv("FAKE_PLAN", ",".join(plan))
    monkeypatch.setenv("FAKE_OUT", str(tmp_path / "runs"))
    raw = {**tiny_raw(tmp_path, tmp_path / "runs"), "sweep": {"seed": list(range(len(plan)))}}
    points = expand(raw, "s.yaml")
    (tmp_path / "cmp").mkdir()
    manifest = Manifest.start(tmp_path / "cmp", points, "python main.py ...")
    out = StringIO()
    outcomes = run_parallel(jobs_for(points), len(points), workers, manifest=manifest, command="cmd", out=out,
                            live=False, argv=(sys.executable, str(script)))
    return outcomes, out.getvalue(), json.loads((tmp_path / "cmp" / "sweep.json").read_text())


@pytest.mark.system
def test_launcher_records_crashed_and_killed_workers_as_failed_and_goes_on(tmp_path, monkeypatch):
    outcomes, out, manifest = fake_call(tmp_path, monkeypatch, ["crash", "kill", "ok", "ok"],
                                        Workers(2, ["3", "5"], threads=4))
    by_name = {o.point.name: o for o in outcomes}
    assert [by_name[f"t-fashion_mnist-seed={i}"].status for i in range(4)] == ["failed", "failed", "completed", "completed"]
    crashed, killed = by_name["t-fashion_mnist-seed=0"], by_name["t-fashion_mnist-seed=1"]
    assert crashed.error == "worker process exited with code 3; last output: Fatal Python error: a stand-in crash"
    assert crashed.run_dir is None and "a stand-in crash" in crashed.traceback
    log = tmp_path / "runs" / "t-fashion_mnist-seed=1" / "train.log"
    assert killed.error == f"worker process killed by SIGKILL; log: {log}" and killed.run_dir == log.parent
    assert "t-fashion_mnist-seed=0: Fatal Python error: a stand-in crash\n" in out  # output before a run directory: shown
    assert f"point t-fashion_mnist-seed=1: failed: worker process killed by SIGKILL; log: {log}\n" in out
    assert "point t-fashion_mnist-seed=2: epoch 1/2  val acc 50.00%\n" in out
    assert "point t-fashion_mnist-seed=2: done  best val acc 50.00% (epoch 1), final 50.00%\n" in out
    assert "t-fashion_mnist-seed=2: not an event\n" in out  # a stray line on the event channel: shown as output, no harm
    # Only the launcher writes sweep.json: the run directories the workers reported.
    assert [p["run_dir"] for p in manifest["points"]] == [None] + [str(tmp_path / "runs" / f"t-fashion_mnist-seed={i}")
                                                                   for i in (1, 2, 3)]
    # Slots take GPUs round-robin and keep them: seed 2 takes the slot seed 0 (GPU 3) freed, or seed 1's.
    for o in (by_name["t-fashion_mnist-seed=2"], by_name["t-fashion_mnist-seed=3"]):
        assert o.results["env"]["CUDA_VISIBLE_DEVICES"] in ("3", "5") and o.results["env"]["OMP_NUM_THREADS"] == "4"
        spec = o.results["spec"]
        assert spec["threads"] == 4 and spec["run_dir"] is None and spec["command"] == "cmd"
        assert spec["config"]["seed"] == spec["values"]["seed"] and spec["experiment"] == "t-fashion_mnist"


@pytest.mark.system
def test_launcher_passes_a_stop_signal_on_and_starts_nothing_more(tmp_path, monkeypatch):
    handler = signal.getsignal(signal.SIGTERM)
    outcomes, out, _ = fake_call(tmp_path, monkeypatch, ["wait", "ok", "ok"], Workers(1, [], threads=2))
    assert [(o.point.name, o.status, o.exit_code) for o in outcomes] == [
        ("t-fashion_mnist-seed=0", "interrupted", 143), ("t-fashion_mnist-seed=1", "interrupted", 143)]
    assert outcomes[1].error == "not started: the call was stopped" and outcomes[1].run_dir is None
    assert "SIGTERM received: passed on to the 1 running point(s)" in out and "2 queued" in out
    assert "point t-fashion_mnist-seed=0: interrupted: stopped by SIGTERM after epoch 1\n" in out
    assert signal.getsignal(signal.SIGTERM) == handler  # restored


# ----------------------------------------------------------------------------- real workers


def same_weights(a: Path, b: Path) -> bool:
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    x, y = x.get("model", x), y.get("model", y)  # last.pt holds the model's state dict under "model"
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def references(data_root, out: Path, seeds, **train) -> dict[str, Path]:
    """Each point run alone in this process at one thread, as a worker of ``--jobs 2`` on 2 threads runs it:
    the thread count changes the floating-point bits (the order of a reduction), so it must be the same."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {f"t-fashion_mnist-seed={s}": run_fit(tiny_config(data_root, out, name=f"t-fashion_mnist-seed={s}", seed=s, **train))[0]
                for s in seeds}
    finally:
        torch.set_num_threads(before)


# Every source of randomness on (dropout, drop path, MixUp, random erasing), on the CPU (where runs repeat bit for
# bit, in either branch of precision: auto; on a GPU machine too).
RANDOM = dict(model={**TINY_VIT, "dropout": 0.1, "drop_path": 0.1}, mixup_alpha=0.8,
              data={"random_erasing": 0.25}, device="cpu")


def random_raw(data_root, out, **train) -> dict:
    """A sweep over 2 seeds of a tiny config with ``RANDOM``."""
    return {**tiny_raw(data_root, out, **RANDOM, **train), "sweep": {"seed": [0, 1]}}


def assert_like(run_dir: Path, ref: Path) -> None:
    assert numbers(read_metrics(run_dir)) == numbers(read_metrics(ref))
    assert same_weights(run_dir / "last.pt", ref / "last.pt") and same_weights(run_dir / "best.pt", ref / "best.pt")


@pytest.mark.system
@pytest.mark.numeric
def test_jobs_2_gives_each_point_its_numbers_run_alone(fmnist_root, tmp_path, capsys):
    cfg = write_yaml(tmp_path / "s.yaml", random_raw(fmnist_root, tmp_path / "runs", epochs=2))
    r = call_main(capsys, "--cfg", cfg, "--jobs", "2", "--out", tmp_path / "cmp")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "up to 2 runs at once, each in its own process" in r.stdout and "2 of 2 runs completed" in r.stdout
    refs = references(fmnist_root, tmp_path / "ref", (0, 1), epochs=2, **RANDOM)
    manifest = json.loads((tmp_path / "cmp" / "sweep.json").read_text())
    for point in manifest["points"]:
        run_dir, name = Path(point["run_dir"]), point["name"]
        assert_like(run_dir, refs[name])
        results = read_results(run_dir)
        assert results["status"] == "completed" and results["threads"] == 1 and results["swept"] == {
            "seed": point["values"]["seed"]} and results["pid"] != os.getpid()
        log = (run_dir / "train.log").read_text()  # everything fit printed, and nothing of it on the console
        assert log.startswith(f"=== {name} (seed={point['values']['seed']})") and "epoch 2/2  train loss" in log
        assert f"{name}: log in {run_dir / 'train.log'}" in r.stdout and "train loss" not in r.stdout
        assert f"point {name}: epoch 2/2  val acc " in r.stdout
    assert (tmp_path / "cmp" / "index.md").is_file()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_jobs_per_gpu_runs_k_points_on_each_gpu(fmnist_root, tmp_path, capsys):
    raw = {**tiny_raw(fmnist_root, tmp_path / "runs", device="cuda"), "sweep": {"seed": [0, 1, 2]}}
    r = call_main(capsys, "--cfg", write_yaml(tmp_path / "s.yaml", raw), "--jobs-per-gpu", "2", "--out",
                  tmp_path / "cmp")
    assert r.returncode == 0, r.stdout + r.stderr
    gpus = torch.cuda.device_count()
    assert f"up to {min(3, 2 * gpus)} runs at once, each in its own process, on {gpus} GPU(s)" in r.stdout
    lines = r.stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if ": starting on GPU " in line]
    done = [i for i, line in enumerate(lines) if ": done  " in line]
    assert len(starts) == 3 and starts[1] < done[0]  # two points shared the first GPU at once
    for d in (tmp_path / "runs").iterdir():
        results = read_results(d)
        assert results["status"] == "completed" and results["device"].startswith("cuda"), results


def start(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # OMP_NUM_THREADS: conftest's
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


class Lines:
    """A process's output lines, read as they come (a thread), so a test can wait for one."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(proc.stdout), daemon=True)
        self.thread.start()

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if time.monotonic() > deadline:
                pytest.fail(f"no {text!r} in:\n{''.join(self.lines)}")
            time.sleep(0.05)


def gone(pid: int, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):  # a zombie: it has ended (its new parent may not reap it)
            return True
        time.sleep(0.05)
    return False


# A launcher of one real worker (its events ignored), to be killed while the worker trains.
ORPHANING = r'''
import os, subprocess, sys
worker = subprocess.Popen([sys.executable, "-m", "launch.worker", "--parent", str(os.getpid())], stdin=subprocess.PIPE,
                          stdout=subprocess.DEVNULL)
worker.stdin.write(sys.stdin.buffer.read())
worker.stdin.close()
sys.exit(worker.wait())
'''


@pytest.mark.system
@pytest.mark.numeric
def test_sigkill_sigterm_to_a_parallel_sweep_then_resume_exactly(fmnist_root, tmp_path, capsys):
    """A real ``python main.py --jobs 2`` call: once both points train, SIGKILL to one worker (that point
    fails with one line naming its log; the other goes on), then SIGTERM to the call (passed on: the other
    checkpoints and stops; exit 143). ``--resume --jobs 2`` continues both, the killed one from its last.pt,
    and each ends exactly where an uninterrupted run ends. Beside it, a worker whose launcher is SIGKILLed
    gets SIGTERM from the kernel and checkpoints instead of training on orphaned."""
    epochs = 16
    raw = random_raw(fmnist_root, tmp_path / "runs", epochs=epochs, log_every=1)
    call = start("--cfg", write_yaml(tmp_path / "s.yaml", raw), "--jobs", "2", "--out", tmp_path / "cmp",
                 "--set", "output.checkpoint_every_steps=3")
    output = Lines(call)
    orphan_raw = {**random_raw(fmnist_root, tmp_path / "orphan", epochs=200), "sweep": {"seed": [0]}}
    (job,) = jobs_for(expand(orphan_raw, "orphan.yaml"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen([sys.executable, "-c", ORPHANING], stdin=subprocess.PIPE, cwd=ROOT, env=env)
    launcher.stdin.write(json.dumps(job_spec(job, threads=1)).encode())
    launcher.stdin.close()

    try:
        # The victim is the point further on: the other then has the more epochs left to go on with.
        started = run_dirs_at(tmp_path / "runs", call, 1, count=2)
        victim, survivor = sorted(started, key=lambda d: -read_results(d)["epochs_done"])
        os.kill(read_results(victim)["pid"], signal.SIGKILL)
        name = read_results(victim)["name"]
        output.wait_for(f"point {name}: failed: ")
        before = read_results(survivor)["epochs_done"]
        while read_results(survivor)["epochs_done"] == before:  # the other point goes on
            assert call.poll() is None, "".join(output.lines)
            time.sleep(0.05)
        call.send_signal(signal.SIGTERM)

        (orphan,) = run_dirs_at(tmp_path / "orphan", launcher, 1, count=1)
        launcher.kill()
        launcher.wait()
        assert gone(read_results(orphan)["pid"])
        results = read_results(orphan)
        assert results["status"] == "interrupted" and "stopped by SIGTERM" in results["error"], results

        assert call.wait(timeout=120) == 143, "".join(output.lines)
        output.thread.join(timeout=60)
        out = "".join(output.lines)
        assert f"point {name}: failed: worker process killed by SIGKILL; log: {victim / 'train.log'}\n" in out
        assert "SIGTERM received: passed on to the 1 running point(s)" in out
        assert f"python main.py --resume {tmp_path / 'cmp'}" in out and (tmp_path / "cmp" / "index.md").is_file()
        results = read_results(survivor)
        assert results["status"] == "interrupted" and "stopped by SIGTERM" in results["error"], results
        assert gone(results["pid"])
        assert read_results(victim)["status"] == "running" and is_live(read_results(victim)) is False
    finally:  # a failed check leaves no process behind (their workers get SIGTERM from the kernel)
        for proc in (call, launcher):
            if proc.poll() is None:
                proc.kill()

    r = call_main(capsys, "--resume", tmp_path / "cmp", "--jobs", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 of 2 runs already finished; 2 to run or continue" in r.stdout and "2 of 2 runs completed" in r.stdout
    refs = references(fmnist_root, tmp_path / "ref", (0, 1), epochs=epochs, log_every=1, **RANDOM)
    for d, first in ((victim, "killed"), (survivor, "interrupted")):
        results = read_results(d)
        assert results["status"] == "completed" and [a["status"] for a in results["attempts"]] == [first, "completed"]
        assert_like(d, refs[results["name"]])
        assert (d / "train.log").read_text().count("=== t-fashion_mnist-seed=") == 2  # one header per attempt, appended


def test_jobs_check_that_their_workers_import_this_code(monkeypatch):
    """The real probe (a short subprocess that imports no torch) finds this checkout, installed with pip install -e;
    one that finds no launch package, or another copy, is one line before anything starts."""
    import subprocess as sp

    import launch.local
    from launch.local import check_worker_imports

    check_worker_imports()
    monkeypatch.setattr(launch.local.subprocess, "run", lambda *a, **k: sp.CompletedProcess(a, 1, "", "no module"))
    with pytest.raises(UserError, match=r"^--jobs: worker processes started in .* would not run this code \(they "
                                        r"would not find the launch package\); install it with pip install -e "):
        check_worker_imports()
    monkeypatch.setattr(launch.local.subprocess, "run",
                        lambda *a, **k: sp.CompletedProcess(a, 0, "/elsewhere/launch/__init__.py", ""))
    with pytest.raises(UserError, match="they would import /elsewhere/launch"):
        check_worker_imports()
