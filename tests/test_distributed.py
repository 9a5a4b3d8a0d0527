"""One run on several processes: real ``torchrun`` runs of main.py on the gloo backend (CPU), against one
process with the same global batch, stopped with real signals and resumed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fixtures import ROOT, TINY_VIT, call_main, numbers, read_metrics, run_dirs_at, tiny_raw, write_yaml
from core.errors import UserError
from data import TensorLoader
from train.distributed import Dist, from_env, launcher
from train.rundir import read_results


def torchrun(cfg_or_resume: list[str], nproc: int = 2) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # OMP_NUM_THREADS: conftest's
    env.pop("WORLD_SIZE", None)
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc_per_node={nproc}", "main.py", *cfg_or_resume],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    return proc.communicate(timeout=timeout)[0]


def only_run_dir(out: Path) -> Path:
    dirs = [p for p in out.iterdir()]
    assert len(dirs) == 1, dirs  # rank 1 made no directory of its own
    return dirs[0]


def worker_pid(agent: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker with RANK=rank (its children, told apart by their environment)."""
    for child in Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split():
        env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in env:
            return int(child)
    raise AssertionError(f"no worker with RANK={rank} under torchrun pid {agent.pid}")


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    from fixtures import write_mnist

    base = tmp_path_factory.mktemp("ddp")
    return write_mnist(base / "small", n_train=256, n_test=100), write_mnist(base / "long", n_train=1024, n_test=100)


@pytest.mark.system
def test_two_processes_equal_one_process_with_the_global_batch(roots, tmp_path, capsys):
    """2 processes x batch 16 against 1 x 32, augmentation off (it is drawn per process): the same global
    batches, so the same run up to float summation order. Tolerances: the losses are sums of 16 float32
    terms per process, then averaged (DDP) instead of one sum of 32; the differences (measured ~2e-7 in
    the loss, ~7e-6 in the weights after 16 AdamW steps) stay far below the 1e-5 / 1e-4 allowed here.
    fp32 whatever ``precision: auto`` picks: bf16 autocast rounds each sum to 8 bits of mantissa."""
    root = roots[0]
    two = tiny_raw(root, tmp_path / "two", batch_size=16, data={"augment": False}, precision="fp32")
    one = tiny_raw(root, tmp_path / "one", batch_size=32, data={"augment": False}, precision="fp32")
    proc = torchrun(["--cfg", str(write_yaml(tmp_path / "two.yaml", two))])
    out = finish(proc)
    assert proc.returncode == 0, out
    assert call_main(capsys, "--cfg", write_yaml(tmp_path / "one.yaml", one)).returncode == 0

    ddp, single = only_run_dir(tmp_path / "two"), only_run_dir(tmp_path / "one")
    results = read_results(ddp)
    assert results["status"] == "completed" and results["processes"] == 2 and results["global_batch"] == 32
    assert results["command"].startswith("torchrun --nproc_per_node=2 main.py --cfg")
    assert out.count("epoch 2/2") == 1, out  # rank 0 prints, rank 1 does not
    a, b = read_metrics(ddp), read_metrics(single)
    for x, y in zip(a, b, strict=True):
        assert x["train_images"] == y["train_images"] == 256  # 8 global batches of 32: the whole set
        assert x["val_images"] == y["val_images"] == 100  # both processes' parts of the validation split
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5)
        assert x["val_loss"] == pytest.approx(y["val_loss"], rel=1e-5)
        assert abs(x["val_acc"] - y["val_acc"]) <= 1.0 and abs(x["train_acc"] - y["train_acc"]) <= 100 / 256
        assert x["lr"] == y["lr"]
    wa, wb = (torch.load(d / "last.pt", weights_only=True)["model"] for d in (ddp, single))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4

    # A 2-process run resumes with 2 processes only: the global batch is part of the math.
    r = call_main(capsys, "--resume", ddp, "--set", "train.epochs=3")
    assert r.returncode == 2 and "trained on 2 process(es)" in r.stderr and "torchrun --nproc_per_node=2" in r.stderr
    assert r.stderr.count("\n") == 1


