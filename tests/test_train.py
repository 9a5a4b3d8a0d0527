"""The shared loop: torch schedules, batching, precision, determinism, the run directory's statuses, learning."""
import json
import math

import pytest
import torch
from torch.optim import lr_scheduler

from config import TrainConfig
from core.errors import RunFailed, UserError
from core.files import TEMP_PREFIX
from data import TensorLoader, get_spec, load_data
from fixtures import TINY_CONVMIXER, read_metrics, run_fit, tiny_config
from models import build_model
from train.engine import NonFiniteLoss, evaluate, train_one_epoch, train_step
from train.fit import fit
from train.rundir import RunDir
from train.setup import (Precision, build_scheduler, param_groups, prepare, resolve_device,
                         seed_everything)

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- schedules


def lrs(scheduler, optimizer, steps):
    """The lr of each of ``steps`` optimizer steps, stepping the scheduler after each, as the loop does."""
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def ours(steps_per_epoch=10, **kw):
    cfg = TrainConfig(**kw)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    return lrs(build_scheduler(opt, cfg, steps_per_epoch), opt, cfg.epochs * steps_per_epoch)


def torch_epochwise(make, epochs, steps_per_epoch=10, lr=1.0):
    """A torch scheduler stepped once per epoch (as the seeds' scripts do), expanded to every step."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make(opt)
    return [lr for lr in lrs(sched, opt, epochs) for _ in range(steps_per_epoch)]


def test_onecycle_is_torchs_onecycle_to_the_last_step():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    theirs = lrs(lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=100, cycle_momentum=False), opt, 100)
    mine = ours(epochs=10, schedule="onecycle", lr=1.0)
    assert mine == theirs
    assert mine[0] == pytest.approx(1 / 25) and max(mine) == pytest.approx(1.0)
    assert mine[-1] < 1e-4  # anneals to lr / 25 / 1e4, not the old hand-written curve's 5e-4 * lr


def test_step_schedule_is_seed_style_steplr_per_epoch():
    mine = ours(epochs=5, schedule="step", step_size=1, gamma=0.7, lr=1.0)
    theirs = torch_epochwise(lambda o: lr_scheduler.StepLR(o, step_size=1, gamma=0.7), 5)
    assert mine == pytest.approx(theirs)
    assert mine[-1] == pytest.approx(0.7 ** 4)


def test_multistep_matches_epochwise_multisteplr():
    mine = ours(epochs=6, schedule="multistep", milestones=[2, 4], gamma=0.1, lr=1.0)
    theirs = torch_epochwise(lambda o: lr_scheduler.MultiStepLR(o, [2, 4], gamma=0.1), 6)
    assert mine == pytest.approx(theirs)


def test_cosine_is_cosineannealing_over_steps_and_reaches_min_lr():
    mine = ours(epochs=4, schedule="cosine", lr=1.0, min_lr=0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert mine == pytest.approx(lrs(lr_scheduler.CosineAnnealingLR(opt, T_max=40, eta_min=0.1), opt, 40))
    assert mine[0] == 1.0 and mine[-1] == pytest.approx(0.1, abs=2e-3)


def test_warmup_ramps_linearly_then_hands_over():
    mine = ours(epochs=10, schedule="cosine", warmup_epochs=2, lr=1.0, min_lr=0.0)
    ramp = mine[:20]
    assert ramp == pytest.approx([(k + 1) / 20 for k in range(20)])  # linear, full lr at the warmup's last step
    assert mine[20] == pytest.approx(1.0) and all(a >= b for a, b in zip(mine[20:], mine[21:]))
    assert ours(epochs=3, schedule="constant") == [1.0e-3] * 30


@pytest.mark.parametrize("warmup_epochs, steps_per_epoch, epochs", [(0.002, 468, 1), (0.5, 2, 2), (1, 1, 2),
                                                                    (0, 1, 1), (0, 1, 3), (0.1, 10, 1)])
def test_onecycle_survives_tiny_warmups_and_runs(warmup_epochs, steps_per_epoch, epochs):
    mine = ours(steps_per_epoch, epochs=epochs, schedule="onecycle", warmup_epochs=warmup_epochs, lr=1.0)
    assert len(mine) == epochs * steps_per_epoch and max(mine) == pytest.approx(1.0)


def test_onecycle_peaks_where_the_warmup_ends():
    mine = ours(epochs=10, schedule="onecycle", warmup_epochs=2, lr=1.0)
    assert max(range(100), key=mine.__getitem__) == 19


def test_step_and_multistep_count_epochs_from_the_start_with_a_warmup():
    step = ours(epochs=4, schedule="step", warmup_epochs=0.5, step_size=1, gamma=0.5, lr=1.0)
    multi = ours(epochs=4, schedule="multistep", warmup_epochs=0.5, milestones=[1, 2, 3], gamma=0.5, lr=1.0)
    assert step == pytest.approx(multi)
    assert [step[e * 10 + 5] for e in range(4)] == pytest.approx([1.0, 0.5, 0.25, 0.125])


def test_no_weight_decay_on_norms_and_biases():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    decay, no_decay = param_groups(model, 0.05)
    assert [p.ndim for p in decay["params"]] == [4] and no_decay["weight_decay"] == 0.0
    assert len(no_decay["params"]) == 3


# ----------------------------------------------------------------------------- loader


def test_loader_batches_and_shuffles():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 4, 4).contiguous()
    y = torch.arange(10)
    loader = TensorLoader(x, y, batch_size=4, mean=(0.0,), std=(1 / 255,), shuffle=True, drop_last=True,
                          generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    assert len(loader) == len(batches) == 2 and all(b[0].shape == (4, 1, 4, 4) for b in batches)
    seen = torch.cat([b[1] for b in batches])
    assert len(set(seen.tolist())) == 8 and seen.tolist() != list(range(8))
    # images and labels stay paired through the shuffle; normalisation with std 1/255 returns raw values
    for images, labels in batches:
        torch.testing.assert_close(images[:, 0, 0, 0], labels.float())
    eval_loader = TensorLoader(x, y, batch_size=4, mean=(0.0,), std=(1.0,))
    assert len(eval_loader) == 3 and torch.equal(torch.cat([b[1] for b in eval_loader]), y)


# ----------------------------------------------------------------------------- device and precision


def test_cuda_request_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="train.device: 'cuda' requested but CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_precision_choice(monkeypatch):
    import train.setup

    monkeypatch.setattr(train.setup, "cpu_has_native_bf16", lambda: False)  # an AVX2 CPU
    assert Precision.for_device(CPU, "auto").dtype is None and str(Precision.for_device(CPU, "auto")) == "fp32"
    assert str(Precision.for_device(CPU, "bf16")) == "bfloat16"  # asked for: taken even without bf16 units
    monkeypatch.setattr(train.setup, "cpu_has_native_bf16", lambda: True)  # AMX / AVX512-BF16
    assert str(Precision.for_device(CPU, "auto")) == "bfloat16"
    assert not Precision.for_device(CPU, "auto").needs_scaler
    assert Precision.for_device(CPU, "fp32").dtype is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert Precision.for_device(torch.device("cuda"), "auto").dtype == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    fp16 = Precision.for_device(torch.device("cuda"), "auto")
    assert fp16.dtype == torch.float16 and fp16.needs_scaler
    assert Precision.for_device(torch.device("cuda"), "fp32").dtype is None
    assert Precision.for_device(CPU, "fp16").needs_scaler


def test_the_cpu_bf16_override_picks_either_branch_of_auto(monkeypatch):
    """VITLAB_CPU_BF16 (what .ci/run flips to run the numeric tests down both branches on one machine)."""
    from train.setup import cpu_has_native_bf16

    for value, has in (("1", True), ("on", True), ("0", False), ("False", False)):
        monkeypatch.setenv("VITLAB_CPU_BF16", value)
        assert cpu_has_native_bf16() is has
        assert str(Precision.for_device(CPU, "auto")) == ("bfloat16" if has else "fp32")
        assert str(Precision.for_device(CPU, "fp32")) == "fp32"  # an explicit setting wins over the override
    flags = {w for line in open("/proc/cpuinfo") if line.startswith("flags") for w in line.split(":")[1].split()}
    for detect in ("auto", ""):  # what the kernel says the CPU has (lscpu's flags)
        monkeypatch.setenv("VITLAB_CPU_BF16", detect)
        assert cpu_has_native_bf16() is bool({"amx_tile", "avx512_bf16"} & flags), sorted(flags)
    monkeypatch.setenv("VITLAB_CPU_BF16", "maybe")
    with pytest.raises(UserError, match=r"^VITLAB_CPU_BF16='maybe' is not a setting; valid: 1 .*, 0 .*, auto or unset"):
        Precision.for_device(CPU, "auto")


# ----------------------------------------------------------------------------- steps


def _setup(fmnist_root, tmp_path, **train):
    cfg = tiny_config(fmnist_root, tmp_path / "runs", **train)
    seed_everything(cfg.seed)
    return prepare(cfg, build_model(cfg, get_spec(cfg.data.name)), load_data(cfg.data), CPU)


def test_non_finite_loss_stops_the_epoch(fmnist_root, tmp_path):
    s = _setup(fmnist_root, tmp_path, log_every=2)
    with torch.no_grad():
        s.module.head.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLoss, match="training loss became nan by step 2"):
        train_one_epoch(s, log_every=2)


def test_grad_clip_bounds_the_update(fmnist_root, tmp_path):
    """With plain SGD, lr 1 and no momentum, the step is the clipped gradient: its norm is the clip."""
    s = _setup(fmnist_root, tmp_path, optimizer="sgd", momentum=0.0, lr=1.0, weight_decay=0.0,
               schedule="constant", grad_clip=0.01, precision="fp32")
    images, labels = next(iter(s.train_loader))
    before = [p.detach().clone() for p in s.module.parameters()]
    train_step(s, images, labels)
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(s.module.parameters(), before)])
    assert moved.norm().item() == pytest.approx(0.01, rel=1e-3)


def test_label_smoothing_reaches_the_training_loss(fmnist_root, tmp_path):
    s = _setup(fmnist_root, tmp_path, label_smoothing=0.2)
    assert s.criterion.label_smoothing == 0.2
    logits = torch.tensor([[4.0, 0.0, 0.0]])
    expected = 0.8 * torch.nn.functional.cross_entropy(logits, torch.tensor([0])) + 0.2 * (
        -torch.log_softmax(logits, 1).mean())
    torch.testing.assert_close(s.criterion(logits, torch.tensor([0])), expected)


def test_scaled_and_clipped_step_runs_on_cpu(fmnist_root, tmp_path):
    # The GradScaler + clipping branch (fp16 on CUDA) exercised with CPU autocast.
    s = _setup(fmnist_root, tmp_path, grad_clip=0.5)
    s.precision, s.scaler = Precision("cpu", torch.bfloat16), torch.amp.GradScaler("cpu")
    before = s.module.head.weight.detach().clone()
    stats = train_one_epoch(s)
    assert math.isfinite(stats["train_loss"]) and not torch.equal(before, s.module.head.weight)


def test_top5_counts_a_label_among_the_five_largest_logits(fmnist_root, tmp_path):
    s = _setup(fmnist_root, tmp_path)
    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4], [0, 1, 2, 3, 4, 5], [5, 0, 0, 0, 0, 0]])
    labels = torch.tensor([4, 0, 0])  # 2nd: label 0 has the smallest logit; 3rd: top-1 right
    s.eval_model = lambda x: logits  # fixed logits through the real evaluate()
    s.eval_model.eval = lambda: None
    out = evaluate(s, [(torch.zeros(3, 1), labels)], top5=True)
    assert out["val_acc"] == pytest.approx(100 / 3) and out["val_top5"] == pytest.approx(200 / 3)


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_setting_reaches_model_and_batches(fmnist_root, tmp_path, channels_last):
    s = _setup(fmnist_root, tmp_path, channels_last=channels_last, model={"name": "simple_cnn"})
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    other = torch.contiguous_format if channels_last else torch.channels_last
    # A conv with several input channels and a spatial kernel: otherwise both layouts have the same strides.
    conv = [m for m in s.model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1
            and m.kernel_size[0] > 1][-1]
    assert conv.weight.is_contiguous(memory_format=fmt) and not conv.weight.is_contiguous(memory_format=other)
    assert s.train_loader.channels_last is channels_last and s.val_loader.channels_last is channels_last
    rgb = TensorLoader(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), batch_size=2,
                       mean=(0.5,) * 3, std=(0.5,) * 3, channels_last=channels_last)
    images, _ = next(iter(rgb))
    assert images.is_contiguous(memory_format=fmt) and not images.is_contiguous(memory_format=other)


# ----------------------------------------------------------------------------- fit and the run directory


def test_fit_writes_everything_and_learns(fmnist_root, tmp_path):
    # No flip: it would move the class-coding square onto another class's place. A ConvMixer of 970 parameters
    # learns the fixture in 3 epochs at this rate, ten times sooner than simple_cnn.
    cfg = tiny_config(fmnist_root, tmp_path / "runs", epochs=3, batch_size=16, schedule="onecycle", lr=0.03,
                      model=TINY_CONVMIXER, data={"augment": False})
    run_dir, results = run_fit(cfg)
    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    keys = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "images_per_s"}
    assert all(keys <= set(r) for r in rows)
    # The fixture's classes are a bright square at a class-specific position: learnable, chance is 10%.
    assert rows[-1]["val_acc"] >= 80.0, rows
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    # Patch embedding 1*16*4*4 + 16, depthwise 16*3*3 + 16, pointwise 16*16 + 16, three BatchNorms 3*2*16, head
    # 16*10 + 10: 970. Mult-adds on 7x7 patches: the convolutions (256 + 144 + 256)*49 and the head 160 make 32,304;
    # torchinfo adds the BatchNorms.
    assert saved["status"] == "completed" and saved["params"] == 272 + 160 + 272 + 96 + 170 == 970
    best = max(rows, key=lambda r: r["val_acc"])
    assert saved["best_val_acc"] == best["val_acc"] and saved["best_epoch"] == best["epoch"]
    assert saved["final_val_acc"] == rows[-1]["val_acc"] and 32_304 < saved["mult_adds"] < 2 * 32_304
    import importlib.metadata  # the versions the run used, for every package that shapes its numbers
    assert saved["versions"]["torch"] == torch.__version__
    assert saved["versions"]["timm"] == importlib.metadata.version("timm") and "tensorboard" in saved["versions"]
    best_state = torch.load(run_dir / "best.pt", weights_only=True)
    last = torch.load(run_dir / "last.pt", weights_only=True)  # the training state, for --resume
    model = build_model(cfg, get_spec("fashion_mnist"))
    model.load_state_dict(best_state)  # a plain state dict for the registered model
    assert set(best_state) == set(last["model"]) and last["epoch"] == len(rows) and last["history"] == rows
    assert (run_dir / "config.yaml").is_file() and "Total params" in (run_dir / "summary.txt").read_text()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(TEMP_PREFIX)]  # no temporary files left


@pytest.mark.numeric
def test_fixed_seed_repeats_exactly_and_another_seed_differs(fmnist_root, tmp_path):
    def first_epoch(seed):
        run_dir, _ = run_fit(tiny_config(fmnist_root, tmp_path / "runs", epochs=1, seed=seed))
        (row,) = read_metrics(run_dir)
        return row["train_loss"], row["val_loss"], row["val_acc"]

    a = first_epoch(0)
    assert first_epoch(0) == a
    assert first_epoch(1)[0] != a[0]


def test_bad_input_leaves_no_run_directory(tmp_path):
    cfg = tiny_config(tmp_path / "nowhere", tmp_path / "runs")
    run_dir = RunDir(cfg.output.dir, cfg.run_name)
    with pytest.raises(UserError, match="fashion_mnist not found"):
        fit(cfg, run_dir, progress=False)
    assert run_dir.path is None and not (tmp_path / "runs").exists()


def test_divergence_is_recorded(fmnist_root, tmp_path):
    with pytest.raises(NonFiniteLoss):
        run_fit(tiny_config(fmnist_root, tmp_path / "runs", lr=99.0, optimizer="sgd", schedule="constant",
                            precision="fp32"))
    (run_dir,) = (tmp_path / "runs").iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "diverged" and "epoch 1" in results["error"]


@pytest.mark.parametrize("raised, status", [(KeyboardInterrupt, "interrupted"), (MemoryError, "failed")])
def test_an_interrupted_or_crashed_run_says_so(fmnist_root, tmp_path, monkeypatch, raised, status):
    import train.fit

    calls = []

    def evaluate_then_stop(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise raised()
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(train.fit, "evaluate", evaluate_then_stop)
    with pytest.raises(raised if status == "interrupted" else RunFailed, match=None if status == "interrupted"
                       else "run failed: MemoryError .*lower train.batch_size"):
        run_fit(tiny_config(fmnist_root, tmp_path / "runs", epochs=3))
    (run_dir,) = (tmp_path / "runs").iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == status and "error" in results
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1]  # what finished is kept
    if status == "failed":
        assert results["error"].startswith("MemoryError") and "Traceback" in results["traceback"]


@pytest.mark.parametrize("dataset, writer", [("cifar10", "write_cifar10"), ("imagenette", "write_imagenette")])
def test_fit_through_each_augmentation_path(tmp_path, dataset, writer):
    import fixtures

    getattr(fixtures, writer)(tmp_path / "data")
    model = {**fixtures.TINY_VIT, "patch_size": 8 if dataset == "cifar10" else 40}
    cfg = tiny_config(tmp_path / "data", tmp_path / "runs", dataset=dataset, model=model, epochs=1, batch_size=8,
                      eval_batch_size=8)
    cfg.output.checkpoints = False
    run_dir, results = run_fit(cfg)
    assert results["status"] == "completed" and math.isfinite(results["final_val_loss"])
    assert not (run_dir / "last.pt").exists()  # output.checkpoints: false


def test_fit_with_the_long_vit_recipe(tmp_path):
    """TrivialAugment, random erasing, MixUp/CutMix, label smoothing, clipping, warmup and top-5 together."""
    import fixtures

    fixtures.write_cifar100(tmp_path / "data")
    cfg = tiny_config(tmp_path / "data", tmp_path / "runs", dataset="cifar100",
                      model={"name": "vit", "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
                      data={"auto_augment": "trivialaugment", "random_erasing": 0.25},
                      epochs=2, batch_size=8, eval_batch_size=8, mixup_alpha=0.8, cutmix_alpha=1.0,
                      label_smoothing=0.1, grad_clip=1.0, warmup_epochs=1, top5=True)
    run_dir, results = run_fit(cfg)
    rows = read_metrics(run_dir)
    assert results["status"] == "completed" and len(rows) == 2
    for row in rows:
        assert math.isfinite(row["train_loss"]) and row["val_acc"] <= row["val_top5"] <= 100
    assert results["final_val_top5"] == rows[-1]["val_top5"]


# ----------------------------------------------------------------------------- measurements and the CPU dropout swap


class _Counting(torch.nn.Module):
    """A forward that lasts ``sleep_s`` on the fake clock (tests/fixtures.py FakeClock)."""

    def __init__(self, clock, sleep_s: float = 0.0):
        super().__init__()
        self.calls, self.sleep_s, self.clock = 0, sleep_s, clock

    def forward(self, x):
        self.calls += 1
        self.clock.sleep(self.sleep_s)
        return x


def test_latency_warms_up_times_and_respects_its_budget(monkeypatch):
    """``latency_ms``: ``measure_latency``'s median alone (tests/test_measure.py tests the rest)."""
    from fixtures import FakeClock
    from models.measure import MIN_SAMPLE_S, latency_ms

    clock = FakeClock(monkeypatch)
    spec = get_spec("mnist")
    slow = _Counting(clock, 0.12)
    ms = latency_ms(slow, spec, CPU, 2, max_repeats=10, budget_s=0.2)
    assert slow.calls == 1 + 3  # one warm-up (past a quarter of the budget), then the minimum of 3 samples
    assert ms == pytest.approx(120 / 2)  # per image
    fast = _Counting(clock, 0.0003)
    latency_ms(fast, spec, CPU, 4, max_repeats=10)
    # 3 warm-ups; a sample loops over calls to last MIN_SAMPLE_S (2 ms: 7 calls of 0.3 ms); equal samples settle
    # at the fewest repeats (7), before max_repeats. The model keeps its mode.
    assert MIN_SAMPLE_S == 0.002 and fast.calls == 3 + 7 * 7 and fast.training


