"""The measuring tools (bench/) run end to end on tiny fixtures, their numbers agree with each other, and the
conventional reference loop follows the dataset's augmentation and the config's recipe (no timings asserted)."""
import inspect
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torchvision import transforms as T

from bench import ab, reference, throughput, time_to_accuracy
from config import from_dict
from data import ImageData, get_spec, list_datasets
from data.augment import random_resized_crop
from fixtures import auto_cpu_precision, write_imagenette
from train.cpu_dropout import CPUDropout

ROOT = Path(__file__).resolve().parents[1]


def one_image_repeated(name: str, n: int = 8) -> ImageData:
    """``n`` copies of one random image: batches are comparable whatever order the loader shuffles them in."""
    spec = get_spec(name)
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (1, spec.in_chans, spec.image_size, spec.image_size), generator=g, dtype=torch.uint8)
    split = (img.repeat(n, 1, 1, 1), torch.zeros(n, dtype=torch.long))
    return ImageData(spec, split, split)


# ----------------------------------------------------------------------------- the reference loop


@pytest.mark.parametrize("dataset", list_datasets())  # every dataset's own augmentation, rrc_flip included
def test_reference_loader_follows_the_datasets_augmentation(dataset):
    torch.manual_seed(0)  # the PIL transforms draw from torch's global generator
    data = one_image_repeated(dataset)
    spec = data.spec
    cfg = from_dict({"model": {"name": "simple_cnn"}, "data": {"name": dataset},
                     "train": {"batch_size": 4, "eval_batch_size": 4}})
    train, val = reference.reference_loaders(cfg, data, workers=0)
    epochs = [next(iter(train)) for _ in range(2)]
    for images, labels in epochs + [next(iter(val))]:
        assert images.shape == (4, spec.in_chans, spec.image_size, spec.image_size)
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
    (a, _), (b, _) = epochs
    plain, _ = next(iter(val))  # ToTensor + Normalize only
    mean, std = torch.tensor(spec.mean).view(1, -1, 1, 1), torch.tensor(spec.std).view(1, -1, 1, 1)
    assert torch.allclose(plain, (data.val[0][:4].float() / 255 - mean) / std, atol=1e-5)
    if spec.augment == "none":
        assert torch.equal(a, b) and torch.equal(a, plain)
    else:  # the same image, augmented afresh every epoch
        assert not torch.equal(a, b)


def test_reference_rrc_is_ours_scale():
    tf = reference.reference_transform(get_spec("imagenette"), "rrc_flip")
    (rrc,) = [t for t in tf.transforms if isinstance(t, T.RandomResizedCrop)]
    ours = inspect.signature(random_resized_crop).parameters
    assert rrc.scale == ours["scale"].default and rrc.ratio == pytest.approx(ours["ratio"].default)
    assert rrc.size == (160, 160)


def test_reference_unknown_augmentation_is_an_error():
    with pytest.raises(ValueError, match="unknown augmentation 'rrc'"):
        reference.reference_transform(get_spec("cifar10"), "rrc")


def test_reference_trivialaugment_and_erasing():
    spec = get_spec("cifar10")
    tf = reference.reference_transform(spec, "none", "trivialaugment", 1.0)
    kinds = [type(t) for t in tf.transforms]
    assert kinds == [T.TrivialAugmentWide, T.ToTensor, T.Normalize, T.RandomErasing]
    assert tf.transforms[-1].value == "random"  # timm's 'pixel' mode, like data.augment.random_erasing
    # Erasing with p=1 changes exactly one box of the plain image, and only that box.
    data = one_image_repeated("cifar10", 1)
    dataset = reference.PILDataset(*data.train, reference.reference_transform(spec, "none", "none", 1.0))
    plain = reference.PILDataset(*data.train, reference.reference_transform(spec))[0][0]
    changed = (dataset[0][0] != plain).any(0)  # (H, W)
    rows, cols = changed.any(1).nonzero().squeeze(1), changed.any(0).nonzero().squeeze(1)
    assert len(rows) and changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
    assert changed.sum() == len(rows) * len(cols)


