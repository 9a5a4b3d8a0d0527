"""--eval and --predict backends (evaluate/inference.py) and the confusion matrix files (plots/confusion.py), on
tiny runs trained in this process."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import UserError
from data import get_spec, load_dataset
from data.augment import normalize
from fixtures import (TINY_VIT, auto_cpu_precision, built_once, read_metrics, run_fit, tiny_config, write_cifar10,
                      write_imagenette, write_mnist)
from plots.confusion import MAX_ANNOTATED, write_confusion
from evaluate.inference import evaluate_run, format_eval, format_predictions, load_image, predict_images
from evaluate.model import load_model
from train.resume import run_config


@pytest.fixture(scope="module")
def fmnist_run(tmp_path_factory):
    """A 2-epoch run (precision: auto, so either branch: .ci/run runs both) on 256/120 Fashion-MNIST-format
    images, evaluated in batches of 48 (a short last batch) with channels_last on."""
    def build(tmp):
        root = write_mnist(tmp / "data", n_train=256, n_test=120)
        return run_fit(tiny_config(root, tmp / "runs", eval_batch_size=48, channels_last=True))
    return built_once(tmp_path_factory, "inference-fmnist", build)


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    """A 2-epoch bf16-autocast run on CIFAR-10-format files (3 channels, 32 px)."""
    def build(tmp):
        root = write_cifar10(tmp / "data", per_batch=40, n_test=50)
        return run_fit(tiny_config(root, tmp / "runs", dataset="cifar10", model={**TINY_VIT, "patch_size": 4},
                                   precision="bf16"))
    return built_once(tmp_path_factory, "inference-cifar", build)


@pytest.fixture(scope="module")
def fmnist_eval(fmnist_run):
    return evaluate_run(fmnist_run[0], "best")


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and text
    return text


# ----------------------------------------------------------------------------- --eval


@pytest.mark.numeric
def test_best_reproduces_recorded_accuracy_exactly(fmnist_run, fmnist_eval):
    path, results = fmnist_run
    r = fmnist_eval
    assert results["status"] == "completed"
    assert r.top1 == results["best_val_acc"]  # bit for bit, not approximately
    best_row = read_metrics(path)[results["best_epoch"] - 1]
    assert r.loss == best_row["val_loss"]
    assert r.recorded_acc == results["best_val_acc"] and r.recorded_epoch == results["best_epoch"]
    assert r.matches_record and r.checkpoint == path / "best.pt"
    assert (r.images, r.batch_size, r.channels_last, r.compiled) == (120, 48, True, False)
    assert r.precision == results["precision"] == auto_cpu_precision()  # the run's


@pytest.mark.numeric
def test_last_reproduces_final_epoch(fmnist_run):
    path, results = fmnist_run
    r = evaluate_run(path, "last", device="cpu")
    final = read_metrics(path)[-1]
    assert (r.top1, r.loss) == (final["val_acc"], final["val_loss"])
    assert r.matches_record and r.checkpoint == path / "last.pt" and r.recorded_epoch == 2


def test_bf16_run_reproduces_recorded_accuracy(cifar_run):
    path, results = cifar_run
    r = evaluate_run(path)
    assert r.precision == "bfloat16"
    assert r.top1 == results["best_val_acc"]
    assert r.classes == get_spec("cifar10").classes


def test_per_class_accuracy_agrees_with_confusion_matrix(fmnist_run, fmnist_eval):
    r = fmnist_eval
    c = r.confusion
    assert c.dtype == torch.int64 and c.shape == (10, 10) and int(c.sum()) == r.images == 120
    data = load_dataset("fashion_mnist", run_config(fmnist_run[0]).data.root)
    assert r.support == torch.bincount(data.val[1], minlength=10).tolist()
    assert 100.0 * int(c.trace()) / r.images == r.top1
    _, model, _ = load_model(fmnist_run[0])  # the matrix again, from one plain forward pass over the split
    spec = get_spec("fashion_mnist")
    with torch.inference_mode():
        predicted = model(normalize(data.val[0], spec.mean, spec.std)).argmax(1)
    expected = torch.zeros(10, 10, dtype=torch.int64)
    for t, p in zip(data.val[1].tolist(), predicted.tolist()):
        expected[t, p] += 1
    assert torch.equal(c, expected)
    for k, acc in enumerate(r.per_class):
        assert acc is None if r.support[k] == 0 else acc == pytest.approx(100.0 * int(c[k, k]) / r.support[k])
    weighted = sum(a * n for a, n in zip(r.per_class, r.support) if a is not None) / r.images
    assert weighted == pytest.approx(r.top1)
    assert r.top5 >= r.top1
    text = format_eval(r)
    assert f"top-1 {r.top1:.2f}%" in text and "the same" in text
    assert all(name in text for name in get_spec("fashion_mnist").classes)


def test_confusion_files(tmp_path, fmnist_eval):
    r = fmnist_eval
    csv_path, png_path = write_confusion(r.confusion, r.classes, tmp_path, top1=r.top1)
    assert (csv_path.name, png_path.name) == ("confusion_best.csv", "confusion_best.png")
    rows = [line.split(",") for line in csv_path.read_text().splitlines()]
    assert len(rows) == 11 and rows[0][1:] == ["T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal",
                                               "shirt", "sneaker", "bag", "ankle boot"]
    assert [row[0] for row in rows[1:]] == rows[0][1:]
    assert [[int(v) for v in row[1:]] for row in rows[1:]] == r.confusion.tolist()
    with Image.open(png_path) as im:
        im.verify()
        assert im.format == "PNG" and im.width > 200 and im.height > 200
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_confusion_files_many_classes_and_empty_rows(tmp_path):
    n = MAX_ANNOTATED + 5  # a CIFAR-100 run's figure: too many classes to write the counts in
    names = [f"class_{k}" for k in range(n)]
    matrix = np.zeros((n, n), dtype=np.int64)
    matrix[np.arange(12), np.arange(12)] = 3  # classes 12.. have no images: rows of zeros
    csv_path, png_path = write_confusion(matrix.tolist(), names, tmp_path, stem="confusion_last")
    assert csv_path.read_text().count("\n") == n + 1
    with Image.open(png_path) as im:
        im.verify()
    with pytest.raises(ValueError):
        write_confusion(matrix, names[:10], tmp_path)


# ----------------------------------------------------------------------------- --predict


def val_sample(path, index: int = 0):
    """(uint8 (C, S, S) validation image, the class the run's best.pt predicts for it)."""
    cfg, model, _ = load_model(path)
    spec = get_spec(cfg.data.name)
    data = load_dataset(cfg.data.name, cfg.data.root)
    x = data.val[0][index]
    with torch.inference_mode():
        predicted = int(model(normalize(x[None], spec.mean, spec.std)).argmax(1))
    return x, predicted


def save(pixels: np.ndarray, file, mode: str, **kwargs):
    Image.fromarray(pixels, mode if mode in ("L", "RGB", "RGBA") else None).save(file, **kwargs)
    return file


def test_predict_grayscale_dataset_from_many_modes(fmnist_run, tmp_path):
    path, _ = fmnist_run
    x, predicted = val_sample(path)
    grey = x[0].numpy()  # (28, 28)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    rgba = np.concatenate([rgb, np.full((28, 28, 1), 255, np.uint8)], axis=2)
    files = {
        "native.png": save(grey, tmp_path / "native.png", "L"),
        "rgb.png": save(rgb, tmp_path / "rgb.png", "RGB"),  # grey in RGB: converts back exactly
        "rgba.png": save(rgba, tmp_path / "rgba.png", "RGBA"),  # opaque
        "16bit.png": tmp_path / "16bit.png",
        "big.jpg": save(np.asarray(Image.fromarray(grey).resize((100, 140), Image.NEAREST)), tmp_path / "big.jpg",
                        "L", quality=95),
        "palette.png": tmp_path / "palette.png",
    }
    Image.fromarray(grey.astype(np.uint16) * 257).save(files["16bit.png"])  # 16-bit PNG: I;16
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(files["palette.png"])
    with Image.open(files["16bit.png"]) as im:
        assert im.mode.startswith("I")
    preds = predict_images(path, list(files.values()), top=3)
    assert [p.image.name for p in preds] == list(files)
    for p in preds:
        assert len(p.top) == 3
        probs = [q for _, _, q in p.top]
        assert probs == sorted(probs, reverse=True) and all(0 <= q <= 1 for q in probs)
        assert p.top[0][1] == get_spec("fashion_mnist").class_name(p.top[0][0])
    full = predict_images(path, [files["native.png"]], top=50)[0]  # top clipped to the 10 classes
    assert len(full.top) == 10 and sum(q for _, _, q in full.top) == pytest.approx(1.0, abs=1e-5)
    lossless = [p for p in preds if p.image.name in ("native.png", "rgb.png", "rgba.png", "16bit.png")]
    assert all(p.top[0][0] == predicted for p in lossless)
    assert all(p.top == lossless[0].top for p in lossless)  # the very same input tensor each time
    text = format_predictions(preds)
    assert text.splitlines()[0] == str(files["native.png"])
    assert f"  {100 * preds[0].top[0][2]:5.1f}%  {preds[0].top[0][1]}" in text


def test_predict_three_channel_dataset(cifar_run, tmp_path):
    path, _ = cifar_run
    x, predicted = val_sample(path, 3)
    rgb = x.permute(1, 2, 0).numpy().copy()  # (32, 32, 3)
    transparent = np.concatenate([rgb, np.zeros((32, 32, 1), np.uint8)], axis=2)
    transparent[8:24, 8:24, 3] = 255
    files = [save(rgb, tmp_path / "same.png", "RGB"),
             save(rgb, tmp_path / "photo.jpeg", "RGB", quality=90),
             save(transparent, tmp_path / "cutout.png", "RGBA"),
             save(rgb[:, :, 0], tmp_path / "grey.png", "L"),
             tmp_path / "cmyk.jpg", tmp_path / "wide.png"]
    Image.fromarray(rgb).convert("CMYK").save(files[4])
    Image.fromarray(rgb).resize((96, 40), Image.BICUBIC).save(files[5])
    preds = predict_images(path, files, top=5)
    assert preds[0].top[0][0] == predicted
    for p in preds:
        assert len(p.top) == 5 and sum(q for _, _, q in p.top) <= 1 + 1e-5
    full = predict_images(path, files, top=10)
    assert all(sum(q for _, _, q in p.top) == pytest.approx(1.0, abs=1e-5) for p in full)


def test_load_image_prepares_like_the_dataset(tmp_path):
    """An Imagenette file becomes exactly the tensor the dataset decoder stores; alpha goes over black."""
    root = write_imagenette(tmp_path / "inet", per_class=1, classes=10)
    spec = get_spec("imagenette")
    data = load_dataset("imagenette", root)
    first_val = sorted((root / "imagenette2-160" / "val").iterdir())[0] / "img_0.JPEG"
    assert torch.equal(load_image(first_val, spec), data.val[0][0])
    with Image.open(first_val) as im:
        assert im.width > im.height  # non-square: the centre crop is exercised

    fm = get_spec("fashion_mnist")
    rgba = np.zeros((56, 56, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:28, :, 3] = 255  # top half opaque grey, bottom half transparent
    x = load_image(save(rgba, tmp_path / "half.png", "RGBA"), fm)
    assert x.shape == (1, 28, 28) and x.dtype == torch.uint8
    assert int(x[0, :12].min()) == 200 and int(x[0, 16:].max()) == 0
    big = np.asarray(Image.fromarray(data.val[0][0].permute(1, 2, 0).numpy()).resize((480, 480), Image.NEAREST))
    y = load_image(save(big, tmp_path / "big.png", "RGB"), spec)
    assert (y.float() - data.val[0][0].float()).abs().mean() < 4  # a 3x nearest upscale comes back close


# ----------------------------------------------------------------------------- mistakes: one line each


def test_bad_images_are_one_line_errors(fmnist_run, tmp_path):
    path, _ = fmnist_run
    noise = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)  # does not compress
    good = save(noise, tmp_path / "ok.png", "L")
    (tmp_path / "notes.png").write_text("not an image\n")
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:400])  # cut inside the pixel data
    for bad, says in ((tmp_path / "missing.png", "no such image file"), (tmp_path / "notes.png", "not an image"),
                      (cut, "cannot decode"), (tmp_path, "not a file")):
        with pytest.raises(UserError) as e:
            predict_images(path, [good, bad])
        assert one_line(e).startswith(f"{bad}: ") and says in str(e.value)
    with pytest.raises(UserError) as e:
        predict_images(path, [good], top=0)
    assert "--top" in one_line(e)