def test_cpu_dropout_is_swapped_in_by_prepare_only_for_plain_dropout(fmnist_root, tmp_path):
    from train.cpu_dropout import CPUDropout

    model = {"name": "vit", "patch_size": 7, "embed_dim": 16, "depth": 2, "num_heads": 2, "dropout": 0.1,
             "attn_dropout": 0.1}
    s = _setup(fmnist_root, tmp_path, model=model)
    drops = [m for m in s.module.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(type(m) is CPUDropout for m in drops) and s.cpu_dropout == len(drops)
    plain = build_model(s_cfg := tiny_config(fmnist_root, tmp_path, model=model), get_spec(s_cfg.data.name))
    assert [m.p for m in plain.modules() if isinstance(m, torch.nn.Dropout)] == [m.p for m in drops]


def test_cpu_dropout_mask_rate_scale_and_eval():
    from train.cpu_dropout import CPUDropout

    drop = CPUDropout(0.1)
    torch.manual_seed(0)
    out = drop(torch.ones(200_000))
    kept = out != 0
    assert kept.float().mean().item() == pytest.approx(0.9, abs=0.003)
    torch.testing.assert_close(out[kept], torch.full((int(kept.sum()),), 1 / 0.9))
    torch.manual_seed(0)
    assert torch.equal(drop(torch.ones(200_000)), out)  # seeded by torch.manual_seed
    x = torch.randn(10)
    assert torch.equal(drop.eval()(x), x)


def test_cpu_dropout_mask_both_fields_of_a_draw_keep_at_the_rate_and_the_gradient_follows_it():
    from train.cpu_dropout import CPUDropout, keep_mask

    torch.manual_seed(0)
    mask = keep_mask(torch.Size([400_000]), 0.25)
    for half in (mask[:200_000], mask[200_000:]):  # every draw serves two elements: its low 16 bits, then 15 more
        assert half.float().mean().item() == pytest.approx(0.75, abs=0.005)
    assert keep_mask(torch.Size([7, 3]), 0.5).shape == (7, 3)  # an odd count
    x = torch.randn(1_000, requires_grad=True)
    out = CPUDropout(0.25)(x)
    out.sum().backward()
    torch.testing.assert_close(x.grad, (out != 0).float() / 0.75)


# ----------------------------------------------------------------------------- gradient accumulation, lr scaling


def _final_weights(run_dir):
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


@pytest.mark.numeric
def test_accumulating_two_batches_of_16_is_one_batch_of_32(fmnist_root, tmp_path):
    """No BatchNorm, no dropout, fp32: 2 x 16 accumulated takes the steps one batch of 32 takes, up to float
    summation order. SGD, whose step is proportional to the gradient (AdamW's is nearly scale-free), so a
    loss not divided by accumulate_steps would double every step and fail here."""
    common = dict(epochs=2, optimizer="sgd", lr=0.05, precision="fp32", model={"name": "vit", "patch_size": 7,
                  "embed_dim": 16, "depth": 1, "num_heads": 2})
    one, r1 = run_fit(tiny_config(fmnist_root, tmp_path / "one", batch_size=32, **common))
    acc, r2 = run_fit(tiny_config(fmnist_root, tmp_path / "acc", batch_size=16, accumulate_steps=2, **common))
    a, b = _final_weights(one), _final_weights(acc)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    small, _ = run_fit(tiny_config(fmnist_root, tmp_path / "small", batch_size=16, **common))
    c = _final_weights(small)  # the tolerance tells runs apart: batch 16 without accumulation is far off
    assert max((a[k] - c[k]).abs().max().item() for k in a) > 1e-3
    m1, m2 = read_metrics(one), read_metrics(acc)
    for x, y in zip(m1, m2, strict=True):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5) and x["lr"] == y["lr"]
        assert x["train_images"] == y["train_images"] == 256
    assert r1["global_batch"] == r2["global_batch"] == 32 and r2["accumulate_steps"] == 2