def test_reference_step_applies_the_recipe():
    """MixUp soft targets, label smoothing, clipping and the schedule: the step runs and the lr follows
    ``build_scheduler`` exactly."""
    cfg = from_dict({"model": {"name": "simple_cnn"}, "data": {"name": "cifar10"}, "seed": 3,
                     "train": {"batch_size": 4, "epochs": 2, "lr": 0.01, "schedule": "onecycle",
                               "mixup_alpha": 0.2, "cutmix_alpha": 1.0, "label_smoothing": 0.1,
                               "grad_clip": 0.5}})
    from bench.common import synthetic_data
    from models import build_model
    from train.setup import build_optimizer, build_scheduler, seed_everything

    ref = reference.build_reference(cfg, synthetic_data("cifar10", 8), torch.device("cpu"), workers=0)
    seed_everything(3)
    fresh = build_model(cfg, get_spec("cifar10"))
    assert all(torch.equal(a, b) for a, b in zip(ref.model.state_dict().values(), fresh.state_dict().values()))
    assert ref.mixer is not None and ref.criterion.label_smoothing == 0.1 and ref.grad_clip == 0.5
    twin = build_scheduler(build_optimizer(fresh, cfg.train), cfg.train, len(ref.train_loader))
    for images, labels in ref.train_loader:
        loss, correct = reference.reference_step(ref, images, labels)
        twin.optimizer.step()
        twin.step()
        assert loss > 0 and 0 <= correct <= 4
        assert ref.optimizer.param_groups[0]["lr"] == pytest.approx(twin.optimizer.param_groups[0]["lr"])
    assert not all(torch.equal(a, b) for a, b in zip(ref.model.state_dict().values(), fresh.state_dict().values()))


# ----------------------------------------------------------------------------- time to accuracy


def test_time_to_target():
    history = [{"epoch": 1, "val_acc": 50.0, "epoch_time_s": 2.0}, {"epoch": 2, "val_acc": 93.0, "epoch_time_s": 3.0}]
    assert time_to_accuracy.time_to(history, 93) == (2, 5.0)
    assert time_to_accuracy.time_to(history, 99) == (None, None)


