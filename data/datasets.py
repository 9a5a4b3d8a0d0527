"""Datasets: official on-disk formats decoded once into uint8 tensors (N, C, H, W).

Each dataset is a ``DatasetSpec`` in a registry keyed by ``data.name``. Loading
finds the official files under ``data.root`` (downloading them through
torchvision when missing and allowed), decodes them, and caches the decoded
tensors so the next run starts in a fraction of a second. The validation split
is each dataset's official test split.

Dataset files are untrusted input: a corrupted byte, a truncated download or a header claiming 2**31 images
is a one-line ``UserError`` naming the file and what to do about it, never a traceback, a hang or an
allocation the file cannot back. Sizes in headers are checked against the file's real size before anything
is allocated, pickles are read with an unpickler that can only build numpy arrays, and every decoded split is
checked against its ``DatasetSpec`` (shape, dtype, label range).

The cache of decoded tensors is only a speed-up: an unreadable, corrupted or mismatched cache file is ignored
(and replaced), and a cache folder that cannot be written costs one warning line, never the run.
"""
from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import math
import os
import pickle
import re
import socket
import struct
import sys
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from core.errors import UserError
from core.files import TEMP_PREFIX, atomic_write
from core.registry import Registry

CACHE_FORMAT = 1  # bump when decoding changes, so old caches are not reused
DOWNLOAD_TIMEOUT_S = 60  # seconds without progress before a download gives up
REFETCH = "delete it and run again with data.download: true to fetch a fresh copy"

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


def _corrupt(path: Path, problem: str) -> UserError:
    return UserError(f"{path}: {problem}; {REFETCH}")


def _brief(e: BaseException, path: Optional[Path] = None) -> str:
    """An exception as a short clause for a one-line message: its type and the start of its first line."""
    text = (str(e).strip().splitlines() or [""])[0]
    if path is not None:
        text = text.replace(f"'{path}'", "it").replace(str(path), "it")
    if len(text) > 120:
        text = text[:120].rsplit(" ", 1)[0] + " ..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _describe(value) -> str:
    """What a value read from a file is, for a message: 'uint8 array (10, 3072)', 'list', ..."""
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"{str(value.dtype).replace('torch.', '')} array {tuple(value.shape)}"
    return type(value).__name__


def check_split(x, y, image_shape: tuple[int, int, int], num_classes: int) -> Optional[str]:
    """What is wrong with a decoded split (None: nothing): images uint8 (N, *image_shape), labels int64 (N,)
    in [0, num_classes), N >= 1. Checked on every decode and every cache read."""
    want = image_shape
    if not (isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.ndim == 4 and tuple(x.shape[1:]) == want):
        return f"images are {_describe(x)}, expected uint8 (N, {', '.join(map(str, want))})"
    if not (isinstance(y, torch.Tensor) and y.dtype == torch.int64 and y.ndim == 1):
        return f"labels are {_describe(y)}, expected int64 (N,)"
    if len(x) != len(y):
        return f"{len(x)} images but {len(y)} labels"
    if len(y) == 0:
        return "no images"
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= num_classes:
        return f"labels span {low}..{high}, expected 0..{num_classes - 1}"
    return None


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


class _CifarUnpickler(pickle.Unpickler):
    """Builds only what a CIFAR batch holds (dicts, lists, bytes, numpy uint8 arrays). A corrupted or foreign
    pickle can name any importable callable; this one refuses every other name instead of calling it."""

    _core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core; old pickles name either
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _core.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _core.multiarray._reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refers to {module}.{name}, which no CIFAR batch does") from None


