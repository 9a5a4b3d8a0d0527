"""ResNet-18 (He et al.), torchvision's implementation, with the stem chosen for the image size.

``stem="cifar"``: a 3x3 stride-1 first conv and no max-pool, the usual choice
for 32 px inputs (the feature map stays 32x32 into layer1). ``stem="imagenet"``:
torchvision's 7x7 stride-2 conv + 3x3 max-pool. ``"auto"`` picks cifar up to
64 px and imagenet above.
"""
from __future__ import annotations

from typing import Literal

import torch.nn as nn
import torchvision

from models.factory import register_model


@register_model
def resnet18(*, num_classes: int, in_chans: int, image_size: int,
             stem: Literal["auto", "cifar", "imagenet"] = "auto") -> nn.Module:
    """ResNet-18 (torchvision): CIFAR stem (3x3 conv, no max-pool) up to 64 px, standard stem above."""
    if stem not in ("auto", "cifar", "imagenet"):
        raise ValueError(f"stem must be one of auto, cifar, imagenet; got {stem!r}")
    if stem == "auto":
        stem = "cifar" if image_size <= 64 else "imagenet"
    model = torchvision.models.resnet18(num_classes=num_classes)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model
