"""Loaders read fixture files written in the official formats; augmentations are checked op by op."""
import gzip

import numpy as np
import pytest
import torch

from data import load_dataset
from data.augment import normalize, random_crop, random_hflip, random_resized_crop, train_transform
from core.errors import UserError
from fixtures import pattern_images, write_cifar10, write_cifar100, write_idx, write_imagenette, write_mnist


def _gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_cifar10_pickles(tmp_path):
    write_cifar10(tmp_path, per_batch=20, n_test=30)
    d = load_dataset("cifar10", tmp_path)
    (xtr, ytr), (xte, yte) = d.train, d.val
    assert xtr.shape == (100, 3, 32, 32) and xtr.dtype == torch.uint8 and ytr.dtype == torch.int64
    assert xte.shape == (30, 3, 32, 32) and len(yte) == 30
    # First training image is the first row of data_batch_1, in CHW order.
    expected, labels = pattern_images(20, 10, 3, 32, seed=1)
    assert torch.equal(xtr[:20], torch.from_numpy(expected)) and ytr[:20].tolist() == labels.tolist()


def test_cifar100_fine_labels(tmp_path):
    write_cifar100(tmp_path, n_train=50, n_test=20)
    d = load_dataset("cifar100", tmp_path, limit_train=40)
    assert d.train[0].shape == (40, 3, 32, 32) and d.val[0].shape == (20, 3, 32, 32)
    assert d.spec.num_classes == 100 and int(d.train[1].max()) < 100


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_torchvision_layout(tmp_path, gz):
    write_mnist(tmp_path / "MNIST" / "raw", n_train=64, n_test=32, gz=gz)
    d = load_dataset("mnist", tmp_path)
    assert d.train[0].shape == (64, 1, 28, 28) and d.val[0].shape == (32, 1, 28, 28)


def test_fashion_mnist_flat_folder_like_debian(fmnist_root):
    d = load_dataset("fashion_mnist", fmnist_root, limit_val=50)
    expected, labels = pattern_images(256, 10, 1, 28, seed=0)
    assert torch.equal(d.train[0], torch.from_numpy(expected))
    assert d.train[1].tolist() == labels.tolist() and d.val[0].shape == (50, 1, 28, 28)


def test_imagenette_folders(tmp_path):
    write_imagenette(tmp_path, per_class=2)
    d = load_dataset("imagenette", tmp_path)
    assert d.train[0].shape == (20, 3, 160, 160) and d.val[0].shape == (20, 3, 160, 160)
    assert sorted(set(d.train[1].tolist())) == list(range(10))
    # Class k was drawn at brightness ~25k: decoding kept the label <-> image pairing.
    means = d.train[0].float().mean(dim=(1, 2, 3))
    assert torch.all(means[d.train[1] == 9] > means[d.train[1] == 0] + 150)


def test_cache_is_written_then_used(tmp_path, fmnist_root):
    cache = tmp_path / "cache"
    first = load_dataset("fashion_mnist", fmnist_root, cache_dir=cache)
    files = list(cache.glob("fashion_mnist-*.pt"))
    assert len(files) == 1
    # Prove the second load reads the cache: swap in different tensors and check that they come back.
    blob = torch.load(files[0])
    blob["train_x"] = torch.zeros_like(blob["train_x"])
    torch.save(blob, files[0])
    second = load_dataset("fashion_mnist", fmnist_root, cache_dir=cache)
    assert not second.train[0].any() and first.train[0].any()


def test_cache_is_invalidated_when_sources_change(tmp_path, fmnist_root):
    cache = tmp_path / "cache"
    load_dataset("fashion_mnist", fmnist_root, cache_dir=cache)
    write_mnist(fmnist_root, n_train=128, n_test=64, seed=5)
    assert len(load_dataset("fashion_mnist", fmnist_root, cache_dir=cache).train[1]) == 128


def test_corrupt_cache_is_rebuilt(tmp_path, fmnist_root):
    cache = tmp_path / "cache"
    load_dataset("fashion_mnist", fmnist_root, cache_dir=cache)
    next(cache.glob("*.pt")).write_bytes(b"garbage")
    assert len(load_dataset("fashion_mnist", fmnist_root, cache_dir=cache).train[1]) == 256


def test_missing_files_say_what_and_where(tmp_path):
    with pytest.raises(UserError) as info:
        load_dataset("cifar10", tmp_path / "nowhere", download=False)
    msg = str(info.value)
    assert "cifar-10-batches-py" in msg and "data_batch_1" in msg and "test_batch" in msg and "data.download" in msg
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte\[\.gz\].*FashionMNIST/raw"):
        load_dataset("fashion_mnist", tmp_path, download=False)