def _read_cifar_batch(path: Path, label_key: bytes, num_classes: int) -> Split:
    try:
        # From memory, not the file: a corrupted length field then fails as truncated data instead of
        # asking the file object for gigabytes.
        raw = path.read_bytes()
    except OSError as e:
        raise _corrupt(path, f"cannot read ({_brief(e, path)})") from None
    try:
        batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - a damaged pickle fails in arbitrary ways; all mean the same here
        raise _corrupt(path, f"not a readable CIFAR python batch ({_brief(e, path)})") from None
    if not isinstance(batch, dict):
        raise _corrupt(path, f"holds a {_describe(batch)}, expected the dict of a CIFAR python batch")
    batch = {k.encode(errors="replace") if isinstance(k, str) else k: v for k, v in batch.items()}
    if b"data" not in batch or label_key not in batch:
        keys = ", ".join(sorted(repr(k) for k in batch))[:200]
        raise _corrupt(path, f"has keys {keys or '(none)'}, expected b'data' and {label_key!r}")
    data = batch[b"data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        raise _corrupt(path, f"b'data' is {_describe(data)}, expected a uint8 array (N, 3072)")
    try:
        labels = np.asarray(batch[label_key])
    except (ValueError, TypeError, OverflowError):
        labels = None
    if labels is None or labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise _corrupt(path, f"{label_key!r} is {_describe(batch[label_key])}, expected a list of integer labels")
    x, y = torch.from_numpy(data.reshape(-1, 3, 32, 32)), torch.from_numpy(labels.astype(np.int64))
    problem = check_split(x, y, (3, 32, 32), num_classes)
    if problem:
        raise _corrupt(path, problem)
    return x, y


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
        batches = [_read_cifar_batch(f, label_key, num_classes) for f in files]
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


# Deflate expands data by at most ~1032x, so a .gz of N bytes cannot hold more than this many times N.
MAX_DEFLATE_RATIO = 1032
_CHUNK = 1 << 24  # read idx payloads in 16 MiB pieces: memory follows what the file holds, not its header


def read_idx(path: Path, item_shape: tuple[int, ...] = ()) -> np.ndarray:
    """Read an idx file (optionally .gz): big-endian header, then unsigned bytes, shape (N, *item_shape).

    The header's sizes are checked against ``item_shape`` and the file's size before anything is read, and
    the payload is read in chunks, so a damaged header cannot make us allocate what the file does not hold.
    """
    gz = path.suffix == ".gz"
    try:
        size = path.stat().st_size
        with (gzip.open if gz else open)(path, "rb") as f:
            dims = _idx_header(path, f, item_shape)
            count, header = math.prod(dims), 4 + 4 * len(dims)
            most = size * MAX_DEFLATE_RATIO if gz else size - header
            if count > most:
                holds = f"can decompress to at most ~{most:,}" if gz else f"holds {most:,}"
                raise _corrupt(path, f"header claims shape {dims} ({count:,} bytes) but the file "
                                     f"({size:,} bytes) {holds}")
            data = bytearray()
            while len(data) < count and (chunk := f.read(min(_CHUNK, count - len(data)))):
                data += chunk
            if len(data) < count:
                raise _corrupt(path, f"truncated: header says shape {dims} ({count:,} bytes) but only "
                                     f"{len(data):,} follow")
            if f.read(1):  # also what makes gzip check the CRC of the whole stream
                raise _corrupt(path, f"more data than its header's shape {dims} says")
    except (OSError, EOFError, zlib.error) as e:  # gzip: BadGzipFile (an OSError), EOFError, zlib.error
        raise _corrupt(path, f"cannot read ({_brief(e, path)})") from None
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _idx_header(path: Path, f, item_shape: tuple[int, ...]) -> tuple[int, ...]:
    head = f.read(4)
    if not head:
        raise _corrupt(path, "empty")
    if len(head) < 4 or head[:2] != b"\0\0":
        gzipped = head[:2] == b"\x1f\x8b"
        raise _corrupt(path, "gzip-compressed but not named .gz" if gzipped else
                       "not an idx file (bad magic number)")
    if head[2] != 0x08:
        raise _corrupt(path, f"idx data type 0x{head[2]:02x}, expected 0x08 (unsigned bytes)")
    ndim = head[3]
    if ndim != 1 + len(item_shape):
        raise _corrupt(path, f"idx header says {ndim} dimensions, expected {1 + len(item_shape)}")
    raw = f.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise _corrupt(path, "truncated inside its header")
    dims = struct.unpack(f">{ndim}I", raw)
    if dims[1:] != item_shape:
        raise _corrupt(path, f"header says items of shape {dims[1:]}, expected {item_shape}")
    return dims


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
        splits = []
        for images, labels in (files[:2], files[2:]):
            x, y = read_idx(images, (28, 28)), read_idx(labels)
            if len(x) != len(y):
                raise UserError(f"{images}: {len(x)} images but {labels.name} has {len(y)} labels; delete both "
                                f"files and run again with data.download: true to fetch fresh copies")
            if len(x) == 0:
                raise _corrupt(images, "holds no images")
            if int(y.max()) >= 10:
                raise _corrupt(labels, f"labels span {int(y.min())}..{int(y.max())}, expected 0..9")
            splits.append((torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y.astype(np.int64))))
        return splits[0], splits[1]

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


