"""Bad input of every kind is one line on stderr, exit 2, no traceback: a matrix to extend.

Each case is ``(id, setup)``: ``setup(tmp_path)`` writes what it needs under ``tmp_path`` and returns
``(args, names)``, the arguments of ``python main.py`` and the texts the error line must contain (the key or
the file it is about, and the problem). Add a row to ``CONFIG_CASES`` (refused while loading the config, so the
runs there use ``--dry-run``) or to ``DATA_CASES`` (refused while reading the dataset: a corrupted, truncated
or foreign file in one of the real on-disk formats, written by tests/fixtures.py and then damaged here).

A damaged cache is not a mistake: the last tests check that it costs one warning line and the run trains.
"""
from __future__ import annotations

import errno
import gzip
import os
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures import (TINY_VIT, call_main, pattern_images, tiny_raw, write_cifar10, write_cifar100, write_idx,
                      write_imagenette, write_mnist, write_yaml)

ROOT = Path(__file__).resolve().parents[1]
MEDIUM = ROOT / "configs/cnn_tr_medium.yaml"
BIG = 10 ** 400


# ----------------------------------------------------------------------------- config and values


def config_file(text: str | bytes, names=None):
    """A case whose config file holds ``text``; the error must name ``names`` (default: the file)."""
    def setup(tmp):
        path = tmp / "c.yaml"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return ["--cfg", path, "--dry-run"], [str(path)] if names is None else names
    return setup


def override(*assignments: str, names=(), key=None):
    """A case that sets ``assignments`` (``--set``) on cnn_tr_medium; the error must name ``key`` (default:
    the last assignment's key) and ``names``."""
    def setup(tmp):
        args = ["--cfg", MEDIUM, "--set", f"output.dir={tmp / 'runs'}"]
        for a in assignments:
            args += ["--set", a]
        return [*args, "--dry-run"], [key or assignments[-1].split("=")[0], *names]
    return setup


def vit(**kwargs):
    """A case building the open ViT with these (YAML-text) keyword values."""
    return override("model.name=vit", *(f"model.{k}={v}" for k, v in kwargs.items()))