@pytest.mark.system
def test_two_processes_accumulating_equal_one_process_with_the_global_batch(roots, tmp_path, capsys):
    """2 processes x 2 accumulated x batch 8 against 1 x 32 (augmentation off, fp32): DDP all-reduces on the
    group's last micro-batch only (``no_sync`` before), and the step is the global batch's, as above."""
    root = roots[0]
    two = tiny_raw(root, tmp_path / "two", batch_size=8, accumulate_steps=2, data={"augment": False},
                   precision="fp32")
    one = tiny_raw(root, tmp_path / "one", batch_size=32, data={"augment": False}, precision="fp32")
    proc = torchrun(["--cfg", str(write_yaml(tmp_path / "two.yaml", two))])
    out = finish(proc)
    assert proc.returncode == 0, out
    assert "global batch 32 (8 x 2 accumulated x 2 processes)" in out
    assert call_main(capsys, "--cfg", write_yaml(tmp_path / "one.yaml", one)).returncode == 0
    ddp, single = only_run_dir(tmp_path / "two"), only_run_dir(tmp_path / "one")
    assert read_results(ddp)["global_batch"] == 32
    for x, y in zip(read_metrics(ddp), read_metrics(single), strict=True):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5) and x["lr"] == y["lr"]
    wa, wb = (torch.load(d / "last.pt", weights_only=True)["model"] for d in (ddp, single))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4


@pytest.mark.system
def test_the_weight_ema_of_two_processes_is_the_one_of_one_process(roots, tmp_path, capsys):
    """train.ema_decay under DDP: the EMA of the unwrapped module, updated after every step in every process,
    ends like one process's with the global batch (the tolerances of the test above)."""
    root = roots[0]
    common = dict(data={"augment": False}, precision="fp32", ema_decay=0.8)
    two = tiny_raw(root, tmp_path / "two", batch_size=16, **common)
    one = tiny_raw(root, tmp_path / "one", batch_size=32, **common)
    out = finish(torchrun(["--cfg", str(write_yaml(tmp_path / "two.yaml", two))]))
    assert call_main(capsys, "--cfg", write_yaml(tmp_path / "one.yaml", one)).returncode == 0
    ddp, single = only_run_dir(tmp_path / "two"), only_run_dir(tmp_path / "one")
    assert read_results(ddp)["status"] == "completed", out
    for x, y in zip(read_metrics(ddp), read_metrics(single), strict=True):
        assert x["val_loss_ema"] == pytest.approx(y["val_loss_ema"], rel=1e-5)
        assert abs(x["val_acc_ema"] - y["val_acc_ema"]) <= 1.0
    ea, eb = (torch.load(d / "last.pt", weights_only=True)["ema"] for d in (ddp, single))
    assert ea.keys() == eb.keys() and ea["n_averaged"].item() == eb["n_averaged"].item() == 16
    assert max((ea[k].float() - eb[k].float()).abs().max().item() for k in ea) < 1e-4
    assert (ddp / "best_ema.pt").is_file()


@pytest.mark.system
@pytest.mark.numeric
def test_sigterm_then_a_killed_rank_then_torchrun_resumes_exactly(roots, tmp_path):
    """Everything random on (augmentation, dropout, drop path, MixUp, random erasing). SIGTERM to torchrun
    (which passes it to its workers) mid-run: every process stops at the same step, rank 0 writes a
    resumable checkpoint with every rank's random state. The resume is then cut by SIGKILL to rank 1:
    rank 0 records ``failed`` in one line with a resume command. Resumed again, the run ends where the
    uninterrupted one does, bit for bit."""
    raw = tiny_raw(roots[1], tmp_path / "ref", model={**TINY_VIT, "dropout": 0.1, "drop_path": 0.1}, epochs=5,
                   batch_size=16, log_every=1, mixup_alpha=0.8, warmup_epochs=1,
                   data={"random_erasing": 0.25})
    ref = torchrun(["--cfg", str(write_yaml(tmp_path / "ref.yaml", raw))])
    # A checkpoint every 4 steps (output settings change no number) shows when epoch 2 is under way: the signal
    # then lands mid-epoch, not in an epoch's evaluation, however fast or loaded the machine.
    output = {"dir": str(tmp_path / "run"), "checkpoint_every_steps": 4}
    run = torchrun(["--cfg", str(write_yaml(tmp_path / "run.yaml", {**raw, "output": output}))])
    (run_dir,) = run_dirs_at(tmp_path / "run", run, 1)
    deadline = time.monotonic() + 120
    while not ((c := torch.load(run_dir / "last.pt", weights_only=True))["epoch"] >= 1 and c["step"] > 0):
        assert run.poll() is None and time.monotonic() < deadline, "no checkpoint inside epoch 2"
        time.sleep(0.02)
    run.send_signal(signal.SIGTERM)
    out = finish(run)
    resume = f"torchrun --nproc_per_node=2 main.py --resume {run_dir}"
    assert f"resume with: {resume}" in out, out
    results = read_results(run_dir)
    assert results["status"] == "interrupted" and "SIGTERM" in results["error"]
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2 and 0 < ckpt["step"] and ckpt["epoch"] <= 2
    assert not torch.equal(ckpt["ranks"][0]["loader"]["aug_generator"], ckpt["ranks"][1]["loader"]["aug_generator"])
    assert results["checkpoint"] == f"in epoch {ckpt['epoch'] + 1} at step {ckpt['step']}/32"
    out = finish(ref)
    assert ref.returncode == 0, out

    again = torchrun(["--resume", str(run_dir)])
    run_dirs_at(tmp_path / "run", again, ckpt["epoch"] + 1)
    os.kill(worker_pid(again, rank=1), signal.SIGKILL)
    out = finish(again)
    assert again.returncode != 0
    results = read_results(run_dir)
    assert results["status"] == "failed" and "lost contact with the other processes" in results["error"]
    assert "\n" not in results["error"] and len(results["error"]) < 300, results["error"]
    assert results["resume_command"] == resume

    last = torchrun(["--resume", str(run_dir)])
    out = finish(last)
    assert last.returncode == 0, out
    ref_dir = only_run_dir(tmp_path / "ref")
    assert numbers(read_metrics(run_dir)) == numbers(read_metrics(ref_dir))
    a, b = (torch.load(d / "last.pt", weights_only=True)["model"] for d in (run_dir, ref_dir))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [a["status"] for a in read_results(run_dir)["attempts"]] == ["interrupted", "failed", "completed"]