def _listing(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as e:  # e.g. a folder we may not read
        raise UserError(f"{folder}: cannot list ({_brief(e, folder)})") from None


def _class_dirs(split_dir: Path) -> list[Path]:
    return [d for d in _listing(split_dir) if d.is_dir()] if split_dir.is_dir() else []


def _imagenette_find(root: Path) -> Optional[list[Path]]:
    for base in (root / IMAGENETTE_DIR, root):
        train, val = _class_dirs(base / "train"), _class_dirs(base / "val")
        if train and [d.name for d in train] == [d.name for d in val]:
            return train + val
    return None


MAX_IMAGE_PIXELS = 50_000_000  # far above any Imagenette image; a header claiming more is damaged


def _load_image(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:  # checked before decoding allocates it
                raise _corrupt(path, f"image header claims {im.width}x{im.height} pixels")
            im = im.convert("RGB")
            scale = size / min(im.size)
            w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
            im = im.resize((w, h), Image.BILINEAR, reducing_gap=None)
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)  # (3, S, S)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL fails on damaged files with OSError, SyntaxError, ValueError, ...
        raise _corrupt(path, f"cannot decode image ({_brief(e, path)})") from None


def _imagenette_decode(class_dirs: list[Path]) -> tuple[Split, Split]:
    from PIL import Image

    half = len(class_dirs) // 2

    def split(dirs: list[Path]) -> Split:
        items = [(p, label) for label, d in enumerate(dirs) for p in _listing(d)
                 if p.suffix.lower() in IMAGE_EXTENSIONS]
        if not items:
            raise UserError(f"{dirs[0].parent}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found")
        pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2)  # PIL decodes without the GIL
        try:
            with warnings.catch_warnings():  # set here, once, for the workers: the filters are process-wide
                # PIL only warns (two lines on stderr) for headers between 1x and 2x its pixel limit.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                images = list(pool.map(lambda it: _load_image(it[0], IMAGENETTE_SIZE), items))
        finally:  # a bad image stops the decode now, not after the other 13,000
            pool.shutdown(wait=True, cancel_futures=True)
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


def warn(message: str) -> None:
    """One line on stderr: something went wrong that costs speed, not the run."""
    print(f"warning: {message}", file=sys.stderr)


STALE_TEMP_S = 3600  # a cache write older than this whose temporary file is still there was killed
# Temporary files of cache writes: atomic_write names them TEMP_PREFIX + the cache file's name + "." + random.
_CACHE_TEMP_RE = re.compile(rf"^{re.escape(TEMP_PREFIX)}[a-z0-9_]+-[0-9a-f]{{16}}\.pt\.")