CONFIG_CASES = [
    ("yaml: malformed", config_file("model:\n  name: vit\n data: oops\n")),
    ("yaml: tab indent", config_file("model:\n\tname: vit\n")),
    ("yaml: not utf-8", config_file(b"\xff\xfe\x00garbage")),
    ("yaml: a list, not a mapping", config_file("- model\n- data\n")),
    ("yaml: python tag", config_file("model: !!python/object/apply:os.system [echo]\n")),
    ("yaml: !!bool that is not one", config_file("model: {name: vit}\nseed: !!bool maybe\n",
                                                 ["c.yaml", "!!bool 'maybe' is not a boolean", "line 2"])),
    ("yaml: !!timestamp that is not one", config_file("name: !!timestamp x\n", ["!!timestamp 'x' is not a date"])),
    # Refused at the bracket past MAX_DEPTH (100 levels, the top mapping one of them), as the text is scanned.
    ("yaml: nested 5,000 deep", config_file("model: " + "[" * 5_000 + "]" * 5_000 + "\n",
                                            ["c.yaml", "nested more than 100 levels deep", "line 1, column 107"])),
    ("yaml: a block list nested 5,000 deep", config_file("- " * 5_000 + "1\n",
                                                         ["c.yaml", "nested more than 100 levels deep", "line 1"])),
    ("yaml: a 2 MB file", config_file("# " + "x" * (2 << 20) + "\n")),
    ("yaml: no such file", lambda tmp: (["--cfg", tmp / "none.yaml"], ["none.yaml", "no such file"])),
    ("yaml: a directory", lambda tmp: (["--cfg", tmp], [str(tmp), "directory"])),
    ("--set: not KEY=VALUE", lambda tmp: (["--cfg", MEDIUM, "--set", "nonsense"], ["nonsense"])),
    ("--set: malformed value", override("train.lr=[1, 2")),
    ("--set: nested 5,000 deep", override("model.dropout=" + "[" * 5_000 + "]" * 5_000,
                                          names=["nested more than 100 levels deep"])),
    ("--set: !!bool that is not one", override("output.tensorboard=!!bool nope", names=["!!bool 'nope'"])),
    ("unknown key", override("train.epoch=3", names=["did you mean 'epochs'"])),
    ("unknown section", override("trian.lr=0.1", key="trian")),
    ("key with a newline", config_file('model: {name: vit}\ndata: {name: cifar10}\n"tr\\nain": 1\n',
                                       ["'tr\\nain'", "unknown key"])),
    ("model key that is not a name", config_file("model: {name: vit, 3: 4}\ndata: {name: cifar10}\n",
                                                 ["model.3", "not a parameter name"])),
    ("wrong type", override("train.lr=fast", names=["expected a number"])),
    ("wrong type: section as value", override("model=[1]")),
    ("wrong type: a value as section", override("model.name.x=1", names=["not a section"])),
    ("unknown model", override("model.name=vit_huge", names=["valid:"])),
    ("renamed model", override("model.name=vit_seed003", names=["vit_mini_patchnorm"])),
    ("unknown dataset", override("data.name=svhn", names=["valid:"])),
    ("unknown model keyword", override("model.depth=3", names=["accepted:"])),
    ("model keyword of the wrong type", vit(qkv_bias="'no'")),
    # non-finite and huge numbers, in fixed config keys
    ("train.lr: nan", override("train.lr=.nan", names=["finite"])),
    ("train.lr: -inf", override("train.lr=-.inf", names=["finite"])),
    ("train.lr: 1e400 (a string to YAML)", override("train.lr=1e400", names=["finite"])),
    ("train.lr: a 400-digit integer", override(f"train.lr={BIG}", names=["401-digit"])),
    ("train.grad_clip: inf", override("train.grad_clip=.inf", names=["finite"])),
    ("train.threads: 0", override("train.threads=0", names=["got 0", "in [1, 1,024]"])),
    ("train.threads: a word", override("train.threads=many", names=["'many'", "an integer or one of 'auto'"])),
    ("train.threads: 1.5", override("train.threads=1.5", names=["1.5", "an integer or one of 'auto'"])),
    ("train.threads: true", override("train.threads=true", names=["True", "an integer or one of 'auto'"])),
    ("train.warmup_epochs: inf", override("train.warmup_epochs=.inf")),
    ("train.epochs: a 400-digit integer", override(f"train.epochs={BIG}", names=["401-digit"])),
    ("train.epochs: inf", override("train.epochs=.inf")),
    ("train.milestones: [inf]", override("train.schedule=multistep", "train.milestones=[.inf]")),
    ("train.log_every: 10**30", override(f"train.log_every={10 ** 30}", names=["2**63"])),
    ("train.early_stopping_patience: -1", override("train.early_stopping_patience=-1", names=["in [0, 100,000]"])),
    ("train.early_stopping_min_delta: inf", override("train.early_stopping_min_delta=.inf", names=["finite"])),
    ("train.ema_decay: 1", override("train.ema_decay=1", names=["in [0, 1)"])),
    ("train.ema_decay: a word", override("train.ema_decay=high", names=["expected a number"])),
    ("data.limit_train: inf", override("data.limit_train=.inf")),
    ("data.limit_train: 10**20", override(f"data.limit_train={10 ** 20}")),
    ("seed: 1e400", override("seed=1e400")),
    ("seed: a 400-digit integer", override(f"seed={BIG}", names=["401-digit"])),
    ("seed: negative", override("seed=-1")),
    ("seed: a 5,000-digit integer (Python refuses to parse it)", override("seed=" + "1" * 5000, names=["4300"])),
    ("yaml: a 5,000-digit integer in a file", config_file("seed: " + "7" * 5000 + "\n", names=["4300"])),
    ("yaml: a date that does not exist", config_file("name: 2020-13-45\n", names=["month"])),
    ("name: a date that does not exist", override("name=2020-02-30", names=["day"])),
    # ... and in the free-form model keywords (core/convert.py, config/loader.py)
    ("model.mlp_ratio: inf", vit(mlp_ratio=".inf")),
    ("model.mlp_ratio: nan", vit(mlp_ratio=".nan")),
    ("model.mlp_ratio: 1e400", vit(mlp_ratio="1e400")),
    ("model.mlp_ratio: 1e30", vit(mlp_ratio="1.0e30")),
    ("model.depth: 1e300", vit(depth="1e300")),
    ("model.depth: 1.0e300", vit(depth="1.0e300")),
    ("model.depth: 100,000 (would hang building)", vit(depth=100_000)),
    ("model.depth: a 400-digit integer", vit(depth=BIG)),
    ("model.num_heads: nan", vit(num_heads=".nan")),
    ("model.embed_dim: 10**9", vit(embed_dim=10 ** 9)),
    ("model.dropout: inf", override("model.dropout=.inf")),
    ("model.patch_size: list of inf", vit(patch_size="[.inf]")),
]