@pytest.mark.system
def test_a_problem_only_rank_0_meets_is_the_same_one_line_in_every_process(roots, tmp_path):
    raw = tiny_raw(roots[0], Path("/proc/no-such-dir"))  # rank 0 cannot create the run directory there
    proc = torchrun(["--cfg", str(write_yaml(tmp_path / "bad.yaml", raw))])
    out = finish(proc)
    assert proc.returncode != 0
    assert out.count("error: output.dir: cannot create /proc/no-such-dir") == 2, out  # rank 0 and rank 1
    assert "lost contact" not in out


def test_shards_of_one_epoch_are_the_global_batches_of_one_process():
    x = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8)
    y = torch.arange(40)
    common = dict(mean=(0.5,), std=(0.5,), shuffle=True, drop_last=True)

    def gen():
        return torch.Generator().manual_seed(7)

    single = list(TensorLoader(x, y, batch_size=8, generator=gen(), **common))
    shards = [list(TensorLoader(x, y, batch_size=4, generator=gen(), shard=(r, 2), aug_generator=gen(), **common))
              for r in range(2)]
    assert len(single) == len(shards[0]) == len(shards[1]) == 5
    for (xs, ys), (x0, y0), (x1, y1) in zip(single, *shards):
        assert torch.equal(ys, torch.cat([y0, y1])) and torch.equal(xs, torch.cat([x0, x1]))


def test_torchrun_environment_is_checked():
    assert from_env({}) == Dist() and not Dist().enabled
    assert from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == Dist(1, 2, 1)
    for env in ({"RANK": "x", "WORLD_SIZE": "2"}, {"RANK": "2", "WORLD_SIZE": "2"}):
        with pytest.raises(UserError, match="torchrun"):
            from_env(env)
    assert launcher(Dist()) == "python main.py"
    assert launcher(Dist(0, 4, 0), {"LOCAL_WORLD_SIZE": "2"}).startswith("torchrun --nproc_per_node=2 --nnodes=2")


@pytest.mark.parametrize("args, problem", [
    (["--eval", "runs/x"], "trains one run"),
    (["--cfg", "configs/sweeps/fmnist_sizes.yaml"], "--jobs N"),
])
def test_torchrun_trains_one_run_only(capsys, monkeypatch, args, problem):
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    r = call_main(capsys, *args)
    assert r.returncode == 2 and problem in r.stderr and r.stderr.count("\n") == 1


def test_sync_bn_on_the_cpu_is_a_clear_error(roots, tmp_path):
    from config import from_dict
    from data import get_spec, load_data
    from models import build_model
    from train.setup import prepare

    cfg = from_dict(tiny_raw(roots[0], tmp_path, model={"name": "simple_cnn"}, sync_bn=True))
    model = build_model(cfg, get_spec("fashion_mnist"))
    with pytest.raises(UserError, match="train.sync_bn: .*GPUs only"):
        prepare(cfg, model, load_data(cfg.data), torch.device("cpu"), Dist(0, 2, 0))
