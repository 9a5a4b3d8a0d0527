"""Early stopping on validation accuracy (status stopped_early) and the weight EMA (train.ema_decay)."""
from __future__ import annotations

import json

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import train.fit
from config import TrainConfig
from config.schema import setting_warnings
from config.sweep import Point
from core.errors import UserError
from data import get_spec, load_data
from evaluate.inference import evaluate_run
from fixtures import numbers, read_metrics, run_fit, tiny_config
from launch.plan import Manifest, plan, summary
from models import build_model
from plots.runs import Group, load_run
from train.engine import train_step
from train.fit import fit
from train.resume import open_for_resume
from train.rundir import read_results
from train.setup import prepare, seed_everything
from train.stopping import last_improvement, stop_reason

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- the rule


def rows(*accs):
    return [{"epoch": i, "val_acc": a} for i, a in enumerate(accs, 1)]


def test_an_improvement_must_beat_the_last_improving_epoch_by_more_than_min_delta():
    # 20.5 is within 1 of 20 and 20.9 within 1 of 20 too (not of 20.5): neither counts; 21.5 does.
    assert last_improvement(rows(10, 20, 20.5, 20.9), 1.0) == 2
    assert last_improvement(rows(10, 20, 20.5, 20.9, 21.5), 1.0) == 5
    assert last_improvement(rows(10, 20, 20.5), 0.0) == 3
    assert last_improvement(rows(10, 10), 0.0) == 1  # equal is no improvement
    assert last_improvement([], 0.0) == 0


def test_the_run_stops_after_patience_epochs_without_improvement_and_never_after_its_last():
    t = TrainConfig(epochs=10, early_stopping_patience=2, early_stopping_min_delta=1.0)
    assert stop_reason(rows(10, 20, 20.5), t) is None  # 1 epoch without
    assert "in the 2 epoch(s) after epoch 2" in stop_reason(rows(10, 20, 20.5, 19), t)
    assert stop_reason(rows(10, 20, 20.5, 19), t, counted_from=3) is None  # extended at epoch 3: counts anew
    assert stop_reason(rows(*[5] * 10), t) is None  # all epochs done: completed, not stopped early
    assert stop_reason(rows(10, 20, 20.5, 19), TrainConfig(epochs=10)) is None  # patience 0: off


def test_settings_that_cannot_take_effect_warn():
    warned = lambda **t: " ".join(setting_warnings(tiny_config("r", "o", **t)))  # noqa: E731
    assert "train.early_stopping_min_delta: ignored" in warned(early_stopping_min_delta=0.5)
    assert "never stops early" in warned(epochs=5, early_stopping_patience=4)
    assert warned(epochs=5, early_stopping_patience=3) == ""


# ----------------------------------------------------------------------------- early stopping in a run


def scripted(monkeypatch, accs):
    """Each epoch's val_acc is the next of ``accs`` (the model is evaluated as usual, then overruled)."""
    real, it = train.fit.evaluate, iter(accs)

    def evaluate(*args, **kwargs):
        return {**real(*args, **kwargs), "val_acc": next(it)}
    monkeypatch.setattr(train.fit, "evaluate", evaluate)


def test_a_run_stops_early_where_the_rule_says_and_records_it(fmnist_root, tmp_path, monkeypatch):
    scripted(monkeypatch, [10.0, 20.0, 20.5, 19.0, 40.0, 50.0])
    cfg = tiny_config(fmnist_root, tmp_path, epochs=6, early_stopping_patience=2, early_stopping_min_delta=1.0)
    run_dir, results = run_fit(cfg)
    assert results["status"] == "stopped_early"
    assert results["epochs_done"] == results["stopped_epoch"] == 4 and results["epochs"] == 6
    assert "after epoch 2" in results["stop_reason"]
    assert (results["best_val_acc"], results["best_epoch"], results["final_val_acc"]) == (20.5, 3, 19.0)
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2, 3, 4]
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 4
    assert [a["status"] for a in results["attempts"]] == ["stopped_early"]
    assert results["resume_command"] is None


