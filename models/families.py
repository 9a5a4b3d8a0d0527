"""The model families, in the words people search for: what ``--list-models`` groups by, and what a family
word given as ``model.name`` (``hybrid``, ``cnn``, ``resnet``) is answered with. No torch, no model imports."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    title: str  # as --list-models prints it
    modules: tuple[str, ...]  # the model files (models/<module>.py) whose models belong to it
    words: tuple[str, ...]  # what someone may type as model.name meaning the family (never a model's name)
    note: str = ""  # one line under the title


FAMILIES = (
    Family("CNN", ("simple_cnn", "mnist_cnn", "vgg"), ("cnn", "cnns", "convnet")),
    Family("hybrid CNN+Transformer", ("cnn_transformer",),
           ("hybrid", "hybrids", "cnn_tr", "cnn+transformer", "cnn-transformer", "transformer")),
    Family("ViT", ("vit", "deepvit"), ("vits", "vision_transformer", "transformer", "deit", "deepvits"),
           "for 28 px inputs (MNIST, Fashion-MNIST): vit_mini_patchnorm, patch 7, 16 tokens"),
    Family("conv-stem ViT hybrid", ("conv_stem_vit",), ("hybrid", "hybrids", "convstem", "conv_stem", "convstem_vit")),
    Family("ConvMixer", ("convmixer",), ("convmixers", "mixer")),
    Family("ResNet", ("resnet",), ("resnet", "resnets"), "more from timm: timm/resnet10t, timm/resnet34, ..."),
)
TIMM_WORDS = ("timm",)


def family_of(module: str) -> Family:
    """The family of the models defined in ``module`` (``models.vit`` or ``vit``)."""
    short = module.rsplit(".", 1)[-1]
    for family in FAMILIES:
        if short in family.modules:
            return family
    raise LookupError(f"models/{short}.py is in no family of models/families.py; add it to one")


def families_named(word: str) -> list[Family]:
    """The families ``word`` (as typed: any case, - or _) stands for; [] for a word that names none."""
    key = word.strip().lower().replace("-", "_")
    return [f for f in FAMILIES if key in {w.replace("-", "_") for w in f.words}]
