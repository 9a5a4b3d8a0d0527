"""Exact resume: a run stopped anywhere and resumed ends bit for bit like one that never stopped.

The configs use every source of randomness the runner has (shuffling, augmentation, random erasing,
dropout, stochastic depth, MixUp/CutMix), a warmup + cosine schedule, and a step count that does not
divide the log interval, so a state the checkpoint forgot would change the numbers.
"""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch

import train.engine
import train.fit
from core.errors import Interrupted, RunFailed, UserError
from fixtures import TINY_VIT, built_once, log_lines, numbers, read_metrics, run_fit, tiny_config
from train.fit import fit
from train.resume import open_for_resume
from train.rundir import RunDir

pytestmark = pytest.mark.numeric  # every resume here must end where the uninterrupted run ends


def config(root, out, precision="auto", **train):
    """Every source of randomness on; ``auto`` precision follows VITLAB_CPU_BF16 (both branches in .ci/run)."""
    model = {**TINY_VIT, "dropout": 0.1, "drop_path": 0.1}
    return tiny_config(root, out, model=model, epochs=3, precision=precision, mixup_alpha=0.8, cutmix_alpha=1.0,
                       warmup_epochs=1, log_every=3, data={"random_erasing": 0.25}, **train)


def weights(run_dir):
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def assert_like_reference(run_dir, ref):
    """The run ended bit for bit like the uninterrupted ``ref`` (its metrics, its final weights)."""
    assert numbers(read_metrics(run_dir)) == numbers(ref[0])
    assert same_weights(weights(run_dir), ref[1])


def resume(run_dir, overrides=()):
    r = open_for_resume(run_dir, list(overrides))
    return fit(r.cfg, r.run_dir, resume=r.ckpt, progress=False)


def stop_at_step(monkeypatch, step, action):
    """Do ``action()`` right after the ``step``-th optimizer step of the run."""
    real, calls = train.engine.train_step, [0]

    def counting(*args):
        out = real(*args)
        calls[0] += 1
        if calls[0] == step:
            action()
        return out

    monkeypatch.setattr(train.engine, "train_step", counting)


def stopped_run(cfg, on_line=None):
    run_dir = RunDir(cfg.output.dir, cfg.run_name)
    with pytest.raises(Interrupted) as e, log_lines(on_line):
        fit(cfg, run_dir, progress=False)
    return run_dir.path, e.value