def _cache_key(name: str, files: list[Path]) -> str:
    h = hashlib.sha1(f"{name}:{CACHE_FORMAT}".encode())
    for f in files:
        st = f.stat()
        # For image folders, a folder's mtime changes when files are added or removed.
        h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _remove_stale_temps(cache_dir: Path) -> None:
    """Best effort: remove what killed cache writes left behind (only our own names, in case the folder is shared)."""
    cutoff = time.time() - STALE_TEMP_S
    try:
        with os.scandir(cache_dir) as entries:
            for e in entries:
                try:
                    if (_CACHE_TEMP_RE.match(e.name) and e.is_file(follow_symlinks=False)
                            and e.stat(follow_symlinks=False).st_mtime < cutoff):
                        os.unlink(e.path)
                except OSError:
                    pass
    except OSError:
        pass


def _read_cache(path: Path, spec: DatasetSpec) -> tuple[Split, Split]:
    """The cached splits, checked against ``spec``; raises ValueError saying why a file is unusable."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged zip or pickle fails in arbitrary ways
        raise ValueError(f"unreadable ({_brief(e, path)})") from None
    keys = ("train_x", "train_y", "val_x", "val_y")
    if not isinstance(blob, dict) or set(blob) != set(keys):
        raise ValueError(f"holds {sorted(blob) if isinstance(blob, dict) else type(blob).__name__}, expected {keys}")
    shape = (spec.in_chans, spec.image_size, spec.image_size)
    for split in ("train", "val"):
        problem = check_split(blob[f"{split}_x"], blob[f"{split}_y"], shape, spec.num_classes)
        if problem:
            raise ValueError(f"{split}: {problem}")
    return (blob["train_x"], blob["train_y"]), (blob["val_x"], blob["val_y"])


def _write_cache(path: Path, train: Split, val: Split) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"train_x": train[0], "train_y": train[1], "val_x": val[0], "val_y": val[1]}
    atomic_write(path, lambda f: torch.save(blob, f))


def _decode_cached(spec: DatasetSpec, files: list[Path], cache_dir: Optional[Path]) -> tuple[Split, Split]:
    """Decoded splits, from ``cache_dir`` when a valid cache file is there. The cache never stops a run: an
    unusable cache file is ignored and replaced, an unwritable folder costs one warning line."""
    if cache_dir is None:
        return _decode(spec, files)
    try:
        path = cache_dir / f"{spec.name}-{_cache_key(spec.name, files)}.pt"
    except OSError:  # a source file vanished since it was found: decoding will say which
        return _decode(spec, files)
    _remove_stale_temps(cache_dir)
    ignored = None
    if path.is_file():
        try:
            return _read_cache(path, spec)
        except ValueError as e:
            ignored = f"ignored the decoded-dataset cache {path}: {e}"
    train, val = _decode(spec, files)
    try:
        _write_cache(path, train, val)
        if ignored:
            warn(f"data.cache_dir: {ignored}; decoded the dataset again and replaced it")
    except (OSError, RuntimeError) as e:  # torch.save reports some write errors as RuntimeError
        reason = "it is a file, not a folder" if cache_dir.is_file() else _brief(e)
        what = f"{ignored}, and cannot replace it" if ignored else f"cannot write the decoded-dataset cache {path}"
        warn(f"data.cache_dir: {what} ({reason}); continuing without it (the next run decodes again)")
    return train, val


def _decode(spec: DatasetSpec, files: list[Path]) -> tuple[Split, Split]:
    train, val = spec.decode(files)
    for split, (x, y) in (("train", train), ("val", val)):
        problem = check_split(x, y, (spec.in_chans, spec.image_size, spec.image_size), spec.num_classes)
        if problem:  # the format readers check their files; this is the last line for all datasets
            raise UserError(f"data.root: {spec.name} {split} split: {problem}; {REFETCH}")
    return train, val


def _cache_folder(cache_dir: Optional[str | Path]) -> Optional[Path]:
    if not cache_dir:
        return None
    try:
        return Path(cache_dir).expanduser()
    except RuntimeError as e:  # ~user that does not exist
        warn(f"data.cache_dir: {cache_dir}: {e}; continuing without a cache")
        return None


def load_data(d) -> ImageData:
    """The dataset a config's ``data`` section describes (``config.schema.DataConfig``)."""
    cache = None
    if d.cache:
        try:
            cache = d.cache_dir or default_cache_dir()
        except RuntimeError as e:  # no home directory for the default cache folder
            warn(f"data.cache_dir: no default cache folder ({e}); set data.cache_dir to use one; "
                 f"continuing without a cache")
    return load_dataset(d.name, d.root, download=d.download, limit_train=d.limit_train, limit_val=d.limit_val,
                        cache_dir=cache)