def test_run_without_checkpoint_is_one_line_error(fmnist_run, tmp_path):
    path, _ = fmnist_run
    copy = shutil.copytree(path, tmp_path / "run")
    (copy / "best.pt").unlink()
    with pytest.raises(UserError) as e:
        evaluate_run(copy)
    assert "best.pt: not found" in one_line(e)
    with pytest.raises(UserError) as e:
        predict_images(copy, [tmp_path / "x.png"])
    assert "best.pt" in one_line(e)
    (copy / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UserError) as e:
        evaluate_run(copy, "last")
    assert "last.pt" in one_line(e)
    with pytest.raises(UserError) as e:
        evaluate_run(tmp_path / "nowhere")
    assert "no such run directory" in one_line(e)
    with pytest.raises(UserError) as e:
        evaluate_run(path, "middle")
    assert "--ckpt" in one_line(e)


def test_compiled_run_is_evaluated_eagerly(fmnist_run, tmp_path):
    """A run that trained with torch.compile is evaluated without compiling (same weights), and says so."""
    path, results = fmnist_run
    copy = shutil.copytree(path, tmp_path / "run")
    config = copy / "config.yaml"
    config.write_text(config.read_text().replace("compile: 'off'", "compile: default"))
    r = evaluate_run(copy)
    assert r.compiled and r.top1 == results["best_val_acc"]  # this run really trained eagerly
    assert "torch.compile" in format_eval(r)