def test_failed_download_is_a_user_error(tmp_path, monkeypatch):
    import dataclasses

    from data.catalog import DATASETS, get_spec

    def offline(root):
        raise OSError("network unreachable")

    patched = dataclasses.replace(get_spec("mnist"), download=offline)  # specs are frozen: swap the entry
    monkeypatch.setitem(DATASETS._entries, "mnist", patched)
    with pytest.raises(UserError, match="download failed .*network unreachable.*expected the four idx files"):
        load_dataset("mnist", tmp_path, download=True)


def test_corrupt_idx_file(tmp_path):
    folder = write_mnist(tmp_path, n_train=8, n_test=8)
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x01\x02\x03")
    with pytest.raises(UserError, match="not an idx file"):
        load_dataset("mnist", folder)


def test_label_count_mismatch(tmp_path):
    folder = write_mnist(tmp_path, n_train=8, n_test=8)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(5, dtype=np.uint8))
    with pytest.raises(UserError, match="8 images but train-labels-idx1-ubyte.gz has 5 labels; delete both"):
        load_dataset("mnist", folder)


# ----------------------------------------------------------------------------- augmentation


def test_random_crop_is_a_shifted_window():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.int64).reshape(2, 3, 8, 8).to(torch.uint8)
    out = random_crop(x, 2, _gen())
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):  # each output equals some window of the zero-padded input
        windows = [(dy, dx) for dy in range(5) for dx in range(5)
                   if torch.equal(padded[i, :, dy:dy + 8, dx:dx + 8], out[i])]
        assert windows


def test_random_crop_covers_all_offsets():
    x = torch.zeros(4000, 1, 4, 4, dtype=torch.uint8)
    x[:, :, 0, 0] = 1  # track where the top-left pixel lands
    out = random_crop(x, 1, _gen())
    positions = {tuple(p) for p in (out[:, 0] == 1).nonzero()[:, 1:].tolist()}
    assert positions == {(0, 0), (0, 1), (1, 0), (1, 1)}  # shifted right/down by 0 or 1; left/up pushes it out
    assert (out.flatten(1).sum(1) == 0).any()


def test_hflip_flips_about_half():
    x = torch.arange(8, dtype=torch.uint8).view(1, 1, 1, 8).repeat(1000, 1, 1, 1)
    out = random_hflip(x, _gen())
    flipped = (out[:, 0, 0, 0] == 7)
    assert torch.equal(out[flipped], x[flipped].flip(3)) and torch.equal(out[~flipped], x[~flipped])
    assert 400 < int(flipped.sum()) < 600


def test_random_resized_crop_shapes_and_range():
    x = torch.randint(0, 256, (6, 3, 40, 48), dtype=torch.uint8)
    out = random_resized_crop(x, 24, _gen())
    assert out.shape == (6, 3, 24, 24) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255


