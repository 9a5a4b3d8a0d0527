"""The shared loop: schedules, batching, determinism, divergence, and that it really learns."""
import json
import math

import pytest
import torch

from config import TrainConfig, from_dict
from train.engine import NonFiniteLoss, Precision, train_one_epoch
from train.loader import TensorLoader
from train.run import fit
from train.schedule import build_optimizer, build_scheduler, lr_factor, param_groups


def cfg_for(root, tmp_path, **train):
    return from_dict({
        "name": "t", "seed": 0,
        "model": {"name": "simple_cnn"},
        "data": {"name": "fashion_mnist", "root": str(root), "download": False, "cache": False},
        "train": {"epochs": 2, "batch_size": 32, "lr": 2.0e-3, "log_every": 2, **train},
        "output": {"dir": str(tmp_path / "runs")},
    })


def quiet(*args, **kwargs):
    pass


# ----------------------------------------------------------------------------- schedules


def curve(steps_per_epoch=10, **kw):
    cfg = TrainConfig(**kw)
    f = lr_factor(cfg, steps_per_epoch)
    return [f(s) for s in range(cfg.epochs * steps_per_epoch)]


def test_cosine_with_warmup():
    c = curve(epochs=10, schedule="cosine", warmup_epochs=2, lr=1.0, min_lr=0.1)
    assert c[0] == pytest.approx(1 / 20) and c[19] == pytest.approx(1.0)  # linear warmup over 20 steps
    assert all(a >= b for a, b in zip(c[19:], c[20:]))  # then monotone decay
    assert c[-1] == pytest.approx(0.1, abs=1e-3)  # to min_lr


def test_onecycle_shape():
    c = curve(epochs=10, schedule="onecycle", lr=1.0)
    peak = max(range(len(c)), key=c.__getitem__)
    assert peak == 30 and c[peak] == pytest.approx(1.0)  # 30% ramp by default
    assert c[0] == pytest.approx(1 / 25) and c[-1] < 1e-3


def test_multistep_and_constant():
    c = curve(epochs=6, schedule="multistep", milestones=[2, 4], gamma=0.1)
    assert c[19] == 1.0 and c[20] == pytest.approx(0.1) and c[40] == pytest.approx(0.01)
    assert set(curve(epochs=3, schedule="constant")) == {1.0}


def test_no_weight_decay_on_norms_and_biases():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    decay, no_decay = param_groups(model, 0.05)
    assert [p.ndim for p in decay["params"]] == [4] and no_decay["weight_decay"] == 0.0
    assert len(no_decay["params"]) == 3


# ----------------------------------------------------------------------------- loader


def test_loader_batches_and_shuffles():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 4, 4).contiguous()
    y = torch.arange(10)
    gen = torch.Generator()
    gen.manual_seed(0)
    loader = TensorLoader(x, y, batch_size=4, mean=(0.0,), std=(1 / 255,), image_size=4,
                          shuffle=True, drop_last=True, generator=gen)
    batches = list(loader)
    assert len(loader) == len(batches) == 2 and all(b[0].shape == (4, 1, 4, 4) for b in batches)
    seen = torch.cat([b[1] for b in batches])
    assert len(set(seen.tolist())) == 8
    # images and labels stay paired through the shuffle; normalisation with std 1/255 returns raw values
    for images, labels in batches:
        torch.testing.assert_close(images[:, 0, 0, 0], labels.float())
    eval_loader = TensorLoader(x, y, batch_size=4, mean=(0.0,), std=(1.0,), image_size=4)
    assert len(eval_loader) == 3 and torch.equal(torch.cat([b[1] for b in eval_loader]), y)


# ----------------------------------------------------------------------------- loop


def test_non_finite_loss_stops_the_epoch():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.fill_(float("nan"))
    x, y = torch.zeros(8, 1, 2, 2, dtype=torch.uint8), torch.zeros(8, dtype=torch.long)
    loader = TensorLoader(x, y, batch_size=2, mean=(0.0,), std=(1.0,), image_size=2)
    opt = build_optimizer(model, TrainConfig())
    sched = build_scheduler(opt, TrainConfig(epochs=1), len(loader))
    with pytest.raises(NonFiniteLoss, match="training loss became nan by step 2"):
        train_one_epoch(model, loader, opt, sched, torch.nn.CrossEntropyLoss(), device=torch.device("cpu"),
                        precision=Precision("cpu"), log_every=2)