CONFIG_CASES += [
    ("timm: an argument timm divides by", override("data.name=fashion_mnist", "model.name=timm/vit_tiny_patch16_224",
                                                   "model.num_heads=0", key="timm/vit_tiny_patch16_224")),
    ("base: a home directory that does not exist", config_file("base: ~no_such_user_xyz/a.yaml\n",
                                                               ["base:", "no_such_user_xyz"])),
    ("base: a name with a NUL byte", config_file('base: "a\\0b.yaml"\n', ["base:", "not a usable file name"])),
    ("dry run: data.root in a home directory that does not exist", override(
        "data.root=~no_such_user_xyz/data", key="data.root")),
    ("model.name: unknown timm model", override("model.name=timm/resnet1", key="model.name",
                                                names=["unknown timm model 'resnet1'", "did you mean 'timm/resnet18'"])),
    ("model.name: a timm model too deep for 28x28", override(
        "data.name=fashion_mnist", "model.name=timm/convnext_atto", key="timm/convnext_atto", names=["1x28x28"])),
    ("model.patch_size: timm's ViT patch 16 on 28 px (one token, 12 px dropped)", override(
        "data.name=fashion_mnist", "model.name=timm/vit_tiny_patch16_224", key="timm/vit_tiny_patch16_224",
        names=["model.patch_size=16 does not tile the 28x28 image", "--set model.patch_size=7"])),
    ("model.patch_size: a timm ViT's one-patch grid", override(
        "data.name=fashion_mnist", "model.name=timm/vit_tiny_patch16_224", "model.patch_size=28",
        key="timm/vit_tiny_patch16_224", names=["token grid of one patch", "--set model.patch_size=7"])),
    ("model.patch_size: a ViT patch that does not tile", override(
        "model.name=vit", "model.patch_size=5", key="model.patch_size", names=["does not tile the 32x32 image"])),
    ("model.patch_size: a ConvMixer's one-patch grid", override(
        "data.name=fashion_mnist", "model.name=convmixer", "model.patch_size=28", key="model.patch_size",
        names=["token grid of one patch over the 28x28 image", "--set model.patch_size=7"])),
    ("model.name: a family, not a model", override("model.name=hybrid", key="model.name",
                                                   names=["'hybrid' is a family", "cnn_tr_small", "convstem_vit_mini"])),
    ("model.num_classes: set by the dataset for a timm model", override("model.name=timm/resnet10t",
                                                                        "model.num_classes=3")),
    ("yaml: a key twice", config_file("model: {name: vit}\ntrain: {lr: 0.1}\ndata: {name: cifar10}\ntrain: {epochs: 2}\n",
                                      ["c.yaml", "duplicate key 'train' (lines 2 and 4)"])),
    ("yaml: an alias bomb", config_file("a: &a {x: 1, y: 1}\nb: &b {p: *a, q: *a}\nc: {p: *b, q: *b}\n",
                                        ["c.yaml", "alias"])),
]


