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

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


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
    scale: tuple[float, float] = (0.35, 1.0),
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


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def normalize(x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """uint8 (or float in [0, 255]) -> float32 standardised per channel (mean/std on the 0-1 scale)."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1) * 255
    inv_std = 1.0 / (torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1) * 255)
    return (x.float() - mean_t) * inv_std


def train_transform(kind: str, image_size: int) -> Transform:
    """The dataset's standard training augmentation, by name."""
    if kind == "crop_flip":
        return lambda x, g: random_hflip(random_crop(x, 4, g), g)
    if kind == "flip":
        return lambda x, g: random_hflip(x, g)
    if kind == "rrc_flip":
        return lambda x, g: random_hflip(random_resized_crop(x, image_size, g), g)
    if kind == "none":
        return lambda x, g: x
    raise ValueError(f"unknown augmentation '{kind}'")