def test_cuda_request_without_cuda(monkeypatch):
    from errors import UserError
    from train.run import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="train.device: 'cuda' requested but CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_precision_choice(monkeypatch):
    import train.engine

    cpu = torch.device("cpu")
    monkeypatch.setattr(train.engine, "cpu_has_native_bf16", lambda: False)  # an AVX2 CPU
    assert Precision.for_device(cpu, amp=True).dtype is None
    assert str(Precision.for_device(cpu, amp=True)) == "fp32"
    monkeypatch.setattr(train.engine, "cpu_has_native_bf16", lambda: True)  # AMX / AVX512-BF16
    assert str(Precision.for_device(cpu, amp=True)) == "bfloat16"
    assert not Precision.for_device(cpu, amp=True).needs_scaler
    assert Precision.for_device(cpu, amp=False).dtype is None


def test_fit_writes_everything_and_learns(fmnist_root, tmp_path):
    cfg = cfg_for(fmnist_root, tmp_path, epochs=4, batch_size=16, schedule="onecycle")
    cfg.data.augment = False  # a flip would move the class-coding square onto another class's place
    run_dir, results = fit(cfg, log=quiet, progress=False)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    keys = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "images_per_s"}
    assert all(keys <= set(r) for r in rows)
    # The fixture's classes are a bright square at a class-specific position: learnable, chance is 10%.
    assert rows[-1]["val_acc"] >= 80.0, rows
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["status"] == "completed" and saved["params"] == 431_594 - 2 * 16 * 9  # 1-channel first conv
    assert saved["best_val_acc"] == max(r["val_acc"] for r in rows)
    assert saved["final_val_acc"] == rows[-1]["val_acc"] and saved["mult_adds"] > 0
    for name in ("last.pt", "best.pt"):
        state = torch.load(run_dir / name, weights_only=True)
        assert isinstance(state, dict) and "head.fc.weight" in state
    assert (run_dir / "config.yaml").is_file() and "Total params" in (run_dir / "summary.txt").read_text()


def test_fixed_seed_repeats_exactly(fmnist_root, tmp_path):
    metrics = []
    for _ in range(2):
        run_dir, _ = fit(cfg_for(fmnist_root, tmp_path, epochs=1), log=quiet, progress=False)
        row = json.loads((run_dir / "metrics.jsonl").read_text())
        metrics.append((row["train_loss"], row["val_loss"], row["val_acc"]))
    assert metrics[0] == metrics[1]
    run_dir, _ = fit(from_dict({**cfg_for(fmnist_root, tmp_path).to_dict(), "seed": 1, "train": {
        **cfg_for(fmnist_root, tmp_path).to_dict()["train"], "epochs": 1}}), log=quiet, progress=False)
    other = json.loads((run_dir / "metrics.jsonl").read_text())
    assert other["train_loss"] != metrics[0][0]


def test_divergence_is_recorded(fmnist_root, tmp_path):
    with pytest.raises(NonFiniteLoss):
        fit(cfg_for(fmnist_root, tmp_path, lr=1.0e30, optimizer="sgd", schedule="constant", epochs=2),
            log=quiet, progress=False)
    (run_dir,) = (tmp_path / "runs").iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "diverged" and "epoch 1" in results["error"]


def test_grad_clip_and_label_smoothing_run(fmnist_root, tmp_path):
    _, results = fit(cfg_for(fmnist_root, tmp_path, epochs=1, grad_clip=1.0, label_smoothing=0.1,
                             optimizer="sgd", lr=0.05, warmup_epochs=0.5),
                     log=quiet, progress=False)
    assert math.isfinite(results["final_val_loss"])


def test_cuda_precision_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert Precision.for_device(torch.device("cuda"), amp=True).dtype == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    fp16 = Precision.for_device(torch.device("cuda"), amp=True)
    assert fp16.dtype == torch.float16 and fp16.needs_scaler
    assert Precision.for_device(torch.device("cuda"), amp=False).dtype is None


def test_scaled_and_clipped_step_runs_on_cpu():
    # The GradScaler + clipping branch (fp16 on CUDA) exercised with CPU autocast.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    x = torch.randint(0, 255, (8, 1, 2, 2), dtype=torch.uint8)
    y = torch.randint(0, 2, (8,))
    loader = TensorLoader(x, y, batch_size=4, mean=(0.5,), std=(0.5,), image_size=2)
    opt = build_optimizer(model, TrainConfig())
    sched = build_scheduler(opt, TrainConfig(epochs=1), len(loader))
    before = model[1].weight.detach().clone()
    stats = train_one_epoch(model, loader, opt, sched, torch.nn.CrossEntropyLoss(), device=torch.device("cpu"),
                            precision=Precision("cpu", torch.bfloat16), scaler=torch.amp.GradScaler("cpu"),
                            grad_clip=0.5)
    assert math.isfinite(stats["train_loss"]) and not torch.equal(before, model[1].weight)