def sigterm_after_epoch_1(line):
    if line.startswith("epoch 1/"):
        os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs, fp32 and bf16, to compare every resumed run with."""
    from fixtures import write_mnist

    from train.setup import cpu_has_native_bf16

    def build(base):
        root = write_mnist(base / "fmnist", n_train=256, n_test=128)
        out = {}
        for precision in ("fp32", "bf16"):
            run_dir, results = run_fit(config(root, base / "runs", precision))
            out[precision] = (read_metrics(run_dir), weights(run_dir), results)
        return root, out
    root, out = built_once(tmp_path_factory, "resume-reference", build)
    # What precision: auto is on this CPU, or as VITLAB_CPU_BF16 says (.ci/run runs this module both ways).
    return root, {**out, "auto": out["bf16" if cpu_has_native_bf16() else "fp32"]}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sigterm_after_epoch_1_then_resume_is_bitwise_identical(reference, tmp_path, monkeypatch, precision):
    root, ref = reference
    cfg = config(root, tmp_path, precision)
    run_dir, stop = stopped_run(cfg, sigterm_after_epoch_1)
    assert stop.signame == "SIGTERM" and stop.exit_code == 143
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "interrupted" and results["epochs_done"] == 1
    assert results["resume_command"] == f"python main.py --resume {run_dir}"
    assert len(read_metrics(run_dir)) == 1
    resumed = resume(run_dir)
    assert resumed["status"] == "completed"
    assert_like_reference(run_dir, ref[precision])
    assert resumed["best_val_acc"] == ref[precision][2]["best_val_acc"]
    assert [a["status"] for a in resumed["attempts"]] == ["interrupted", "completed"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_crash_mid_epoch_resumes_from_step_checkpoint_bitwise(reference, tmp_path, monkeypatch, precision):
    """A crash 2 steps after a step checkpoint (step 3 of epoch 2): resume redoes those 2 steps exactly."""
    root, ref = reference
    cfg = config(root, tmp_path, precision, )
    cfg.output.checkpoint_every_steps = 11  # global step 11 = step 3 of epoch 2

    def crash():
        raise RuntimeError("simulated crash")

    stop_at_step(monkeypatch, 13, crash)
    run_dir = RunDir(cfg.output.dir, cfg.run_name)
    with pytest.raises(RunFailed, match="simulated crash"):
        fit(cfg, run_dir, progress=False)
    results = json.loads((run_dir.path / "results.json").read_text())
    assert results["status"] == "failed" and "RuntimeError: simulated crash" in results["error"]
    ckpt = torch.load(run_dir.path / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"], ckpt["global_step"]) == (1, 3, 11)
    monkeypatch.undo()
    resume(run_dir.path)
    assert_like_reference(run_dir.path, ref[precision])


def test_a_sigterm_mid_epoch_with_accumulation_resumes_bitwise(reference, tmp_path, monkeypatch):
    """accumulate_steps 2 x batch 16: a step is a whole group (one loader batch split in two), so a stop after
    step 5 of epoch 2 checkpoints between groups and the resumed run ends as the uninterrupted one."""
    root, _ = reference
    ref_dir, _ = run_fit(config(root, tmp_path / "ref", "fp32", batch_size=16, accumulate_steps=2))
    cfg = config(root, tmp_path / "run", "fp32", batch_size=16, accumulate_steps=2)
    stop_at_step(monkeypatch, 13, lambda: os.kill(os.getpid(), signal.SIGTERM))  # step 5 of epoch 2
    run_dir, _ = stopped_run(cfg)
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"], ckpt["global_step"]) == (1, 5, 13)
    monkeypatch.undo()
    resume(run_dir)
    assert_like_reference(run_dir, (read_metrics(ref_dir), weights(ref_dir)))
    with pytest.raises(UserError, match="train.accumulate_steps is 4 but the run used 2"):
        open_for_resume(run_dir, ["train.accumulate_steps=4", "train.batch_size=8"])


def test_sigterm_on_an_epochs_last_step_checkpoints_before_its_eval(reference, tmp_path, monkeypatch):
    root, ref = reference
    cfg = config(root, tmp_path)
    stop_at_step(monkeypatch, 8, lambda: os.kill(os.getpid(), signal.SIGTERM))  # the last step of epoch 1
    run_dir, stop = stopped_run(cfg)
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (0, 8) and not (run_dir / "metrics.jsonl").read_text()
    monkeypatch.undo()
    resume(run_dir)
    assert_like_reference(run_dir, ref["auto"])


def test_sigint_during_eval_checkpoints_the_trained_epoch(reference, tmp_path, monkeypatch):
    """Ctrl-C during an epoch's evaluation checkpoints the trained epoch; the resume evaluates it."""
    root, ref = reference
    cfg = config(root, tmp_path)
    real_eval, calls = train.fit.evaluate, [0]

    def eval_with_ctrl_c(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(train.fit, "evaluate", eval_with_ctrl_c)
    run_dir, stop = stopped_run(cfg)
    assert stop.exit_code == 130 and not stop.immediate
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 8)
    monkeypatch.undo()
    resume(run_dir)
    assert_like_reference(run_dir, ref["auto"])


def test_sighup_is_a_graceful_stop_too(reference, tmp_path, monkeypatch):
    """A dropped ssh session: exit 129 with a checkpoint, like SIGTERM."""
    root, ref = reference
    stop_at_step(monkeypatch, 5, lambda: os.kill(os.getpid(), signal.SIGHUP))
    run_dir, stop = stopped_run(config(root, tmp_path))
    assert stop.exit_code == 129 and "SIGHUP" in json.loads((run_dir / "results.json").read_text())["error"]
    monkeypatch.undo()
    resume(run_dir)
    assert_like_reference(run_dir, ref["auto"])


def test_second_signal_stops_at_once_and_resumes_from_last_checkpoint(reference, tmp_path, monkeypatch):
    root, ref = reference
    cfg = config(root, tmp_path)

    def two_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)

    stop_at_step(monkeypatch, 12, two_signals)  # epoch 2, step 4: the last checkpoint is epoch 1's end
    run_dir, stop = stopped_run(cfg)
    assert stop.immediate
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "interrupted" and "after epoch 1" in results["error"]
    monkeypatch.undo()
    resume(run_dir)
    assert_like_reference(run_dir, ref["auto"])


