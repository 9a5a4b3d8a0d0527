"""Readers of the official on-disk formats: CIFAR python batches, idx files (MNIST family, optionally .gz)
and folders of image files (one folder per class, Imagenette's layout).

Every reader treats its file as untrusted: sizes in headers are checked against the file's real size before
anything is allocated, pickles are read with an unpickler that can only build numpy arrays, and what a reader
returns is checked (shape, dtype, label range). Anything wrong is a one-line ``UserError`` naming the file.
"""
from __future__ import annotations

import codecs
import gzip
import io
import math
import os
import pickle
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from core.errors import UserError
from data.problems import brief, corrupt, describe
from data.specs import Split, check_split

if TYPE_CHECKING:  # PIL is imported where an image is read: most runs never need it
    import PIL.Image

# ----------------------------------------------------------------------------- CIFAR python batches


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


def read_cifar_batch(path: Path, label_key: bytes, num_classes: int) -> Split:
    """One CIFAR python batch: images uint8 (N, 3, 32, 32) and the labels under ``label_key``, checked."""
    try:
        # From memory, not the file: a corrupted length field then fails as truncated data instead of
        # asking the file object for gigabytes.
        raw = path.read_bytes()
    except OSError as e:
        raise corrupt(path, f"cannot read ({brief(e, path)})") from None
    try:
        batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - a damaged pickle fails in arbitrary ways; all mean the same here
        raise corrupt(path, f"not a readable CIFAR python batch ({brief(e, path)})") from None
    if not isinstance(batch, dict):
        raise corrupt(path, f"holds a {describe(batch)}, expected the dict of a CIFAR python batch")
    batch = {k.encode(errors="replace") if isinstance(k, str) else k: v for k, v in batch.items()}
    if b"data" not in batch or label_key not in batch:
        keys = ", ".join(sorted(repr(k) for k in batch))[:200]
        raise corrupt(path, f"has keys {keys or '(none)'}, expected b'data' and {label_key!r}")
    data = batch[b"data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        raise corrupt(path, f"b'data' is {describe(data)}, expected a uint8 array (N, 3072)")
    try:
        labels = np.asarray(batch[label_key])
    except (ValueError, TypeError, OverflowError):
        labels = None
    if labels is None or labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise corrupt(path, f"{label_key!r} is {describe(batch[label_key])}, expected a list of integer labels")
    x, y = torch.from_numpy(data.reshape(-1, 3, 32, 32)), torch.from_numpy(labels.astype(np.int64))
    problem = check_split(x, y, (3, 32, 32), num_classes)
    if problem:
        raise corrupt(path, problem)
    return x, y


# ----------------------------------------------------------------------------- idx files

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
                raise corrupt(path, f"header claims shape {dims} ({count:,} bytes) but the file "
                                    f"({size:,} bytes) {holds}")
            data = bytearray()
            while len(data) < count and (chunk := f.read(min(_CHUNK, count - len(data)))):
                data += chunk
            if len(data) < count:
                raise corrupt(path, f"truncated: header says shape {dims} ({count:,} bytes) but only "
                                    f"{len(data):,} follow")
            if f.read(1):  # also what makes gzip check the CRC of the whole stream
                raise corrupt(path, f"more data than its header's shape {dims} says")
    except (OSError, EOFError, zlib.error) as e:  # gzip: BadGzipFile (an OSError), EOFError, zlib.error
        raise corrupt(path, f"cannot read ({brief(e, path)})") from None
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _idx_header(path: Path, f, item_shape: tuple[int, ...]) -> tuple[int, ...]:
    head = f.read(4)
    if not head:
        raise corrupt(path, "empty")
    if len(head) < 4 or head[:2] != b"\0\0":
        gzipped = head[:2] == b"\x1f\x8b"
        raise corrupt(path, "gzip-compressed but not named .gz" if gzipped else
                      "not an idx file (bad magic number)")
    if head[2] != 0x08:
        raise corrupt(path, f"idx data type 0x{head[2]:02x}, expected 0x08 (unsigned bytes)")
    ndim = head[3]
    if ndim != 1 + len(item_shape):
        raise corrupt(path, f"idx header says {ndim} dimensions, expected {1 + len(item_shape)}")
    raw = f.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise corrupt(path, "truncated inside its header")
    dims = struct.unpack(f">{ndim}I", raw)
    if dims[1:] != item_shape:
        raise corrupt(path, f"header says items of shape {dims[1:]}, expected {item_shape}")
    return dims


def read_idx_split(images: Path, labels: Path, item_shape: tuple[int, int], num_classes: int) -> Split:
    """A split from an idx file of images (N, *item_shape) and one of labels (N,) in [0, num_classes):
    images uint8 (N, 1, *item_shape), labels int64 (N,)."""
    x, y = read_idx(images, item_shape), read_idx(labels)
    if len(x) != len(y):
        raise UserError(f"{images}: {len(x)} images but {labels.name} has {len(y)} labels; delete both "
                        f"files and run again with data.download: true to fetch fresh copies")
    if len(x) == 0:
        raise corrupt(images, "holds no images")
    if int(y.max()) >= num_classes:
        raise corrupt(labels, f"labels span {int(y.min())}..{int(y.max())}, expected 0..{num_classes - 1}")
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


# ----------------------------------------------------------------------------- folders of image files

IMAGE_EXTENSIONS = {".jpeg", ".jpg", ".png"}
MAX_IMAGE_PIXELS = 50_000_000  # far above any Imagenette image; a header claiming more is damaged


def listing(folder: Path) -> list[Path]:
    """The folder's entries, sorted; a folder that cannot be listed is a UserError."""
    try:
        return sorted(folder.iterdir())
    except OSError as e:  # e.g. a folder we may not read
        raise UserError(f"{folder}: cannot list ({brief(e, folder)})") from None


def class_folders(split_dir: Path) -> list[Path]:
    """The sub-folders of ``split_dir`` (one per class, in label order); none if it is not a folder."""
    return [d for d in listing(split_dir) if d.is_dir()] if split_dir.is_dir() else []


def resize_crop(im: PIL.Image.Image, size: int) -> PIL.Image.Image:
    """``im`` with its shorter side resized to ``size`` (bilinear), then its centre ``size`` x ``size``: how
    Imagenette's images are stored. The image's mode is kept."""
    from PIL import Image

    scale = size / min(im.size)
    w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
    im = im.resize((w, h), Image.BILINEAR, reducing_gap=None)
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def chw_array(im: PIL.Image.Image) -> np.ndarray:
    """An "L" or "RGB" PIL image as a writable uint8 array (C, H, W): (1, H, W) or (3, H, W)."""
    pixels = np.array(im, dtype=np.uint8)  # a copy: np.asarray of a PIL image is read-only
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def load_image(path: Path, size: int) -> np.ndarray:
    """An image file as uint8 (3, size, size): RGB, ``resize_crop``-ed. A damaged file is a UserError."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:  # checked before decoding allocates it
                raise corrupt(path, f"image header claims {im.width}x{im.height} pixels")
            return chw_array(resize_crop(im.convert("RGB"), size))  # (3, S, S)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL fails on damaged files with OSError, SyntaxError, ValueError, ...
        raise corrupt(path, f"cannot decode image ({brief(e, path)})") from None


def read_image_folders(class_dirs: list[Path], size: int) -> Split:
    """The images (``IMAGE_EXTENSIONS``) in ``class_dirs`` as a split, labelled by folder index: uint8
    (N, 3, size, size), decoded on all cores. A folder without images or a damaged image is a UserError."""
    from PIL import Image

    items = [(p, label) for label, d in enumerate(class_dirs) for p in listing(d)
             if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not items:
        raise UserError(f"{class_dirs[0].parent}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found")
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2)  # PIL decodes without the GIL
    try:
        with warnings.catch_warnings():  # set here, once, for the workers: the filters are process-wide
            # PIL only warns (two lines on stderr) for headers between 1x and 2x its pixel limit.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            images = list(pool.map(lambda it: load_image(it[0], size), items))
    finally:  # a bad image stops the decode now, not after the other 13,000
        pool.shutdown(wait=True, cancel_futures=True)
    return torch.from_numpy(np.stack(images)), torch.tensor([label for _, label in items])