def test_random_resized_crop_of_full_scale_is_a_resize():
    x = torch.linspace(0, 255, 32).view(1, 1, 1, 32).expand(1, 1, 32, 32).to(torch.uint8)
    out = random_resized_crop(x, 32, _gen(), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(out, x.float(), atol=1.0, rtol=0)


def test_augmentation_is_seeded():
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    aug = train_transform("crop_flip", 32)
    assert torch.equal(aug(x, _gen(3)), aug(x, _gen(3)))
    assert not torch.equal(aug(x, _gen(3)), aug(x, _gen(4)))


def test_normalize_matches_torchvision():
    from torchvision.transforms import functional as TF

    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    expected = torch.stack([TF.normalize(TF.convert_image_dtype(img, torch.float32), mean, std) for img in x])
    torch.testing.assert_close(normalize(x, mean, std), expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- untrusted files (more in test_bad_input.py)


def test_cifar_pickle_naming_numpy1_modules_loads(tmp_path):
    # The official batches were pickled by Python 2 and numpy 1: their arrays name numpy.core.multiarray.
    import pickle

    write_cifar10(tmp_path, per_batch=4, n_test=4)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    x, y = pattern_images(4, 10, 3, 32, seed=9)
    raw = pickle.dumps({b"data": x.reshape(4, -1), b"labels": [int(v) for v in y]}, protocol=2)
    assert b"numpy._core.multiarray\n" in raw
    path.write_bytes(raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    d = load_dataset("cifar10", tmp_path)
    assert torch.equal(d.train[0][:4], torch.from_numpy(x)) and d.train[1][:4].tolist() == y.tolist()


def test_read_idx_refuses_a_huge_header_without_reading(tmp_path, monkeypatch):
    import struct

    from data.formats import read_idx

    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(struct.pack(">BBBB3I", 0, 0, 8, 3, 2 ** 31, 28, 28) + bytes(1000)))
    reads = []
    real_open = gzip.open

    def spy(*args, **kwargs):
        f = real_open(*args, **kwargs)
        real_read = f.read
        f.read = lambda n=-1: reads.append(n) or real_read(n)
        return f

    monkeypatch.setattr(gzip, "open", spy)
    with pytest.raises(UserError, match=r"claims shape \(2147483648, 28, 28\)"):
        read_idx(path, (28, 28))
    assert reads == [4, 12]  # the header only


def test_decoded_data_is_checked_before_it_is_cached(tmp_path):
    folder = write_mnist(tmp_path / "d", n_train=8, n_test=8)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.full(8, 12, dtype=np.uint8))
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte.gz: labels span 12..12, expected 0..9"):
        load_dataset("mnist", folder, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.pt"))


def test_download_has_a_socket_timeout_and_restores_it(tmp_path, monkeypatch):
    import dataclasses
    import socket

    from data.catalog import DATASETS, get_spec
    from data.download import DOWNLOAD_TIMEOUT_S

    seen = []

    def stalled(root):
        seen.append(socket.getdefaulttimeout())
        raise TimeoutError("timed out")

    monkeypatch.setitem(DATASETS._entries, "mnist", dataclasses.replace(get_spec("mnist"), download=stalled))
    with pytest.raises(UserError, match=r"download failed \(TimeoutError: timed out\)"):
        load_dataset("mnist", tmp_path, download=True)
    assert seen == [DOWNLOAD_TIMEOUT_S] and socket.getdefaulttimeout() is None


# ----------------------------------------------------------------------------- where datasets are looked for


def test_a_system_copy_is_used_when_data_root_has_none(tmp_path, monkeypatch, capsys):
    from data.locate import SYSTEM_DATASETS_ENV, system_dir

    system = tmp_path / "usr-share-datasets"
    monkeypatch.setenv(SYSTEM_DATASETS_ENV, str(system))
    assert system_dir("fashion_mnist") == system / "fashion-mnist"  # Debian's dataset-fashion-mnist layout
    write_mnist(system / "fashion-mnist", n_train=32, n_test=16)
    capsys.readouterr()
    d = load_dataset("fashion_mnist", tmp_path / "empty-root", download=True)  # found: nothing downloaded
    assert len(d.train[1]) == 32 and not (tmp_path / "empty-root").exists()
    assert capsys.readouterr().err == (f"data: fashion_mnist not in data.root {tmp_path / 'empty-root'}; "
                                       f"using the copy in {system / 'fashion-mnist'}\n")


def test_data_root_wins_over_the_system_copy_and_its_torchvision_layout_is_found(tmp_path, monkeypatch, capsys):
    from data.catalog import get_spec
    from data.locate import SYSTEM_DATASETS_ENV, locate

    monkeypatch.setenv(SYSTEM_DATASETS_ENV, str(tmp_path / "system"))
    write_mnist(tmp_path / "system" / "fashion-mnist", n_train=32, n_test=16)
    write_mnist(tmp_path / "root" / "FashionMNIST" / "raw", n_train=48, n_test=16, gz=False)  # torchvision's
    capsys.readouterr()
    files, found_in, looked = locate(get_spec("fashion_mnist"), tmp_path / "root")
    assert found_in == tmp_path / "root" and looked == [] and files[0].parent.name == "raw"
    assert len(load_dataset("fashion_mnist", tmp_path / "root").train[1]) == 48
    assert capsys.readouterr().err == ""  # found where the config says: nothing to say


def test_not_found_names_every_place_looked(tmp_path, monkeypatch):
    from data.locate import SYSTEM_DATASETS_ENV

    monkeypatch.setenv(SYSTEM_DATASETS_ENV, str(tmp_path / "system"))
    with pytest.raises(UserError) as info:
        load_dataset("fashion_mnist", tmp_path / "root", download=False)
    msg = str(info.value)
    assert "\n" not in msg
    for place in (tmp_path / "root", tmp_path / "root" / "FashionMNIST" / "raw", tmp_path / "system" / "fashion-mnist"):
        assert f"in {place}" in msg, place
    with pytest.raises(UserError, match=str(tmp_path / "system" / "cifar10" / "cifar-10-batches-py")):
        load_dataset("cifar10", tmp_path / "root", download=False)
