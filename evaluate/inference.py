"""A finished run's model at work: its checkpoint evaluated on the validation split (``--eval``), and image
files classified (``--predict``).

``evaluate_run`` measures the way the training loop did: the same device, precision, memory format and
eval batch size, set up by ``prepare`` and measured by ``engine.evaluate``, so best.pt's top-1 equals the
run's recorded ``best_val_acc`` bit for bit (on the machine that trained it; a test checks this). A run
trained with ``torch.compile`` is evaluated in eager mode, whose last bits may differ from compiled code.

``predict_images`` prepares an image file as the dataset's own images are: the dataset's channels
(grayscale or RGB; transparency composited over black, the background of MNIST and Fashion-MNIST),
the shorter side resized to the dataset's size (bilinear) and centre-cropped, the way Imagenette's images
are stored (``data.formats.resize_crop``), then normalised with the dataset's mean and std.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from config import Config
from core.errors import UserError, one_line
from core.status import FINISHED
from data import DatasetSpec, get_spec, load_data
from data.augment import normalize
from data.formats import MAX_IMAGE_PIXELS, chw_array, resize_crop
from evaluate.model import CHOICES, load_model
from train.engine import evaluate
from train.rundir import read_results
from train.setup import Precision, prepare, resolve_device


# ----------------------------------------------------------------------------- --eval


@dataclass
class EvalResult:
    """One checkpoint measured on the validation split. Accuracies in %, loss as the training log has it."""

    run_dir: Path
    checkpoint: Path  # the file evaluated: RUN_DIR/best.pt or RUN_DIR/last.pt
    model: str
    dataset: str
    classes: tuple[str, ...]  # class names by label index
    confusion: torch.Tensor  # int64 (C, C) counts on the CPU: rows = true class, columns = predicted class
    top1: float
    top5: float
    loss: float  # mean cross-entropy (unsmoothed), computed as the training loop's validation loss
    images: int
    device: str
    precision: str  # fp32, bfloat16, float16: the autocast dtype of the forward pass
    channels_last: bool
    batch_size: int
    compiled: bool  # the run trained with torch.compile; this evaluated the eager module
    recorded_acc: Optional[float] = None  # what the run recorded for this checkpoint (None: not known)
    recorded_epoch: Optional[int] = None

    @property
    def support(self) -> list[int]:
        """Validation images per true class."""
        return self.confusion.sum(1).tolist()

    @property
    def per_class(self) -> list[Optional[float]]:
        """Accuracy (%) on each true class; None for a class without validation images."""
        right = self.confusion.diagonal().tolist()
        return [100.0 * r / n if n else None for r, n in zip(right, self.support)]

    @property
    def matches_record(self) -> Optional[bool]:
        return None if self.recorded_acc is None else self.top1 == self.recorded_acc


class _Tap(nn.Module):
    """The model, recording the class it predicts for every image it sees (the argmax ``evaluate`` counts)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.predicted: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        self.predicted.append(logits.argmax(1))
        return logits


def _device(cfg: Config, device: Optional[str | torch.device], path: Path) -> torch.device:
    if device is not None:
        return resolve_device(str(device))
    try:
        return resolve_device(cfg.train.device)
    except UserError:
        raise UserError(f"{path}: trained with train.device: {cfg.train.device}, which is not available here; "
                        f"evaluate it on a machine with CUDA") from None


def _recorded(path: Path, which: str) -> tuple[Optional[float], Optional[int]]:
    """The validation accuracy the run recorded for its ``which`` checkpoint, and the epoch it is from."""
    results = read_results(path) or {}
    if which == "best":
        acc, epoch = results.get("best_val_acc"), results.get("best_epoch")
    elif which == "best_ema":
        acc, epoch = results.get("best_val_acc_ema"), results.get("best_epoch_ema")
    elif results.get("status") in FINISHED:  # otherwise last.pt may have been written mid-epoch
        acc, epoch = results.get("final_val_acc"), results.get("epochs_done")
    else:
        acc, epoch = None, None
    return (float(acc) if isinstance(acc, (int, float)) else None,
            epoch if isinstance(epoch, int) else None)


def evaluate_run(path: str | Path, which: str = "best", *, device: Optional[str | torch.device] = None,
                 progress: bool = False) -> EvalResult:
    """Top-1, top-5, loss, per-class accuracy and the confusion matrix of the run in ``path`` with its
    ``which`` checkpoint ("best", "last" or "best_ema"), on the run's validation split (its ``data.limit_val`` included).
    ``device``: None = where the run trained (``train.device``)."""
    if which not in CHOICES:
        raise UserError(f"--ckpt: got {which!r}; valid: {', '.join(CHOICES)}")
    path = Path(path).expanduser()
    cfg, model, file = load_model(path, which)
    dev = _device(cfg, device, path)
    data = load_data(cfg.data).to(dev)
    # Eager even if the run compiled: compiling costs minutes, and the weights are the same.
    # No weight EMA either: nothing trains here.
    eager = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile="off", ema_decay=0.0))
    s = prepare(eager, model, data, dev)
    tap = _Tap(s.module)
    labels: list[torch.Tensor] = []

    def batches() -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        for images, y in s.val_loader:
            labels.append(y)
            yield images, y

    measured = evaluate(dataclasses.replace(s, eval_model=tap), batches(), top5=True, progress=progress)
    n = data.spec.num_classes
    true, predicted = torch.cat(labels), torch.cat(tap.predicted)
    confusion = torch.bincount(true * n + predicted, minlength=n * n).view(n, n).cpu()
    assert int(confusion.sum()) == len(true)
    acc, epoch = _recorded(path, which)
    return EvalResult(
        run_dir=path, checkpoint=file, model=cfg.model.name, dataset=cfg.data.name,
        classes=tuple(data.spec.class_name(k) for k in range(n)), confusion=confusion,
        top1=measured["val_acc"], top5=measured["val_top5"], loss=measured["val_loss"], images=len(true),
        device=str(dev), precision=str(s.precision), channels_last=s.channels_last,
        batch_size=cfg.train.eval_batch_size, compiled=cfg.train.compile != "off",
        recorded_acc=acc, recorded_epoch=epoch,
    )