@pytest.fixture
def stopped(fmnist_root, tmp_path):
    """A run that stops early after epoch 2 of 5: no epoch can beat another by more than 100 points."""
    cfg = tiny_config(fmnist_root, tmp_path / "runs", epochs=5, early_stopping_patience=1,
                      early_stopping_min_delta=100)
    run_dir, results = run_fit(cfg)
    assert results["status"] == "stopped_early" and results["stopped_epoch"] == 2
    return run_dir


def resume(run_dir, overrides=()):
    r = open_for_resume(run_dir, list(overrides))
    try:
        assert not r.done, r.done_note
        return fit(r.cfg, r.run_dir, resume=r.ckpt, progress=False)
    finally:
        r.run_dir.release()


def test_resuming_a_run_that_stopped_early_does_nothing_and_says_how_to_go_on(stopped):
    r = open_for_resume(stopped)
    r.run_dir.release()
    assert r.done and "stopped early after epoch 2" in r.done_note
    assert "train.early_stopping_patience=N" in r.done_note and "train.epochs=N" in r.done_note


@pytest.mark.numeric
def test_turning_patience_off_on_resume_ends_like_a_run_without_it(stopped, fmnist_root, tmp_path):
    results = resume(stopped, ["train.early_stopping_patience=0"])
    assert results["status"] == "completed" and results["epochs_done"] == 5
    assert "stopped_epoch" not in results and "stop_reason" not in results
    assert [a["status"] for a in results["attempts"]] == ["stopped_early", "completed"]
    plain, _ = run_fit(tiny_config(fmnist_root, tmp_path / "plain", epochs=5))
    assert numbers(read_metrics(stopped)) == numbers(read_metrics(plain))


def test_a_longer_run_gets_its_patience_again_from_where_it_stopped(stopped):
    results = resume(stopped, ["train.epochs=8"])
    # Counting from epoch 2: epoch 3 cannot improve by 100 points either, patience 1 is spent again.
    assert results["status"] == "stopped_early" and results["stopped_epoch"] == 3
    assert torch.load(stopped / "last.pt", weights_only=True)["patience_from"] == 2


def test_a_stop_decided_but_not_recorded_is_recorded_on_resume_without_training(stopped):
    """Killed between last.pt and results.json: the history in last.pt alone decides the stop."""
    results = read_results(stopped)
    (stopped / "results.json").write_text(json.dumps({**results, "status": "interrupted"}))
    before = (stopped / "metrics.jsonl").read_text()
    again = resume(stopped)
    assert again["status"] == "stopped_early" and again["stopped_epoch"] == 2
    assert (stopped / "metrics.jsonl").read_text() == before


def test_a_multi_run_resume_keeps_a_stopped_early_point_and_a_comparison_counts_it(stopped, tmp_path):
    cfg = open_for_resume(stopped, claim=False).cfg
    point = Point("p", {}, cfg, "p.yaml", "p")
    (tmp_path / "cmp").mkdir()
    manifest = Manifest(tmp_path / "cmp", "python main.py --cfg p.yaml", [point], [str(stopped)])
    done, jobs = plan(manifest)
    assert jobs == [] and [(o.status, o.skipped) for o in done] == [("stopped_early", True)]
    assert "1 of 1 runs completed" in summary(done)

    run = load_run(stopped)
    group = Group("p", [run])
    assert run.finished and group.completed and group.counted == [run]
    assert run.reason.startswith("stopped early after epoch 2 of 5")
    assert group.values("final_val_acc") == [read_metrics(stopped)[-1]["val_acc"]]


# ----------------------------------------------------------------------------- weight EMA