def test_dry_run_says_device_precision_run_dir_and_where_the_data_is(tmp_path, capsys, monkeypatch):
    from fixtures import write_mnist, write_yaml

    write_mnist(tmp_path / "data")
    cfg = write_yaml(tmp_path / "c.yaml", tiny_raw(tmp_path / "data", tmp_path / "runs", name="x"))
    p = call_main(capsys, "--cfg", cfg, "--dry-run")
    assert p.returncode == 0, p.stderr
    tail = p.stdout.splitlines()[-4:]
    assert tail[0].startswith("device:     cpu (train.device: auto)") or "cuda" in tail[0]
    assert tail[1].startswith("precision:  ")
    assert tail[2] == f"run dir:    {tmp_path / 'runs' / 'x-fashion_mnist'}-<date>-<time>"
    assert tail[3] == f"data:       fashion_mnist found in {tmp_path / 'data'}"
    monkeypatch.setenv("VITLAB_SYSTEM_DATASETS", str(tmp_path / "system"))
    p = call_main(capsys, "--cfg", cfg, "--dry-run", "--set", f"data.root={tmp_path / 'none'}")
    last = p.stdout.splitlines()[-1]
    assert last.startswith("data:       fashion_mnist not found (expected ") and str(tmp_path / "system") in last
    assert last.endswith("data.download is off") and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("setup", [c[1] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_config_mistakes_are_one_line(tmp_path, capsys, setup):
    args, names = setup(tmp_path)
    assert_one_line_error(call_main(capsys, *args), names)
    assert not (tmp_path / "runs").exists()


def assert_one_line_error(p, names) -> None:
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.startswith("error: ") and p.stderr.count("\n") == 1, p.stderr[:2000]
    assert len(p.stderr) < 600, p.stderr  # a readable line, whatever the input's size
    for name in names:
        assert name in p.stderr, (name, p.stderr)


# ----------------------------------------------------------------------------- dataset files


def run_on(dataset: str, make, damage, names, model=None):
    """A case that writes ``dataset`` with ``make(folder)``, damages it with ``damage(folder)`` (which returns
    the damaged file) and trains one epoch on it; the error must name that file and the ``names``."""
    def setup(tmp):
        folder = tmp / "data"
        make(folder)
        bad = damage(folder)
        raw = tiny_raw(folder, tmp / "runs", dataset=dataset, model=model or PATCH4_VIT, epochs=1)
        return ["--cfg", write_yaml(tmp / "c.yaml", raw)], [str(bad), "run again with data.download: true to fetch", *names]
    return setup


PATCH4_VIT = {**TINY_VIT, "patch_size": 4}  # divides 28, 32 and 160: one model for every dataset


def mnist(folder):
    write_mnist(folder, n_train=32, n_test=16)


def cifar10(folder):
    write_cifar10(folder, per_batch=8, n_test=8)


def cifar100(folder):
    write_cifar100(folder, n_train=16, n_test=8)


def imagenette(folder):
    write_imagenette(folder, per_class=1, classes=2)


IMAGES = "train-images-idx3-ubyte.gz"
LABELS = "train-labels-idx1-ubyte.gz"


def gz_payload(folder, name=IMAGES) -> bytes:
    with gzip.open(folder / name) as f:
        return f.read()


def flip_byte(name, offset):
    """Flip one byte of the file ``name`` at ``offset`` (negative: from the end)."""
    def damage(folder):
        path = next(folder.rglob(name))
        data = bytearray(path.read_bytes())
        data[offset] ^= 0xFF
        path.write_bytes(bytes(data))
        return path
    return damage


def truncate(name, keep):
    """Keep the first ``keep`` bytes of ``name`` (a float: that fraction)."""
    def damage(folder):
        path = next(folder.rglob(name))
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
        return path
    return damage


def rewrite_idx(name, header: bytes, payload: bytes = b"", gz=True):
    """Replace an idx file by ``header`` + ``payload`` (gzipped when the name ends in .gz)."""
    def damage(folder):
        path = folder / name
        data = header + payload
        path.write_bytes(gzip.compress(data) if gz else data)
        return path
    return damage


def idx_header(*dims, dtype=0x08):
    return struct.pack(">BBBB", 0, 0, dtype, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


def gz_bomb_header(folder):
    """A header claiming 2**31 x 28 x 28 images followed by 64 MB of zeros (a .gz of ~64 KB)."""
    path = folder / IMAGES
    path.write_bytes(gzip.compress(idx_header(2 ** 31, 28, 28) + bytes(64 << 20)))
    return path


def mnist_labels(values):
    def damage(folder):
        write_idx(folder / LABELS, np.asarray(values, dtype=np.uint8))
        return folder / LABELS
    return damage


def cifar_pickle(obj, name="data_batch_1"):
    """Replace a CIFAR-10 batch by the pickle of ``obj``."""
    def damage(folder):
        path = folder / "cifar-10-batches-py" / name
        path.write_bytes(pickle.dumps(obj, protocol=2))
        return path
    return damage


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def cifar100_pickle(obj):
    def damage(folder):
        path = folder / "cifar-100-python" / "train"
        path.write_bytes(pickle.dumps(obj, protocol=2))
        return path
    return damage


def cifar_batch(**changes):
    x, y = pattern_images(8, 10, 3, 32)
    batch = {b"data": x.reshape(8, -1), b"labels": [int(v) for v in y]}
    batch.update({k.encode(): v for k, v in changes.items()})
    return batch


def replace_image(payload: bytes | None = None, size=None):
    """Replace the first Imagenette image by ``payload``, or by a PNG whose header claims ``size``."""
    def damage(folder):
        path = sorted(folder.rglob("*.JPEG"))[0]
        if size is not None:
            import zlib

            def chunk(kind, data):
                return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
            payload_ = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", *size, 8, 2, 0, 0, 0))
                        + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
        else:
            payload_ = payload
        path.write_bytes(payload_)
        return path
    return damage


def truncate_first_image(folder):
    path = sorted(folder.rglob("*.JPEG"))[0]
    path.write_bytes(path.read_bytes()[:600])
    return path


DATA_CASES = [
    # MNIST / Fashion-MNIST idx files, gzipped
    ("idx.gz: one byte flipped in the deflate stream", run_on("fashion_mnist", mnist, flip_byte(IMAGES, 200), [])),
    ("idx.gz: one byte flipped in the CRC", run_on("fashion_mnist", mnist, flip_byte(IMAGES, -6), ["CRC"])),
    ("idx.gz: one byte flipped in the gzip header", run_on("fashion_mnist", mnist, flip_byte(LABELS, 0), [])),
    ("idx.gz: truncated mid-stream", run_on("mnist", mnist, truncate(IMAGES, 0.5), [])),
    ("idx.gz: truncated to 10 bytes", run_on("mnist", mnist, truncate(LABELS, 10), [])),
    ("idx.gz: empty file", run_on("mnist", mnist, truncate(LABELS, 0), [])),
    ("idx: not gzip although named .gz", run_on("mnist", mnist, rewrite_idx(IMAGES, idx_header(32, 28, 28),
                                                                            bytes(32 * 784), gz=False), [])),
    ("idx: wrong magic", run_on("mnist", mnist, rewrite_idx(LABELS, b"\x08\x03\x00\x00" + bytes(40)),
                                ["magic"])),
    ("idx: int32 data type", run_on("mnist", mnist, rewrite_idx(LABELS, idx_header(32, dtype=0x0C), bytes(128)),
                                    ["0x0c"])),
    ("idx: labels with 3 dimensions", run_on("mnist", mnist, rewrite_idx(LABELS, idx_header(32, 28, 28),
                                                                         bytes(32 * 784)), ["dimensions"])),
    ("idx: header says 2**31 x 2**31 x 28", run_on("mnist", mnist, rewrite_idx(IMAGES, idx_header(2 ** 31, 2 ** 31, 28)),
                                                   ["shape"])),
    ("idx: header says 2**32-1 images of 28x28", run_on("mnist", mnist, rewrite_idx(
        IMAGES, idx_header(2 ** 32 - 1, 28, 28), bytes(1000)), ["at most"])),
    ("idx: header says 2**31 images, 64 MB of zeros follow", run_on("mnist", mnist, gz_bomb_header, ["at most"])),
    ("idx: header says more images than follow", run_on("mnist", mnist, rewrite_idx(
        IMAGES, idx_header(40, 28, 28), bytes(32 * 784)), ["truncated"])),
    ("idx: more data than the header says", run_on("mnist", mnist, rewrite_idx(
        LABELS, idx_header(32), bytes(40)), ["more data"])),
    ("idx: labels out of range", run_on("mnist", mnist, mnist_labels([200] * 32), ["200"])),
    ("idx: no images", run_on("mnist", mnist, rewrite_idx(IMAGES, idx_header(0, 28, 28)), ["0 images"])),
    # uncompressed idx files
    ("idx: truncated, not gzipped", run_on("mnist", lambda f: write_mnist(f, 32, 16, gz=False),
                                           truncate("t10k-images-idx3-ubyte", 0.7), [])),
    ("idx: gzipped but named without .gz", run_on("mnist", lambda f: write_mnist(f, 32, 16, gz=False), rewrite_idx(
        "t10k-labels-idx1-ubyte", idx_header(16), bytes(16)), ["not named .gz"])),
    # CIFAR python pickles
    ("cifar10: truncated pickle", run_on("cifar10", cifar10, truncate("data_batch_3", 0.5), [])),
    ("cifar10: one byte flipped in the pickle opcodes", run_on("cifar10", cifar10, flip_byte("test_batch", 2), [])),
    ("cifar10: garbage", run_on("cifar10", cifar10, cifar_pickle(None, "data_batch_2"), ["NoneType"])),
    ("cifar10: not a pickle", run_on("cifar10", cifar10, truncate("data_batch_2", 0), [])),
    ("cifar10: a pickle calling os.system", run_on("cifar10", cifar10, cifar_pickle(Evil()), ["posix.system"])),
    ("cifar10: missing labels", run_on("cifar10", cifar10, cifar_pickle({b"data": np.zeros((8, 3072), np.uint8)}),
                                       ["b'labels'"])),
    ("cifar10: float64 data", run_on("cifar10", cifar10, cifar_pickle(cifar_batch(data=np.zeros((8, 3072)))),
                                     ["float64"])),
    ("cifar10: data of the wrong shape", run_on("cifar10", cifar10, cifar_pickle(
        cifar_batch(data=np.zeros((8, 1024), np.uint8))), ["(8, 1024)"])),
    ("cifar10: string labels", run_on("cifar10", cifar10, cifar_pickle(cifar_batch(labels=["cat"] * 8)),
                                      ["b'labels'"])),
    ("cifar10: labels out of range", run_on("cifar10", cifar10, cifar_pickle(cifar_batch(labels=[10] * 8)),
                                            ["0..9"])),
    ("cifar10: fewer labels than images", run_on("cifar10", cifar10, cifar_pickle(cifar_batch(labels=[1] * 5)),
                                                 ["5 labels"])),
    ("cifar100: truncated", run_on("cifar100", cifar100, truncate("train", 0.9), [])),
    ("cifar100: label 100", run_on("cifar100", cifar100, cifar100_pickle(
        {b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [100] * 4}), ["0..99"])),
    # Imagenette image folders
    ("imagenette: not an image", run_on("imagenette", imagenette, replace_image(b"not a jpeg"), [])),
    ("imagenette: empty file", run_on("imagenette", imagenette, replace_image(b""), [])),
    ("imagenette: truncated jpeg", run_on("imagenette", imagenette, truncate_first_image, [])),
    ("imagenette: png claiming 100000 x 100000", run_on("imagenette", imagenette, replace_image(size=(100_000, 100_000)),
                                                        [])),
    ("imagenette: png claiming 8000 x 8000", run_on("imagenette", imagenette, replace_image(size=(8000, 8000)), [])),
    ("imagenette: png claiming 10000 x 10000 (PIL only warns)", run_on("imagenette", imagenette,
                                                                       replace_image(size=(10_000, 10_000)), [])),
]


@pytest.mark.parametrize("setup", [c[1] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_damaged_dataset_files_are_one_line(tmp_path, capsys, setup):
    args, names = setup(tmp_path)
    start = time.perf_counter()
    assert_one_line_error(call_main(capsys, *args), names)
    assert time.perf_counter() - start < 30  # refused from the header, not after reading gigabytes


# ----------------------------------------------------------------------------- a broken cache only warns


def cache_run(tmp, cache_dir, capsys, **data):
    """One epoch on a tiny Fashion-MNIST fixture with the cache in ``cache_dir``: the finished process."""
    folder = tmp / "data"
    if not folder.exists():
        write_mnist(folder, n_train=32, n_test=16)
    raw = tiny_raw(folder, tmp / "runs", epochs=1, batch_size=16,
                   data={"cache": True, "cache_dir": str(cache_dir), **data})
    return call_main(capsys, "--cfg", write_yaml(tmp / "c.yaml", raw))


def assert_trained_with_one_warning(p, *names) -> None:
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    (line,) = p.stderr.splitlines()  # the warning is all there is on stderr, on one line
    assert line.startswith("warning: ") and "cache" in line, p.stderr
    for name in names:
        assert name in line, (name, line)
    print(line)  # pytest -s shows them


def the_cache_file(cache_dir: Path) -> Path:
    (path,) = cache_dir.glob("fashion_mnist-*.pt")
    return path


def test_cache_dir_that_is_a_file_warns_and_trains(tmp_path, capsys):
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    assert_trained_with_one_warning(cache_run(tmp_path, blocker, capsys), str(blocker))


def test_cache_dir_below_a_file_warns_and_trains(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert_trained_with_one_warning(cache_run(tmp_path, tmp_path / "file" / "cache", capsys), "cannot write")


def test_unwritable_cache_dir_warns_and_trains(tmp_path, capsys, monkeypatch):
    import data.cache

    def refuse(path, data):  # what mkstemp raises in a read-only folder (the tests may run as root)
        raise PermissionError(errno.EACCES, "Permission denied", str(path.parent))

    monkeypatch.setattr(data.cache, "atomic_write", refuse)
    assert_trained_with_one_warning(cache_run(tmp_path, tmp_path / "cache", capsys), "Permission denied")


def test_full_disk_while_writing_the_cache_warns_and_trains(tmp_path, capsys, monkeypatch):
    import data.cache
    from core.files import atomic_write

    def full(path, data):  # the real writer, on a disk that fills up mid-write
        def write(f):
            f.write(b"x" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return atomic_write(path, write)

    monkeypatch.setattr(data.cache, "atomic_write", full)
    cache = tmp_path / "cache"
    assert_trained_with_one_warning(cache_run(tmp_path, cache, capsys), "No space left on device")
    assert list(cache.iterdir()) == []  # no half-written cache and no temporary file left behind


def test_torch_save_runtime_error_while_writing_the_cache_warns_and_trains(tmp_path, capsys, monkeypatch):
    import data.cache

    def failing(path, train, val):  # torch.save reports some write errors as RuntimeError
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")

    monkeypatch.setattr(data.cache, "write_cache", failing)
    assert_trained_with_one_warning(cache_run(tmp_path, tmp_path / "cache", capsys), "RuntimeError")


def _corrupt_bytes(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _wrong_blob(**changes):
    def damage(path: Path) -> None:
        blob = torch.load(path, weights_only=True)
        blob.update(changes)
        torch.save(blob, path)
    return damage


def _not_weights_only(path: Path) -> None:
    torch.save({"train_x": Path("x")}, path)  # needs the full unpickler: weights_only refuses it


@pytest.mark.parametrize("damage, says", [
    (_corrupt_bytes, "unreadable"),
    (lambda p: p.write_bytes(b""), "unreadable"),
    (_not_weights_only, "unreadable"),
    (_wrong_blob(train_x=torch.zeros(32, 3, 32, 32, dtype=torch.uint8)), "train: images"),
    (_wrong_blob(val_x=torch.zeros(16, 1, 28, 28, dtype=torch.float32)), "val: images are float32"),
    (_wrong_blob(train_y=torch.zeros(32, dtype=torch.int32)), "train: labels are int32"),
    (_wrong_blob(train_y=torch.full((32,), 10)), "labels span 10..10"),
    (_wrong_blob(val_y=torch.zeros(3, dtype=torch.int64)), "16 images but 3 labels"),
    (_wrong_blob(extra=torch.zeros(1)), "expected"),
], ids=["truncated", "empty", "not-weights-only", "wrong-shape", "wrong-dtype", "label-dtype", "label-range",
        "label-count", "extra-key"])
def test_bad_cache_file_is_ignored_and_replaced(tmp_path, capsys, damage, says):
    from data import load_dataset

    folder, cache = write_mnist(tmp_path / "data", n_train=32, n_test=16), tmp_path / "cache"
    load_dataset("fashion_mnist", folder, cache_dir=cache)  # writes the cache
    path = the_cache_file(cache)
    good = torch.load(path, weights_only=True)
    damage(path)
    capsys.readouterr()
    d = load_dataset("fashion_mnist", folder, cache_dir=cache)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: data.cache_dir: ignored") and "replaced" in line, line
    assert str(path) in line and says in line, line
    assert torch.equal(d.train[0], good["train_x"]) and torch.equal(d.val[1], good["val_y"])
    fresh = torch.load(path, weights_only=True)
    assert all(torch.equal(fresh[k], good[k]) for k in good)
    load_dataset("fashion_mnist", folder, cache_dir=cache)  # the replaced file is used again, quietly
    assert capsys.readouterr().err == ""


def test_corrupted_cache_file_warns_and_the_run_trains(tmp_path, capsys):
    cache = tmp_path / "cache"
    assert cache_run(tmp_path, cache, capsys).returncode == 0  # writes the cache
    _corrupt_bytes(the_cache_file(cache))
    assert_trained_with_one_warning(cache_run(tmp_path, cache, capsys), "unreadable", "replaced")


def test_bad_cache_file_in_an_unwritable_cache_dir_is_one_warning(tmp_path, capsys, monkeypatch):
    import data.cache
    from data import load_dataset

    folder, cache = write_mnist(tmp_path / "data", n_train=32, n_test=16), tmp_path / "cache"
    load_dataset("fashion_mnist", folder, cache_dir=cache)
    _corrupt_bytes(the_cache_file(cache))

    def read_only(path, data):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(data.cache, "atomic_write", read_only)
    capsys.readouterr()
    assert len(load_dataset("fashion_mnist", folder, cache_dir=cache).train[1]) == 32
    (line,) = capsys.readouterr().err.splitlines()
    for text in ("warning: data.cache_dir: ignored", "unreadable", "cannot replace it", "Read-only"):
        assert text in line, line


def test_stale_temporary_files_are_removed(tmp_path, capsys):
    from core.files import TEMP_PREFIX

    cache = tmp_path / "cache"
    cache.mkdir()
    old, recent = cache / f"{TEMP_PREFIX}fashion_mnist-0123456789abcdef.pt.k3j2h1", \
        cache / f"{TEMP_PREFIX}cifar10-0123456789abcdef.pt.a8s7d6"
    foreign = cache / f"{TEMP_PREFIX}notes.txt.x1"  # not a cache write: someone else's, left alone
    for f in (old, recent, foreign):
        f.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    os.utime(foreign, (two_hours_ago, two_hours_ago))
    p = cache_run(tmp_path, cache, capsys)
    assert p.returncode == 0 and "warning" not in p.stderr, p.stderr
    assert not old.exists() and recent.exists() and foreign.exists()