def test_eval_and_predict_from_the_command_line(fmnist_root, tmp_path, capsys):
    """``main.py --eval`` and ``--predict`` as a user calls them: printed numbers, written files, exit codes."""
    import json

    from PIL import Image

    from fixtures import call_main, run_fit, tiny_config

    run_dir, results = run_fit(tiny_config(fmnist_root, tmp_path))
    r = call_main(capsys, "--eval", run_dir)
    assert r.returncode == 0, r.stderr
    assert f"top-1 {results['best_val_acc']:.2f}%" in r.stdout
    assert (run_dir / "confusion_best.csv").is_file() and (run_dir / "confusion_best.png").is_file()
    r = call_main(capsys, "--eval", run_dir, "--ckpt", "last")
    assert r.returncode == 0 and (run_dir / "confusion_last.png").is_file()
    assert json.loads((run_dir / "results.json").read_text()) == results  # evaluating changes no record

    Image.new("RGB", (100, 60), (200, 10, 10)).save(tmp_path / "red.jpg")
    r = call_main(capsys, "--predict", run_dir, tmp_path / "red.jpg", "--top", "3")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].endswith("red.jpg") and len(lines) == 4 and all(line.strip().endswith(tuple(
        "abcdefghijklmnopqrstuvwxyz")) for line in lines[1:])
    r = call_main(capsys, "--predict", run_dir, tmp_path / "missing.png")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.splitlines()) == 1
