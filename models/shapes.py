"""Shape checks every patch model shares, ours and timm's: a patch size that does not tile the input, and a
token grid of one patch. Each returns the problem as one sentence naming the sizes and the fix, or None."""
from __future__ import annotations


def tiling_patches(side: int) -> list[int]:
    """The patch sizes that tile a ``side`` x ``side`` input into more than one patch."""
    return [p for p in range(1, side) if side % p == 0]


def patch_problem(patch: int, side: int, what: str = "image", key: str = "model.patch_size",
                  remainder_ok: bool = False) -> str | None:
    """``patch`` x ``patch`` patches over a ``side`` x ``side`` ``what``: None when they tile it into at least
    2x2 patches, else what is wrong and the fix, e.g. ``--set model.patch_size=7`` at 28 px (a 4x4 grid).
    ``remainder_ok``: a grid of at least 2x2 that drops the last few pixels is fine (a ConvMixer's patch 7 at
    160 px, as the ConvMixer-vs-ViT project ran it)."""
    fits = tiling_patches(side)
    fix = (f"--set {key}={min(fits, key=lambda p: (abs(side // p - 4), p))} "
           f"(the sizes that tile it: {', '.join(map(str, fits))})" if fits else f"use inputs larger than {side} px")
    if remainder_ok and 1 <= patch and side // patch >= 2:
        return None
    if patch < 1 or side % patch:
        lost = f", dropping {side % patch} px of each row and column" if 1 <= patch < side else ""
        return f"{key}={patch} does not tile the {side}x{side} {what}{lost}; {fix}"
    if patch == side:
        return f"{key}={patch} makes a token grid of one patch over the {side}x{side} {what}; {fix}"
    return None