def test_the_schedule_counts_optimizer_steps_and_an_incomplete_group_is_dropped(fmnist_root, tmp_path):
    """256 images in groups of 3 x 16 = 48: 5 optimizer steps per epoch (the last 16 images, a third of a
    group, are dropped as a short batch is); the cosine reaches min_lr at the run's last optimizer step."""
    s = _setup(fmnist_root, tmp_path, batch_size=16, accumulate_steps=3, epochs=2, min_lr=1.0e-4)
    assert len(s.train_loader) == 5 and s.accumulate_steps == 3
    steps = []
    real = s.model.forward
    s.model.forward = lambda x: (steps.append(x.shape[0]), real(x))[1]
    stats = train_one_epoch(s)
    assert steps == [16] * 15 and stats["train_images"] == 240
    train_one_epoch(s)
    assert s.optimizer.param_groups[0]["lr"] == pytest.approx(1.0e-4)
    _, results = run_fit(tiny_config(fmnist_root, tmp_path / "r", batch_size=16, accumulate_steps=3))
    assert results["global_batch"] == 48


def test_accumulation_with_a_grad_scaler_and_clipping(fmnist_root, tmp_path):
    """The GradScaler path (fp16 on CUDA; bf16 autocast with a scaler here): every micro-batch's backward is
    scaled, the step unscales once, so the clipped update is the clip."""
    s = _setup(fmnist_root, tmp_path, batch_size=16, accumulate_steps=2, optimizer="sgd", momentum=0.0, lr=1.0,
               weight_decay=0.0, schedule="constant", grad_clip=0.01)
    s.precision, s.scaler = Precision("cpu", torch.bfloat16), torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    images, labels = next(iter(s.train_loader))
    before = [p.detach().clone() for p in s.module.parameters()]
    logits, loss = train_step(s, images, labels)
    assert logits.shape[0] == 32 and math.isfinite(loss.item())
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(s.module.parameters(), before)])
    assert moved.norm().item() == pytest.approx(0.01, rel=1e-2)
    assert s.scaler.get_scale() == 2.0 ** 10  # one update per optimizer step, no inf found