def test_time_to_accuracy_reference_matches_ours_step_for_step(fmnist_root, tmp_path, capsys):
    """No augmentation and one full-batch step per epoch: the first epoch's training loss is the loss of the
    initial weights, and the weights after it depend only on the recipe (AdamW, weight decay, label smoothing,
    clipping, the schedule). Both loops then agree to rounding: same seed, same weights, same recipe."""
    out = tmp_path / "t.json"
    assert time_to_accuracy.main([
        "--cfg", str(ROOT / "configs/fashion_mnist.yaml"), "--set", f"data.root={fmnist_root}",
        "--set", "data.download=false", "--set", "data.cache=false", "--set", "data.augment=false",
        "--set", "data.limit_train=64", "--set", "data.limit_val=64", "--set", "train.batch_size=64",
        "--set", "train.epochs=2", "--set", "train.label_smoothing=0.1", "--set", "train.grad_clip=0.5",
        "--set", "train.precision=fp32",  # the reference loop is fp32 (bench/reference.py), whatever auto picks
        "--set", f"output.dir={tmp_path / 'runs'}", "--set", "output.checkpoints=false",
        "--target", "0", "--workers", "0", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["epoch"] for r in data["ours"]] == [1, 2]
    assert [r["epoch"] for r in data["reference"]] == [1]  # target 0 is reached at once: the reference stops
    ours, ref = data["ours"][0], data["reference"][0]
    assert ref["train_loss"] == pytest.approx(ours["train_loss"], rel=1e-5)
    assert ref["val_loss"] == pytest.approx(ours["val_loss"], rel=1e-3)
    assert ref["lr"] == pytest.approx(ours["lr"])
    assert "Time to 0%: ours" in capsys.readouterr().out


@pytest.mark.system  # --workers 1: a DataLoader worker process
def test_time_to_accuracy_on_imagenette_with_every_regulariser(tmp_path, capsys):
    """rrc_flip + TrivialAugment + RandomErasing + MixUp/CutMix + clipping, on Imagenette's folder format
    (the config's model shrunk to one 25-token block so the test stays fast)."""
    root = write_imagenette(tmp_path / "imagenette", per_class=2)
    md = tmp_path / "t.md"
    assert time_to_accuracy.main([
        "--cfg", str(ROOT / "configs/convmixer_vs_vit/vit_imagenette.yaml"), "--set", f"data.root={root}",
        "--set", "data.download=false", "--set", "data.cache=false", "--set", "train.epochs=2",
        "--set", "model.name=vit", "--set", "model.patch_size=32", "--set", "model.embed_dim=32",
        "--set", "model.depth=1", "--set", "model.num_heads=2", "--set", "model.dropout=0.1",
        "--set", "train.batch_size=10", "--set", "train.eval_batch_size=20", "--set", "train.device=cpu",
        "--set", "data.auto_augment=trivialaugment", "--set", "data.random_erasing=0.25",
        "--set", "train.mixup_alpha=0.2", "--set", "train.cutmix_alpha=1.0", "--set", "train.label_smoothing=0.1",
        "--set", f"output.dir={tmp_path / 'runs'}", "--set", "output.checkpoints=false",
        "--target", "101", "--workers", "1", "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    table = md.read_text().strip()
    assert table in out
    rows = [line for line in table.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert len(rows) == 2 and all("–" not in r for r in rows)  # both histories, both epochs
    assert "Time to 101%: ours not reached, reference not reached." in table
    assert "vit on imagenette" in table and "1 workers" in table


def test_time_to_accuracy_unknown_model_is_one_line(tmp_path, capsys):
    assert time_to_accuracy.main(["--cfg", str(ROOT / "configs/fashion_mnist.yaml"), "--set", "model.name=simple_cnm",
                                  "--set", f"output.dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'simple_cnm' (did you mean 'simple_cnn'?)" in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())  # no run directory left behind


# ----------------------------------------------------------------------------- throughput


def test_throughput_one_model(tmp_path, capsys):
    out, md = tmp_path / "b.json", tmp_path / "b.md"
    assert throughput.main(["--models", "simple_cnn", "--dataset", "mnist", "--device", "cpu", "--batch-size", "8",
                            "--eval-batch-size", "4", "--steps", "2", "--rounds", "1", "--warmup", "1",
                            "--latency-repeats", "3", "--synthetic", "64", "--workers", "0", "--peak-size", "256",
                            "--json", str(out), "--markdown", str(md)]) == 0
    data = json.loads(out.read_text())
    (r,) = data["results"]
    head = data["header"]
    assert r["model"] == "simple_cnn" and r["dataset"] == "mnist" and r["params"] == 431_306  # one input channel
    assert r["channels_last"] is True and r["compile"] == "off" and r["precision"] == auto_cpu_precision()
    positive = ("ours_images_per_s", "reference_images_per_s", "train_gflop_per_image", "achieved_tflop_s",
                "peak_share", "latency_ms_batch1", "latency_ms_batched")
    assert all(r[k] > 0 for k in positive), {k: r[k] for k in positive}
    assert r["speedup"] == pytest.approx(r["ours_images_per_s"] / r["reference_images_per_s"])
    assert r["peak_share"] == pytest.approx(r["achieved_tflop_s"] / head["peak_tflop_s"])
    assert head["peak_tflop_s"] == pytest.approx(max(head["peak_start_tflop_s"], head["peak_end_tflop_s"]))
    assert r["achieved_tflop_s"] == pytest.approx(r["train_gflop_per_image"] * r["ours_images_per_s"] / 1e3)
    assert 0 <= r["outside_share"] < 1
    assert "0 workers" in head["reference"] and "fp32" in head["reference"]
    assert md.read_text().strip() in capsys.readouterr().out
    assert "| simple_cnn | mnist | 431,306 |" in md.read_text()


def test_throughput_flops_match_a_hand_count():
    """One linear layer: 2 * in * out FLOPs forward per image; its backward computes only the weight's
    gradient (the input needs none), as much again: 2x the forward for training."""
    flops = throughput.train_flops_per_image(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10)),
                                             type("Spec", (), {"in_chans": 3, "image_size": 4})(),
                                             torch.device("cpu"))
    assert flops == 2 * 2 * 48 * 10


@pytest.mark.parametrize("argv, message", [
    (["--models", "simple_cnm"], "unknown model 'simple_cnm' (did you mean 'simple_cnn'?)"),
    (["--models", "simple_cnn", "--json", "/nonexistent-dir/b.json"], "--json /nonexistent-dir/b.json: folder"),
    (["--models", "simple_cnn", "--dataset", "cifar11"], "unknown dataset 'cifar11'"),
])
def test_throughput_bad_input_is_one_line(capsys, argv, message):
    assert throughput.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("error: ")


# ----------------------------------------------------------------------------- A/B


@pytest.mark.parametrize("setting, model", [("channels_last", "simple_cnn"), ("bf16", "simple_cnn"),
                                            ("cpu_dropout", "cnn_tr_small")])
def test_ab_prints_a_row_per_model(capsys, setting, model):
    assert ab.main(["--setting", setting, "--models", model, "--device", "cpu", "--dataset", "mnist",
                    "--batch-size", "4", "--steps", "1", "--rounds", "1", "--warmup", "1"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    cells = [c.strip().replace(",", "") for c in row.strip("|").split("|")]
    name, off, on, ratio = cells[:4]
    assert name == model and ratio.endswith("x") and float(off) > 0 and float(on) > 0
    assert float(ratio[:-1]) == pytest.approx(float(on) / float(off), rel=0.05, abs=0.006)  # the cells are rounded
    if setting == "cpu_dropout":
        assert int(cells[5]) > 0  # cnn_tr_small has dropout 0.1: the A/B compares something (after the warm-up cell)


def test_ab_cpu_dropout_off_side_is_plain_dropout():
    on = ab.setup_for("cnn_tr_small", "cifar10", 4, torch.device("cpu"), "cpu_dropout", True)
    off = ab.setup_for("cnn_tr_small", "cifar10", 4, torch.device("cpu"), "cpu_dropout", False)
    kinds = lambda m: [type(x) for x in m.modules() if isinstance(x, nn.Dropout)]  # noqa: E731
    assert set(kinds(on.module)) == {CPUDropout} and set(kinds(off.module)) == {nn.Dropout}
    assert len(kinds(on.module)) == len(kinds(off.module)) == on.cpu_dropout > 0 and off.cpu_dropout == 0
    ps = lambda m: [x.p for x in m.modules() if isinstance(x, nn.Dropout)]  # noqa: E731
    assert ps(on.module) == ps(off.module)
    # Same seed: the same initial weights on both sides.
    assert all(torch.equal(a, b) for a, b in zip(on.module.state_dict().values(), off.module.state_dict().values()))


def test_ab_unknown_model_is_one_line(capsys):
    assert ab.main(["--setting", "bf16", "--models", "simple_cnn,simple_cnm"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'simple_cnm' (did you mean 'simple_cnn'?)" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------- threads


@pytest.mark.system  # starts a real busy-loop process
def test_threads_prints_a_row_per_load_and_model_and_stops_its_busy_loops(capsys, monkeypatch):
    from bench import threads

    started, real = [], threads.busy

    def busy(n):
        started.extend(real(n))
        return started[len(started) - n:]

    monkeypatch.setattr(threads, "busy", busy)
    before = torch.get_num_threads()
    assert threads.main(["--models", "simple_cnn", "--dataset", "mnist", "--threads", "1,2", "--load", "0,1",
                         "--batch-size", "4", "--steps", "1", "--rounds", "1", "--warmup", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| simple_cnn |")]
    assert [r.split("|")[2].strip() for r in rows] == ["0", "1"]
    for row in rows:
        one, two, ratio = [c.strip().replace(",", "") for c in row.strip("|").split("|")][3:]
        assert float(ratio[:-1]) == pytest.approx(float(two) / float(one), rel=0.05, abs=0.006)
    assert len(started) == 1 and started[0].poll() is not None  # the busy loop was stopped
    assert torch.get_num_threads() == before


def test_threads_bad_counts_are_one_line(capsys):
    from bench import threads

    assert threads.main(["--threads", "0,2"]) == 2
    err = capsys.readouterr().err
    assert "--threads: got '0,2'; expected comma-separated integers >= 1" in err and err.count("\n") == 1
