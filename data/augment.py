"""Batched augmentation on uint8 image tensors (B, C, H, W), on whatever device they live.

Each op draws its randomness from an explicit ``torch.Generator`` on the data's
device, so a fixed seed gives the same batches from run to run, and no op
touches PIL or leaves the device.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import equalize  # batched, per image and channel

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

RRC_SCALE = (0.35, 1.0)  # random resized crop: the box's share of the image area


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` and cut a random HxW window per image (torchvision RandomCrop(pad))."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)  # (B, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * padding + 1, (b,), device=x.device, generator=gen)
    dx = torch.randint(0, 2 * padding + 1, (b,), device=x.device, generator=gen)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]  # (B, C, H, W)


def random_hflip(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    flip = torch.rand(x.shape[0], device=x.device, generator=gen) < p
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_resized_crop(
    x: torch.Tensor,
    size: int,
    gen: torch.Generator,
    scale: tuple[float, float] = RRC_SCALE,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Per-image random area/aspect crop resized to ``size`` (bilinear); returns float in [0, 255].

    One sample per image (torchvision retries up to 10 times; clamping the box
    into the image instead keeps it a single batched op).
    """
    b, _, h, w = x.shape
    dev = x.device
    area = torch.empty(b, device=dev).uniform_(*scale, generator=gen)
    log_ratio = torch.empty(b, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    aspect = log_ratio.exp()
    # Box width/height as fractions of the image, clamped so the box fits.
    bw = (area * aspect).sqrt().clamp(max=1.0)
    bh = (area / aspect).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, device=dev, generator=gen) * 2 - 1) * (1 - bw)  # centre in [-1, 1] coords
    cy = (torch.rand(b, device=dev, generator=gen) * 2 - 1) * (1 - bh)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = bw, cx
    theta[:, 1, 1], theta[:, 1, 2] = bh, cy
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def normalize(x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """uint8 (or float in [0, 255]) -> float32 standardised per channel (mean/std on the 0-1 scale)."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1) * 255
    inv_std = 1.0 / (torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1) * 255)
    return (x.float() - mean_t) * inv_std


def train_transform(kind: str, image_size: int, auto_augment: str = "none") -> Transform:
    """The dataset's standard training augmentation, by name, optionally followed by TrivialAugment."""
    base = _base_transform(kind, image_size)
    if auto_augment == "trivialaugment":
        return lambda x, g: trivial_augment(base(x, g), g)
    if auto_augment != "none":
        raise ValueError(f"unknown auto_augment '{auto_augment}'")
    return base


def _base_transform(kind: str, image_size: int) -> Transform:
    if kind == "crop_flip":
        return lambda x, g: random_hflip(random_crop(x, 4, g), g)
    if kind == "flip":
        return lambda x, g: random_hflip(x, g)
    if kind == "rrc_flip":
        return lambda x, g: random_hflip(random_resized_crop(x, image_size, g), g)
    if kind == "none":
        return lambda x, g: x
    raise ValueError(f"unknown augmentation '{kind}'")


# ----------------------------------------------------------------------------- TrivialAugment, batched
#
# TrivialAugmentWide (Müller & Hutter 2021; torchvision's op list and magnitude
# ranges): each image draws one op and one of 31 magnitudes. Images are grouped
# by op and each group runs as one batched tensor op with per-image magnitudes,
# so the cost is ~14 batched ops per batch, on whatever device the data is on.
# Geometric ops act about the image centre and fill with 0.

NUM_BINS = 31
_GRAY = (0.2989, 0.587, 0.114)
TA_OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
          "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
_SIGNED = {"shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color", "contrast",
           "sharpness"}


def _magnitudes(op: str, bins: torch.Tensor) -> torch.Tensor:
    """The op's magnitude for each bin index (float tensor), TrivialAugmentWide's ranges."""
    t = bins.float() / (NUM_BINS - 1)  # 0..1
    if op in ("shear_x", "shear_y", "brightness", "color", "contrast", "sharpness"):
        return 0.99 * t
    if op in ("translate_x", "translate_y"):
        return 32.0 * t  # pixels
    if op == "rotate":
        return 135.0 * t  # degrees
    if op == "posterize":
        return 8 - (bins.float() / ((NUM_BINS - 1) / 6)).round()  # bits kept, 8..2
    if op == "solarize":
        return 255.0 * (1 - t)  # threshold
    return t


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1 - factor) * other).clamp(0, 255)


