"""Datasets: official on-disk formats decoded once into uint8 tensors (N, C, H, W).

Each dataset is a ``DatasetSpec`` in a registry keyed by ``data.name``. Loading
finds the official files under ``data.root`` (downloading them through
torchvision when missing and allowed), decodes them, and caches the decoded
tensors so the next run starts in a fraction of a second. The validation split
is each dataset's official test split.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from core.errors import UserError
from core.files import atomic_write
from core.registry import Registry

CACHE_FORMAT = 1  # bump when decoding changes, so old caches are not reused

Split = tuple[torch.Tensor, torch.Tensor]  # images uint8 (N, C, H, W), labels int64 (N,)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str  # see data.augment.train_transform
    find: Callable[[Path], Optional[list[Path]]]  # source files under root, or None if incomplete
    decode: Callable[[list[Path]], tuple[Split, Split]]
    download: Callable[[Path], None]
    expected: Callable[[Path], str]  # human description of the files looked for
    classes: tuple[str, ...] = ()  # class names by label index

    def class_name(self, label: int) -> str:
        return self.classes[label] if 0 <= label < len(self.classes) else str(label)


@dataclass
class ImageData:
    spec: DatasetSpec
    train: Split
    val: Split

    def to(self, device: torch.device) -> "ImageData":
        move = lambda s: (s[0].to(device), s[1].to(device))  # noqa: E731
        return ImageData(self.spec, move(self.train), move(self.val))


DATASETS = Registry("dataset", "data.name")


def get_spec(name: str) -> DatasetSpec:
    return DATASETS.get(name)


def list_datasets() -> list[str]:
    return DATASETS.names()


# ----------------------------------------------------------------------------- CIFAR


def _cifar_files(folder: str, train: list[str], test: list[str]):
    def find(root: Path) -> Optional[list[Path]]:
        for base in (root / folder, root):
            files = [base / f for f in train + test]
            if all(f.is_file() for f in files):
                return files
        return None

    def expected(root: Path) -> str:
        return f"{root / folder}/{{{','.join(train + test)}}}"

    return find, expected


def _read_cifar_batch(path: Path, label_key: bytes) -> Split:
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as e:
        raise UserError(f"{path}: not a CIFAR python batch file ({type(e).__name__}: {e})") from None
    if len(labels) != len(data):
        raise UserError(f"{path}: {len(data)} images but {len(labels)} labels")
    return torch.from_numpy(data), torch.from_numpy(labels)


def _concat(splits: list[Split]) -> Split:
    return torch.cat([s[0] for s in splits]), torch.cat([s[1] for s in splits])


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple("""apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man
maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain
plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake
spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip
turtle wardrobe whale willow_tree wolf woman worm""".split())  # the fine labels, in label order


def _cifar(name, folder, train, test, label_key, num_classes, mean, std, tv_class, classes):
    find, expected = _cifar_files(folder, train, test)

    def decode(files: list[Path]) -> tuple[Split, Split]:
        batches = [_read_cifar_batch(f, label_key) for f in files]
        return _concat(batches[: len(train)]), _concat(batches[len(train):])

    def download(root: Path) -> None:
        import torchvision.datasets as tvd

        getattr(tvd, tv_class)(str(root), train=True, download=True)

    return DatasetSpec(name, num_classes, 3, 32, mean, std, "crop_flip", find, decode, download, expected, classes)


DATASETS.register(_cifar("cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                         ["test_batch"], b"labels", 10,
                         (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "CIFAR10", CIFAR10_CLASSES), name="cifar10")
DATASETS.register(_cifar("cifar100", "cifar-100-python", ["train"], ["test"], b"fine_labels", 100,
                         (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "CIFAR100", CIFAR100_CLASSES),
                  name="cifar100")


# ----------------------------------------------------------------------------- MNIST family (idx files)

IDX_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally .gz): big-endian header, then unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read idx file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path}: not an idx file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4: 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UserError(f"{path}: header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


FASHION_MNIST_CLASSES = ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                         "ankle boot")


def _mnist(name: str, folder: str, mean: float, std: float, augment: str, tv_class: str,
           classes: tuple[str, ...]) -> DatasetSpec:
    def find(root: Path) -> Optional[list[Path]]:
        for base in (root, root / folder / "raw"):
            files = []
            for stem in IDX_FILES:
                hit = next((p for p in (base / stem, base / f"{stem}.gz") if p.is_file()), None)
                if hit is None:
                    break
                files.append(hit)
            else:
                return files
        return None

    def expected(root: Path) -> str:
        return (f"the four idx files {', '.join(f + '[.gz]' for f in IDX_FILES)} "
                f"in {root} or in {root / folder / 'raw'}")

    def decode(files: list[Path]) -> tuple[Split, Split]:
        xtr, ytr, xte, yte = (read_idx(f) for f in files)
        for imgs, labels, f in ((xtr, ytr, files[0]), (xte, yte, files[2])):
            if imgs.ndim != 3 or labels.ndim != 1 or len(imgs) != len(labels):
                raise UserError(f"{f}: images {imgs.shape} do not match labels {labels.shape}")
        as_split = lambda x, y: (torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))  # noqa: E731
        return as_split(xtr, ytr), as_split(xte, yte)

    def download(root: Path) -> None:
        import torchvision.datasets as tvd

        cls = getattr(tvd, tv_class)
        cls(str(root), train=True, download=True)

    return DatasetSpec(name, 10, 1, 28, (mean,), (std,), augment, find, decode, download, expected, classes)


DATASETS.register(_mnist("mnist", "MNIST", 0.1307, 0.3081, "none", "MNIST", tuple("0123456789")), name="mnist")
DATASETS.register(_mnist("fashion_mnist", "FashionMNIST", 0.2860, 0.3530, "flip", "FashionMNIST",
                         FASHION_MNIST_CLASSES), name="fashion_mnist")


# ----------------------------------------------------------------------------- Imagenette (image folders)

IMAGENETTE_DIR = "imagenette2-160"
IMAGENETTE_SIZE = 160  # stored size: shorter side resized to 160, centre-cropped square
IMAGE_EXTENSIONS = {".jpeg", ".jpg", ".png"}
# The folders n01440764, n02102040, ... in sorted order, i.e. label order.
IMAGENETTE_CLASSES = ("tench", "English springer", "cassette player", "chain saw", "church", "French horn",
                      "garbage truck", "gas pump", "golf ball", "parachute")


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted(d for d in split_dir.iterdir() if d.is_dir()) if split_dir.is_dir() else []


def _imagenette_find(root: Path) -> Optional[list[Path]]:
    for base in (root / IMAGENETTE_DIR, root):
        train, val = _class_dirs(base / "train"), _class_dirs(base / "val")
        if train and [d.name for d in train] == [d.name for d in val]:
            return train + val
    return None


def _load_image(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = size / min(im.size)
            w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
            im = im.resize((w, h), Image.BILINEAR, reducing_gap=None)
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)  # (3, S, S)
    except OSError as e:
        raise UserError(f"{path}: cannot decode image ({e})") from None


def _imagenette_decode(class_dirs: list[Path]) -> tuple[Split, Split]:
    half = len(class_dirs) // 2

    def split(dirs: list[Path]) -> Split:
        items = [(p, label) for label, d in enumerate(dirs) for p in sorted(d.iterdir())
                 if p.suffix.lower() in IMAGE_EXTENSIONS]
        if not items:
            raise UserError(f"{dirs[0].parent}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found")
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # PIL decodes without the GIL
            images = list(pool.map(lambda it: _load_image(it[0], IMAGENETTE_SIZE), items))
        return torch.from_numpy(np.stack(images)), torch.tensor([label for _, label in items])

    return split(class_dirs[:half]), split(class_dirs[half:])


def _imagenette_download(root: Path) -> None:
    import torchvision.datasets as tvd

    tvd.Imagenette(str(root), split="train", size="160px", download=True)


DATASETS.register(DatasetSpec(
    "imagenette", 10, 3, IMAGENETTE_SIZE, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "rrc_flip",
    _imagenette_find, _imagenette_decode, _imagenette_download,
    lambda root: f"{root / IMAGENETTE_DIR}/{{train,val}}/<class folder>/*.JPEG", IMAGENETTE_CLASSES,
), name="imagenette")


# ----------------------------------------------------------------------------- loading + cache


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vitlab"


def _cache_key(name: str, files: list[Path]) -> str:
    h = hashlib.sha1(f"{name}:{CACHE_FORMAT}".encode())
    for f in files:
        st = f.stat()
        # For image folders, a folder's mtime changes when files are added or removed.
        h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _decode_cached(spec: DatasetSpec, files: list[Path], cache_dir: Optional[Path]) -> tuple[Split, Split]:
    if cache_dir is None:
        return spec.decode(files)
    path = cache_dir / f"{spec.name}-{_cache_key(spec.name, files)}.pt"
    if path.is_file():
        try:
            blob = torch.load(path, weights_only=True)
            return (blob["train_x"], blob["train_y"]), (blob["val_x"], blob["val_y"])
        except Exception:  # a cache is disposable: decode again and overwrite it
            pass
    train, val = spec.decode(files)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {"train_x": train[0], "train_y": train[1], "val_x": val[0], "val_y": val[1]}
        atomic_write(path, lambda f: torch.save(blob, f))
    except OSError:
        pass  # an unwritable cache only costs speed next time
    return train, val


def load_data(d) -> ImageData:
    """The dataset a config's ``data`` section describes (``config.schema.DataConfig``)."""
    cache = (Path(d.cache_dir) if d.cache_dir else default_cache_dir()) if d.cache else None
    return load_dataset(d.name, d.root, download=d.download, limit_train=d.limit_train, limit_val=d.limit_val,
                        cache_dir=cache)