def test_a_stop_before_the_first_step_of_a_resumed_run_keeps_its_place(reference, tmp_path, monkeypatch):
    """Preempted again while the resumed job is still loading data: the new last.pt must still point
    mid-epoch (not at the epoch's start), or the epoch would be trained twice."""
    root, ref = reference
    cfg = config(root, tmp_path)
    stop_at_step(monkeypatch, 11, lambda: os.kill(os.getpid(), signal.SIGTERM))  # epoch 2, step 3
    run_dir, _ = stopped_run(cfg)
    monkeypatch.undo()
    real_load = train.fit.load_data

    def load_then_sigterm(*args, **kwargs):
        data = real_load(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return data

    monkeypatch.setattr(train.fit, "load_data", load_then_sigterm)
    with pytest.raises(Interrupted):
        resume(run_dir)
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"], ckpt["loader"]["position"]) == (1, 3, 3)
    monkeypatch.undo()
    resume(run_dir)
    assert_like_reference(run_dir, ref["auto"])


def test_extend_a_finished_run(reference, tmp_path):
    root, _ = reference
    cfg = tiny_config(root, tmp_path, epochs=2, schedule="constant")
    run_dir, _ = run_fit(cfg)
    r = open_for_resume(run_dir, [])
    assert r.done
    results = resume(run_dir, ["train.epochs=3"])
    assert results["status"] == "completed" and results["epochs"] == 3
    assert [m["epoch"] for m in read_metrics(run_dir)] == [1, 2, 3]
    # With a constant schedule, extending equals training 3 epochs from the start.
    straight, _ = run_fit(tiny_config(root, tmp_path / "straight", epochs=3, schedule="constant"))
    assert numbers(read_metrics(run_dir)) == numbers(read_metrics(straight))
    assert same_weights(weights(run_dir), weights(straight))


@pytest.mark.parametrize("override, message", [
    ("train.lr=0.5", "train.lr is 0.5 but the run used 0.002"),
    ("train.epochs=1", "train.epochs 1 is shorter than the run's 2"),
    ("seed=3", "seed is 3 but the run used 0"),
    ("model.depth=2", "model.depth is 2 but the run used 1"),
    ("output.checkpoints=false", "output.checkpoints is False but the run used True"),
    ("train.ema_decay=0.5", "train.ema_decay is 0.5 but the run used 0.0"),
])
def test_resume_refuses_a_config_that_changes_the_math(reference, tmp_path, override, message):
    from core.errors import UserError

    root, _ = reference
    run_dir, _ = run_fit(tiny_config(root, tmp_path))
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        open_for_resume(run_dir, [override])
    open_for_resume(run_dir, ["train.log_every=7", f"data.root={root}"])  # these cannot change a number
    # Early stopping's keys only decide after which epoch the run ends (tests/test_tools.py).
    open_for_resume(run_dir, ["train.early_stopping_patience=3", "train.early_stopping_min_delta=0.5"])


def ema(run_dir):
    return torch.load(run_dir / "last.pt", weights_only=True)["ema"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_weight_ema_resumes_bitwise_mid_epoch_and_from_its_own_eval(reference, tmp_path, monkeypatch, precision):
    """train.ema_decay: a crash mid-epoch (after a step checkpoint), then Ctrl-C during epoch 1's EMA evaluation;
    each resume ends like the uninterrupted run, val_acc_ema and the EMA's weights and step count included."""
    root, _ = reference
    straight, _ = run_fit(config(root, tmp_path / "straight", precision, ema_decay=0.9))
    ref = (read_metrics(straight), weights(straight))
    assert all("val_acc_ema" in r for r in ref[0])

    cfg = config(root, tmp_path / "stopped", precision, ema_decay=0.9)
    cfg.output.checkpoint_every_steps = 11  # global step 11 = step 3 of epoch 2

    def crash():
        raise RuntimeError("simulated crash")

    stop_at_step(monkeypatch, 13, crash)
    run_dir = RunDir(cfg.output.dir, cfg.run_name)
    with pytest.raises(RunFailed, match="simulated crash"):
        fit(cfg, run_dir, progress=False)
    assert ema(run_dir.path)["n_averaged"].item() == 11
    monkeypatch.undo()
    resume(run_dir.path)
    assert_like_reference(run_dir.path, ref)
    assert same_weights(ema(run_dir.path), ema(straight))

    real_eval, calls = train.fit.evaluate, [0]

    def eval_with_ctrl_c(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:  # epoch 1: the model's evaluation, then the EMA's
            os.kill(os.getpid(), signal.SIGINT)
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(train.fit, "evaluate", eval_with_ctrl_c)
    again, _ = stopped_run(config(root, tmp_path / "again", precision, ema_decay=0.9))
    assert (torch.load(again / "last.pt", weights_only=True)["epoch"], read_metrics(again)) == (0, [])
    monkeypatch.undo()
    resume(again)
    assert_like_reference(again, ref)
    assert same_weights(ema(again), ema(straight))
