"""Seed 001's strong augmentation: TrivialAugment (batched), random erasing, MixUp/CutMix."""
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from data.augment import NUM_BINS, TA_OPS, _apply_op, _magnitudes, mixup_cutmix, random_erasing, trivial_augment


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def images(n=6, c=3, size=16, seed=0):
    return torch.randint(0, 256, (n, c, size, size), generator=_gen(seed), dtype=torch.uint8)


@pytest.mark.parametrize("op, factor, reference", [
    ("brightness", 0.4, lambda x: TF.adjust_brightness(x, 1.4)),
    ("brightness", -0.7, lambda x: TF.adjust_brightness(x, 0.3)),
    ("color", 0.5, lambda x: TF.adjust_saturation(x, 1.5)),
    ("contrast", -0.5, lambda x: TF.adjust_contrast(x, 0.5)),
    ("sharpness", 0.8, lambda x: TF.adjust_sharpness(x, 1.8)),
    ("solarize", 128.0, lambda x: TF.solarize(x, 128)),
    ("posterize", 3.0, lambda x: TF.posterize(x, 3)),
    ("autocontrast", 0.0, TF.autocontrast),
    ("equalize", 0.0, TF.equalize),
])
def test_colour_ops_match_torchvision(op, factor, reference):
    x = images()
    ours = _apply_op(x.float(), op, torch.full((len(x),), factor)).round()
    theirs = torch.stack([reference(img) for img in x]).float()  # one image at a time
    assert (ours - theirs).abs().max() <= 1  # rounding differences only


def test_per_image_magnitudes():
    x = images(n=2)
    out = _apply_op(x.float(), "brightness", torch.tensor([0.0, -1.0]))
    assert torch.equal(out[0], x[0].float()) and out[1].abs().sum() == 0


def test_translate_is_an_integer_shift_with_zero_fill():
    x = images(n=1, size=8).float()
    out = _apply_op(x, "translate_x", torch.tensor([2.0]))
    shifted = torch.zeros_like(x)
    shifted[..., 2:] = x[..., :-2]
    assert torch.equal(out, shifted)  # content moves right by 2 px, zeros come in
    down = _apply_op(x, "translate_y", torch.tensor([-3.0]))
    assert torch.equal(down[..., :-3, :], x[..., 3:, :]) and down[..., -3:, :].abs().sum() == 0


@pytest.mark.parametrize("angle", [90.0, -90.0, 30.0])
def test_rotate_matches_torchvision(angle):
    x = images(n=1, size=8).float()
    out = _apply_op(x, "rotate", torch.tensor([angle]))
    assert torch.equal(out, TF.rotate(x, angle))  # counter-clockwise for positive angles, zero fill
    if angle == 90.0:
        assert torch.equal(out, x.rot90(1, (2, 3)))


def test_magnitude_ranges_are_trivialaugment_wide():
    bins = torch.arange(NUM_BINS)
    assert _magnitudes("rotate", bins)[-1] == 135.0 and _magnitudes("translate_x", bins)[-1] == 32.0
    assert _magnitudes("shear_x", bins)[-1] == pytest.approx(0.99)
    assert _magnitudes("posterize", bins)[0] == 8 and _magnitudes("posterize", bins)[-1] == 2
    assert _magnitudes("solarize", bins)[0] == 255 and _magnitudes("solarize", bins)[-1] == 0


def test_trivial_augment_batch():
    x = images(n=256, size=32)
    out = trivial_augment(x, _gen(1))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255 and torch.equal(out, out.round())
    changed = (out != x.float()).flatten(1).any(1).float().mean()
    assert 0.7 < changed < 1.0  # identity (1/14) and zero-magnitude bins leave some images as they were
    assert torch.equal(out, trivial_augment(x, _gen(1)))  # seeded
    assert not torch.equal(out, trivial_augment(x, _gen(2)))
    assert len(TA_OPS) == 14


def test_trivial_augment_grayscale():
    x = images(n=64, c=1, size=28)
    assert trivial_augment(x, _gen(0)).shape == x.shape


def test_random_erasing_boxes():
    x = torch.zeros(200, 3, 32, 32)
    assert torch.equal(random_erasing(x, 0.0, _gen()), x)
    out = random_erasing(x, 1.0, _gen())
    erased = out[:, 0] != 0  # noise is never exactly 0
    assert (erased.flatten(1).any(1)).all()
    for mask in erased[:20]:
        rows, cols = mask.any(1).nonzero().squeeze(1), mask.any(0).nonzero().squeeze(1)
        box = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        assert box.all() and mask.sum() == box.numel()  # one solid rectangle
        assert mask.sum() <= 1 / 3 * 32 * 32 * 1.1
    assert torch.equal(out[:, 0] != 0, out[:, 2] != 0)  # the same box in every channel
    half = random_erasing(x, 0.5, _gen()).flatten(1).ne(0).any(1).float().mean()
    assert 0.35 < half < 0.65


def test_mixup_cutmix_are_torchvisions_and_off_by_default():
    from torchvision.transforms import v2

    assert mixup_cutmix(10) is None
    assert isinstance(mixup_cutmix(10, mixup_alpha=0.8), v2.MixUp)
    assert isinstance(mixup_cutmix(10, cutmix_alpha=1.0), v2.CutMix)
    both = mixup_cutmix(10, mixup_alpha=0.8, cutmix_alpha=1.0)
    assert isinstance(both, v2.RandomChoice) and [type(t) for t in both.transforms] == [v2.MixUp, v2.CutMix]
    assert both.transforms[0].alpha == 0.8 and both.transforms[1].alpha == 1.0


def test_mixup_mixes_with_the_rolled_batch_and_is_seeded():
    x, y = torch.randn(8, 3, 4, 4), torch.arange(8)
    mix = mixup_cutmix(10, mixup_alpha=0.4)
    torch.manual_seed(3)
    mixed, targets = mix(x, y)
    lam = targets[0, 0].item()
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.roll(1, 0))
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    assert targets[0, 7] == pytest.approx(1 - lam)
    torch.manual_seed(3)
    assert torch.equal(mix(x, y)[0], mixed)  # torch.manual_seed fixes it: a run's seed repeats it


def test_cutmix_pastes_a_box_and_weights_by_its_area():
    x, y = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 16, 16).contiguous(), torch.tensor([0, 1, 2, 3])
    mix = mixup_cutmix(4, cutmix_alpha=1.0)
    for seed in range(5):
        torch.manual_seed(seed)
        mixed, targets = mix(x, y)
        from_other = (mixed[0] == 3).float().mean().item()  # image 0 pasted from image 3 (the rolled batch)
        assert set(mixed[0].unique().tolist()) <= {0.0, 3.0}
        assert targets[0, 3].item() == pytest.approx(from_other)
        assert targets[0, 0].item() == pytest.approx(1 - from_other)