def load_dataset(
    name: str,
    root: str | Path,
    *,
    download: bool = False,
    limit_train: Optional[int] = None,
    limit_val: Optional[int] = None,
    cache_dir: Optional[str | Path] = None,
) -> ImageData:
    """Find (or download), decode (or read from ``cache_dir``; None = no cache) and cap a dataset.

    Raises UserError for anything the user can fix: missing files, failed download, corrupt data.
    """
    spec = get_spec(name)
    root = Path(root).expanduser()
    files = spec.find(root)
    if files is None and download:
        try:
            root.mkdir(parents=True, exist_ok=True)
            spec.download(root)
        except Exception as e:  # network, disk, checksum: all the user can act on
            raise UserError(f"data.root: {name} not found and the download failed ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'no details'}); expected {spec.expected(root)}; "
                            f"see README 'Datasets offline'") from None
        files = spec.find(root)
    if files is None:
        hint = "set data.download: true to fetch it, or see README 'Datasets offline'" if not download \
            else "see README 'Datasets offline'"
        raise UserError(f"data.root: {name} not found: expected {spec.expected(root)}; {hint}")
    train, val = _decode_cached(spec, files, Path(cache_dir).expanduser() if cache_dir else None)
    if limit_train is not None:
        train = (train[0][:limit_train], train[1][:limit_train])
    if limit_val is not None:
        val = (val[0][:limit_val], val[1][:limit_val])
    for split, (x, y) in (("train", train), ("val", val)):
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
            raise UserError(f"data.root: {name} {split} labels span {int(y.min())}..{int(y.max())}, "
                            f"expected 0..{spec.num_classes - 1}")
    return ImageData(spec, train, val)