def format_eval(r: EvalResult) -> str:
    """What ``--eval`` prints: the setting, top-1/top-5/loss, the check against the run's record, the
    per-class table."""
    layout = ", channels_last" if r.channels_last else ""
    lines = [f"{r.checkpoint}: {r.model} on {r.dataset}, {r.images:,} validation images, "
             f"{r.device} ({r.precision}{layout}, batch {r.batch_size})",
             f"top-1 {r.top1:.2f}%  top-5 {r.top5:.2f}%  loss {r.loss:.4f}"]
    if r.recorded_acc is not None:
        at = f" at epoch {r.recorded_epoch}" if r.recorded_epoch is not None else ""
        same = "the same" if r.matches_record else f"differs by {r.top1 - r.recorded_acc:+.4f} points"
        lines.append(f"the run recorded {r.recorded_acc:.2f}%{at} for {r.checkpoint.name}: {same}")
    if r.compiled:
        lines.append("note: the run trained with torch.compile; evaluated in eager mode (the last bits may differ)")
    width = max(len("class"), *(len(c) for c in r.classes))
    lines.append(f"  {'class':<{width}}  {'images':>7}  {'accuracy':>8}")
    for name, n, acc in zip(r.classes, r.support, r.per_class):
        lines.append(f"  {name:<{width}}  {n:>7,}  {'-' if acc is None else f'{acc:.2f}%':>8}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- --predict


@dataclass
class Prediction:
    image: Path
    top: list[tuple[int, str, float]]  # (class index, class name, probability in [0, 1]), most probable first


SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _convert(im, mode: str):
    """``im`` in ``mode`` ("L" or "RGB"), from any PIL mode."""
    from PIL import Image

    if im.mode in SIXTEEN_BIT_GREY:  # convert("L") would clip these at 255; scale 0..65535 to 0..255 instead
        grey = np.clip(np.rint(np.asarray(im, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        im = Image.fromarray(grey, "L")
    if im.has_transparency_data:  # RGBA, LA, PA, a palette or grey image with a transparent colour
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return im if im.mode == mode else im.convert(mode)


def load_image(path: str | Path, spec: DatasetSpec) -> torch.Tensor:
    """An image file (PNG, JPEG, ... of any size and mode) as one of ``spec``'s images: uint8
    (in_chans, image_size, image_size). Anything unreadable is a one-line ``UserError`` naming the file."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such image file")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size check below says it
            with Image.open(path) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:  # checked before decoding allocates it
                    raise UserError(f"{path}: {im.width}x{im.height} pixels; at most {MAX_IMAGE_PIXELS:,} are read")
                im = ImageOps.exif_transpose(im)  # photos stored sideways with an orientation tag
                pixels = chw_array(resize_crop(_convert(im, "L" if spec.in_chans == 1 else "RGB"), spec.image_size))
    except UserError:
        raise
    except UnidentifiedImageError:
        raise UserError(f"{path}: not an image file (or a format PIL cannot read)") from None
    except Exception as e:  # noqa: BLE001 - PIL fails on damaged files with OSError, SyntaxError, ValueError, ...
        raise UserError(f"{path}: cannot decode image ({one_line(e, limit=150)})") from None
    return torch.from_numpy(np.ascontiguousarray(pixels))  # (C, S, S)


@torch.inference_mode()
def predict_images(path: str | Path, images: Sequence[str | Path], which: str = "best", top: int = 5, *,
                   device: Optional[str | torch.device] = None) -> list[Prediction]:
    """The ``top`` most probable classes (softmax) the run's ``which`` checkpoint gives each image file, on the
    run's device, precision and memory format (``device``: None = where the run trained)."""
    if which not in CHOICES:
        raise UserError(f"--ckpt: got {which!r}; valid: {', '.join(CHOICES)}")
    if top < 1:
        raise UserError(f"--top: got {top}; must be at least 1")
    path = Path(path).expanduser()
    cfg, model, _ = load_model(path, which)
    spec = get_spec(cfg.data.name)
    pixels = torch.stack([load_image(p, spec) for p in images])  # every file read before the model runs
    dev = _device(cfg, device, path)
    layout = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model.to(dev, memory_format=layout).eval()
    precision = Precision.for_device(dev, cfg.train.precision)
    k = min(top, spec.num_classes)
    out = []
    for start in range(0, len(pixels), cfg.train.eval_batch_size):
        x = normalize(pixels[start:start + cfg.train.eval_batch_size].to(dev), spec.mean, spec.std)
        with precision.autocast():
            logits = model(x.contiguous(memory_format=layout))
        probs, classes = logits.float().softmax(1).topk(k, dim=1)
        for p, c in zip(probs.tolist(), classes.tolist()):
            out.append([(ci, spec.class_name(ci), pi) for ci, pi in zip(c, p)])
    return [Prediction(Path(p), t) for p, t in zip(images, out)]


def format_predictions(predictions: Sequence[Prediction]) -> str:
    """What ``--predict`` prints: each file, then one line per class, "  87.3%  ankle boot"."""
    lines = []
    for pred in predictions:
        lines.append(str(pred.image))
        lines += [f"  {100 * p:5.1f}%  {name}" for _, name, p in pred.top]
    return "\n".join(lines)