@pytest.mark.parametrize("scaling, factor", [("none", 1.0), ("linear", 2.0), ("sqrt", math.sqrt(2.0))])
def test_lr_scaling_uses_the_global_batch_and_is_recorded(fmnist_root, tmp_path, scaling, factor):
    """batch 16 x 2 accumulated = 32 against a reference of 16: twice the lr (linear), sqrt(2) x (sqrt)."""
    cfg = tiny_config(fmnist_root, tmp_path / "runs", epochs=1, batch_size=16, accumulate_steps=2, lr=1.0e-3,
                      schedule="constant", lr_scaling=scaling, lr_reference_batch=16)
    run_dir, results = run_fit(cfg)
    assert results["lr_used"] == pytest.approx(1.0e-3 * factor)
    assert read_metrics(run_dir)[0]["lr"] == pytest.approx(1.0e-3 * factor)


def test_lr_scaling_past_the_bounds_is_one_line(fmnist_root, tmp_path):
    with pytest.raises(UserError, match=r"train.lr_scaling: linear makes train.lr 0.001 into 0.0005 .*below "
                                        r"train.min_lr 0.0008"):
        _setup(fmnist_root, tmp_path, batch_size=16, lr=1.0e-3, min_lr=8.0e-4, lr_scaling="linear",
               lr_reference_batch=32)


def test_ddp_all_reduces_only_on_a_groups_last_micro_batch(fmnist_root, tmp_path):
    """DDP in a one-process gloo group: the first K-1 micro-batches run under no_sync, the last one syncs."""
    import torch.distributed as tdist

    s = _setup(fmnist_root, tmp_path, batch_size=8, accumulate_steps=3, precision="fp32")
    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(s.module)
        synced = []
        s.module.register_forward_pre_hook(lambda m, a: synced.append(ddp.require_backward_grad_sync))
        s.model = ddp
        images, labels = next(iter(s.train_loader))
        train_step(s, images, labels)
        assert synced == [False, False, True]
    finally:
        tdist.destroy_process_group()