@pytest.mark.parametrize("dataset, writer", [("cifar10", "write_cifar10"), ("imagenette", "write_imagenette")])
def test_fit_through_each_augmentation_path(tmp_path, dataset, writer):
    import fixtures

    getattr(fixtures, writer)(tmp_path / "data")
    cfg = from_dict({
        "model": {"name": "cnn_tr_small"},
        "data": {"name": dataset, "root": str(tmp_path / "data"), "download": False, "cache": False},
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 8},
        "output": {"dir": str(tmp_path / "runs"), "checkpoints": False},
    })
    run_dir, results = fit(cfg, log=quiet, progress=False)
    assert results["status"] == "completed" and math.isfinite(results["final_val_loss"])
    assert not (run_dir / "last.pt").exists()  # output.checkpoints: false


def test_fit_with_seed001_recipe_features(tmp_path):
    import fixtures

    fixtures.write_cifar100(tmp_path / "data")
    cfg = from_dict({
        "model": {"name": "vit", "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
        "data": {"name": "cifar100", "root": str(tmp_path / "data"), "download": False, "cache": False,
                 "auto_augment": "trivialaugment", "random_erasing": 0.25},
        "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 8, "mixup_alpha": 0.8, "cutmix_alpha": 1.0,
                  "label_smoothing": 0.1, "grad_clip": 1.0, "warmup_epochs": 1, "top5": True},
        "output": {"dir": str(tmp_path / "runs"), "checkpoints": False},
    })
    run_dir, results = fit(cfg, log=quiet, progress=False)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert results["status"] == "completed" and len(rows) == 2
    for row in rows:
        assert math.isfinite(row["train_loss"]) and row["val_acc"] <= row["val_top5"] <= 100
    assert results["final_val_top5"] == rows[-1]["val_top5"]


def test_top5_counts_a_label_among_the_five_largest_logits():
    from train.engine import evaluate

    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4], [0, 1, 2, 3, 4, 5], [5, 0, 0, 0, 0, 0]])
    labels = torch.tensor([4, 0, 0])  # 2nd: label 0 has the smallest logit; 3rd: top-1 right
    model = torch.nn.Linear(1, 6)
    with torch.no_grad():
        model.weight.zero_()
    loader = [(torch.zeros(3, 1), labels)]
    model.forward = lambda x: logits  # fixed logits through the real evaluate()
    out = evaluate(model, loader, torch.nn.CrossEntropyLoss(), device=torch.device("cpu"),
                   precision=Precision("cpu"), top5=True)
    assert out["val_acc"] == pytest.approx(100 / 3) and out["val_top5"] == pytest.approx(200 / 3)


@pytest.mark.parametrize("channels_last", [True, False, None])
def test_channels_last_setting_reaches_model_and_batches(fmnist_root, tmp_path, channels_last):
    from train.run import build_model, load_data, prepare

    cfg = cfg_for(fmnist_root, tmp_path, channels_last=channels_last)
    s = prepare(cfg, build_model(cfg), load_data(cfg), torch.device("cpu"))
    on = channels_last is not False  # null is the default: on
    fmt = torch.channels_last if on else torch.contiguous_format
    # A conv with several input channels and a spatial kernel: otherwise both layouts have the same strides.
    conv = [m for m in s.model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1
            and m.kernel_size[0] > 1][-1]
    assert conv.in_channels > 1 and s.channels_last == on
    assert conv.weight.is_contiguous(memory_format=fmt)
    assert not conv.weight.is_contiguous(memory_format=torch.contiguous_format if on else torch.channels_last)


class _Counting(torch.nn.Module):
    def __init__(self, sleep_s: float = 0.0):
        super().__init__()
        self.calls, self.sleep_s = 0, sleep_s

    def forward(self, x):
        import time

        self.calls += 1
        time.sleep(self.sleep_s)
        return x


def test_latency_warms_up_times_and_respects_its_budget():
    from data import get_spec
    from train.engine import latency_ms

    spec, cpu = get_spec("mnist"), torch.device("cpu")
    fast = _Counting()
    assert latency_ms(fast, spec, cpu, Precision.for_device(cpu, True), 4, max_repeats=10) >= 0
    assert fast.calls == 3 + 10 and not fast.training  # 3 warm-ups, then every repeat (far under budget)
    slow = _Counting(0.12)
    ms = latency_ms(slow, spec, cpu, Precision.for_device(cpu, True), 2, max_repeats=10, budget_s=0.2)
    assert slow.calls == 2 + 3  # warm-up cut after 0.24 s > budget, then the minimum of 3 timed passes
    assert ms == pytest.approx(120 / 2, rel=0.5)  # per image