def _affine(x: torch.Tensor, op: str, m: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    if op == "shear_x":
        theta[:, 0, 1] = m * h / w
    elif op == "shear_y":
        theta[:, 1, 0] = m * w / h
    elif op == "translate_x":  # positive moves the content right/down, as torchvision's affine
        theta[:, 0, 2] = -2 * m / w
    elif op == "translate_y":
        theta[:, 1, 2] = -2 * m / h
    else:  # rotate
        a = torch.deg2rad(m)
        theta[:, 0, 0], theta[:, 0, 1] = a.cos(), -a.sin() * h / w
        theta[:, 1, 0], theta[:, 1, 1] = a.sin() * w / h, a.cos()
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _sharpness_degenerate(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (3x3, centre 5, /13) inside, original pixels on the border."""
    c = x.shape[1]
    k = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    k[1, 1] = 5.0
    k = (k / k.sum()).expand(c, 1, 3, 3)
    out = x.clone()
    out[..., 1:-1, 1:-1] = F.conv2d(x, k, groups=c)
    return out


def _apply_op(x: torch.Tensor, op: str, m: torch.Tensor) -> torch.Tensor:
    """One op on a float (B, C, H, W) batch in [0, 255], magnitude per image (B,)."""
    f = m.view(-1, 1, 1, 1)
    if op in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate"):
        return _affine(x, op, m)
    if op == "brightness":
        return (x * (1 + f)).clamp(0, 255)
    if op == "color":
        return _blend(x, _gray(x), 1 + f)
    if op == "contrast":
        return _blend(x, _gray(x).mean((1, 2, 3), keepdim=True), 1 + f)
    if op == "sharpness":
        return _blend(x, _sharpness_degenerate(x), 1 + f)
    if op == "posterize":
        step = 2.0 ** (8 - f)  # keep the top `bits` bits
        return torch.div(x, step, rounding_mode="floor") * step
    if op == "solarize":
        return torch.where(x >= f, 255 - x, x)
    if op == "autocontrast":
        lo = x.amin((2, 3), keepdim=True)
        hi = x.amax((2, 3), keepdim=True)
        scale = torch.where(hi > lo, 255 / (hi - lo).clamp(min=1e-6), torch.ones_like(hi))
        return torch.where(hi > lo, (x - lo) * scale, x).clamp(0, 255)
    if op == "equalize":
        return equalize(x.round().to(torch.uint8)).float()
    return x  # identity


def trivial_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """TrivialAugmentWide on a batch (uint8, or float in [0, 255]); returns float in [0, 255]."""
    x = x.float().round()
    b = x.shape[0]
    ops = torch.randint(0, len(TA_OPS), (b,), device=x.device, generator=gen)
    bins = torch.randint(0, NUM_BINS, (b,), device=x.device, generator=gen)
    signs = torch.where(torch.rand(b, device=x.device, generator=gen) < 0.5, -1.0, 1.0)
    out = x.clone()
    for i, op in enumerate(TA_OPS[1:], 1):
        chosen = ops == i
        if x.is_cuda:  # every op on the whole batch, then select: no host sync, and the GPU has the headroom
            m = _magnitudes(op, bins) * (signs if op in _SIGNED else 1)
            out = torch.where(chosen.view(-1, 1, 1, 1), _apply_op(x, op, m), out)
            continue
        idx = chosen.nonzero().squeeze(1)  # CPU: only the images that drew the op
        if idx.numel():
            m = _magnitudes(op, bins[idx]) * (signs[idx] if op in _SIGNED else 1)
            out[idx] = _apply_op(x[idx], op, m)
    return out.round()


# ----------------------------------------------------------------------------- random erasing


def random_erasing(x: torch.Tensor, p: float, gen: torch.Generator, scale=(0.02, 1 / 3),
                   ratio=(0.3, 3.3)) -> torch.Tensor:
    """timm's RandomErasing ('pixel' mode) on a normalised float batch: with probability ``p`` per image,
    one rectangle of random area/aspect is replaced by N(0, 1) noise. One box draw per image, clamped to fit."""
    b, c, h, w = x.shape
    dev = x.device
    area = torch.empty(b, device=dev).uniform_(*scale, generator=gen) * h * w
    aspect = torch.empty(b, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen).exp()
    eh = (area * aspect).sqrt().round().clamp(1, h)
    ew = (area / aspect).sqrt().round().clamp(1, w)
    top = (torch.rand(b, device=dev, generator=gen) * (h - eh + 1)).floor()
    left = (torch.rand(b, device=dev, generator=gen) * (w - ew + 1)).floor()
    apply = torch.rand(b, device=dev, generator=gen) < p
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    box = ((rows >= top.view(b, 1, 1)) & (rows < (top + eh).view(b, 1, 1))
           & (cols >= left.view(b, 1, 1)) & (cols < (left + ew).view(b, 1, 1)) & apply.view(b, 1, 1))
    noise = torch.randn(x.shape, device=dev, generator=gen, dtype=x.dtype)
    return torch.where(box.unsqueeze(1), noise, x)


# ----------------------------------------------------------------------------- MixUp / CutMix


def mixup_cutmix(num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
    """torchvision's batch ``MixUp`` / ``CutMix`` (one of them, chosen per batch, when both are on), or None.

    Called as ``images, soft_targets = mix(images, labels)``. Each mixes the batch with itself rolled by one
    and draws its coefficient (and CutMix's box) on the host from torch's global generator, so it needs no
    device sync and is seeded by ``torch.manual_seed``.
    """
    ops = ([v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)] if mixup_alpha > 0 else []) \
        + ([v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)] if cutmix_alpha > 0 else [])
    if not ops:
        return None
    return ops[0] if len(ops) == 1 else v2.RandomChoice(ops)