# Where distributions install datasets: Debian's dataset-fashion-mnist package puts the four idx files in
# /usr/share/datasets/fashion-mnist. Other datasets follow the same rule, <name with - for _>, should a package
# (or an administrator) put them there. The environment variable overrides it (tests point it elsewhere).
SYSTEM_DATASETS = Path("/usr/share/datasets")
SYSTEM_DATASETS_ENV = "VITLAB_SYSTEM_DATASETS"


def system_dir(name: str) -> Path:
    """Where a system-wide copy of dataset ``name`` would be: ``/usr/share/datasets/<name with - for _>``."""
    base = os.environ.get(SYSTEM_DATASETS_ENV) or SYSTEM_DATASETS
    return Path(base) / name.replace("_", "-")


def locate(spec: DatasetSpec, root: Path) -> tuple[Optional[list[Path]], Optional[Path], list[str]]:
    """The dataset's files without downloading: under ``root`` (its own layout or torchvision's, as
    ``spec.find`` knows them), else in the system folder. Returns (files or None, the folder searched that
    had them, a description of every place looked)."""
    looked = []
    for base in dict.fromkeys((root, system_dir(spec.name))):
        files = spec.find(base)
        if files is not None:
            return files, base, looked
        looked.append(spec.expected(base))
    return None, None, looked


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

    Looks under ``root``, then in the system folder (``system_dir``), and only then downloads into ``root``.
    Raises UserError for anything the user can fix: missing files, failed download, corrupt data.
    """
    spec = get_spec(name)
    try:
        root = Path(root).expanduser()
    except RuntimeError as e:  # ~user that does not exist
        raise UserError(f"data.root: {root}: {e}") from None
    files, found_in, looked = locate(spec, root)
    if files is not None and found_in != root:
        print(f"data: {name} not in data.root {root}; using the copy in {found_in}", file=sys.stderr)
    if files is None and download:
        # torchvision opens its URLs without a timeout: a network that drops packets would hang the run.
        # This bounds each socket operation (not the whole download) and is restored right after.
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            root.mkdir(parents=True, exist_ok=True)
            spec.download(root)
        except Exception as e:  # network, disk, checksum: all the user can act on
            raise UserError(f"data.root: {name} not found and the download failed ({_brief(e)}); "
                            f"expected {'; or '.join(looked)}; see README 'Datasets offline'") from None
        finally:
            socket.setdefaulttimeout(previous)
        files = spec.find(root)
        if files is not None:
            print(f"data: {name} downloaded into {root}", file=sys.stderr)
    if files is None:
        hint = "set data.download: true to fetch it, or see README 'Datasets offline'" if not download \
            else "see README 'Datasets offline'"
        raise UserError(f"data.root: {name} not found: expected {'; or '.join(looked)}; {hint}")
    train, val = _decode_cached(spec, files, _cache_folder(cache_dir))
    if limit_train is not None:
        train = (train[0][:limit_train], train[1][:limit_train])
    if limit_val is not None:
        val = (val[0][:limit_val], val[1][:limit_val])
    return ImageData(spec, train, val)