def test_the_ema_follows_every_optimizer_step_with_torchs_formula(fmnist_root, tmp_path):
    cfg = tiny_config(fmnist_root, tmp_path, ema_decay=0.5, precision="fp32")
    seed_everything(cfg.seed)
    spec = get_spec(cfg.data.name)
    s = prepare(cfg, build_model(cfg, spec), load_data(cfg.data), CPU)
    expected = None
    for images, labels in list(s.train_loader)[:3]:
        train_step(s, images, labels)
        now = {k: v.detach().clone() for k, v in s.module.state_dict().items()}
        expected = now if expected is None else {
            k: 0.5 * expected[k] + 0.5 * now[k] if now[k].is_floating_point() else now[k] for k in now}
    assert s.ema.n_averaged.item() == 3 and s.ema.n_averaged.device == CPU  # no device sync to read it
    got = s.ema.module.state_dict()
    for k, v in expected.items():
        if v.is_floating_point():
            assert torch.allclose(got[k], v, atol=1e-6), k
    assert not all(torch.equal(got[k], v) for k, v in s.module.state_dict().items())


@pytest.mark.numeric
def test_the_ema_only_watches_the_run_and_is_recorded(fmnist_root, tmp_path):
    ema_dir, results = run_fit(tiny_config(fmnist_root, tmp_path / "ema", ema_decay=0.9))
    plain_dir, _ = run_fit(tiny_config(fmnist_root, tmp_path / "plain"))
    with_ema, without = read_metrics(ema_dir), read_metrics(plain_dir)
    ema_keys = ("val_loss_ema", "val_acc_ema")
    # The model trains exactly as without an EMA (no random draw, no change to the step).
    assert [{k: v for k, v in r.items() if k not in ema_keys} for r in numbers(with_ema)] == numbers(without)
    assert all(0 <= r["val_acc_ema"] <= 100 for r in with_ema)
    best = max(with_ema, key=lambda r: r["val_acc_ema"])
    assert (results["best_val_acc_ema"], results["best_epoch_ema"]) == (best["val_acc_ema"], best["epoch"])
    assert results["final_val_acc_ema"] == with_ema[-1]["val_acc_ema"]
    ckpt = torch.load(ema_dir / "last.pt", weights_only=True)
    assert ckpt["ema"]["n_averaged"].item() == ckpt["global_step"]
    # best_ema.pt is a plain state dict of the model's keys; best.pt stays the model's own weights.
    best_ema = torch.load(ema_dir / "best_ema.pt", weights_only=True)
    assert best_ema.keys() == ckpt["model"].keys()
    if best["epoch"] == 2:
        assert all(torch.equal(best_ema[k], ckpt["ema"]["module." + k]) for k in best_ema)
    assert not (plain_dir / "best_ema.pt").exists()
    assert torch.load(plain_dir / "last.pt", weights_only=True)["ema"] is None
    # --eval --ckpt best_ema measures what the run recorded for its EMA; --eval (best.pt) the model's own best.
    for which, key in (("best_ema", "best_val_acc_ema"), ("best", "best_val_acc")):
        r = evaluate_run(ema_dir, which)
        assert r.matches_record and r.top1 == results[key] and r.checkpoint == ema_dir / f"{which}.pt"
    with pytest.raises(UserError, match="best_ema.pt: not found .train.ema_decay was 0"):
        evaluate_run(plain_dir, "best_ema")


def test_ema_is_torchs_averaged_model_of_the_plain_module(fmnist_root, tmp_path):
    cfg = tiny_config(fmnist_root, tmp_path, ema_decay=0.99)
    s = prepare(cfg, build_model(cfg, get_spec(cfg.data.name)), load_data(cfg.data), CPU)
    assert isinstance(s.ema, AveragedModel) and s.ema.use_buffers
    assert type(s.ema.module) is type(s.module) and s.ema.module is not s.module
    reference = get_ema_multi_avg_fn(0.99)
    assert s.ema.multi_avg_fn.__qualname__ == reference.__qualname__
