"""The model zoo, timm-style: every registered model on its default input layout and on small inputs of the others
(forward shape, finite output, a gradient for every parameter), exact parameter counts, attention maps, and checks
against the torch / torchvision objects the models are built from."""
import functools
import inspect
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import StochasticDepth

from core.errors import UserError
from models import DATASET_KEYS, MODELS, build_model, create_model, list_models

# (num_classes, in_chans, image_size) of the datasets named as a model's default_dataset (cifar10 when unset).
# Spelled out here so that these tests do not depend on the data package.
LAYOUTS = {"mnist": (10, 1, 28), "cifar10": (10, 3, 32), "imagenette": (10, 3, 160)}
MNIST, CIFAR10, CIFAR100, IMAGENETTE = LAYOUTS["mnist"], LAYOUTS["cifar10"], (100, 3, 32), LAYOUTS["imagenette"]

# 160 px beyond the models made for it only where it exercises a code path of its own and is cheap:
# ResNet-18 switches to its ImageNet stem (7x7 stride-2 conv + max-pool) above 64 px.
ALSO_AT_160 = {"resnet18"}

# Fixed-patch models whose patch cannot tile these inputs: a config error, not a crash.
UNSUPPORTED = [("vit_mini_patch16_160", MNIST), ("vit_mini_patchnorm", IMAGENETTE),
               ("deepvit_mini_patchnorm", IMAGENETTE)]


def default_layout(name):
    return LAYOUTS[MODELS.meta(name).get("default_dataset", "cifar10")]


def make(name, layout=CIFAR10, **kwargs):
    num_classes, in_chans, image_size = layout
    return create_model(name, num_classes=num_classes, in_chans=in_chans, image_size=image_size, **kwargs)


@functools.lru_cache(maxsize=None)
def default_model(name):
    """``name`` on its default layout, in eval mode, built once for the tests that only read it."""
    torch.manual_seed(0)
    return make(name, default_layout(name)).eval()


@functools.lru_cache(maxsize=None)
def _n_params(name, layout, kwargs):
    """Counted on the meta device: the same modules and shapes, without allocating or initialising 11 M weights."""
    with torch.device("meta"):
        model = make(name, layout, **dict(kwargs))
    return sum(p.numel() for p in model.parameters())


def n_params(name, layout=CIFAR10, **kwargs):
    return _n_params(name, layout, tuple(sorted(kwargs.items())))


def cases():
    """Every model on its default layout, then on 1x28 and 3x32 inputs, and on 3x160 where it is cheap."""
    out = []
    for name in list_models():
        layouts = [default_layout(name), MNIST, CIFAR10]
        if name in ALSO_AT_160:
            layouts.append(IMAGENETTE)
        for layout in dict.fromkeys(layouts):  # unique, in order
            if (name, layout) not in UNSUPPORTED:
                out.append(pytest.param(name, layout, id=f"{name}-{layout[1]}x{layout[2]}"))
    return out


@pytest.mark.parametrize("name, layout", cases())
def test_forward_backward(name, layout):
    _, in_chans, image_size = layout
    num_classes = 7  # not 10, so a hard-coded class count shows
    torch.manual_seed(0)
    model = make(name, (num_classes, in_chans, image_size))
    x = torch.randn(2, in_chans, image_size, image_size)
    with torch.no_grad():
        out = model(x)  # training mode: dropout, stochastic depth, batch statistics
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    # Gradients in eval mode, where stochastic depth cannot drop a whole branch for the batch.
    model.eval()
    model(x[:1]).logsumexp(1).mean().backward()  # one image: the gradients reach every parameter all the same
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("name, layout", UNSUPPORTED)
def test_unsupported_layouts_are_user_errors(name, layout):
    with pytest.raises(UserError, match="patch"):
        make(name, layout)


def test_registration_style():
    """One style: a keyword-only builder function per name, documented, with the dataset keys; no provenance names."""
    for name in list_models():
        builder = MODELS.get(name)
        assert inspect.isfunction(builder) and builder.__name__ == name, name
        params = inspect.signature(builder).parameters
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values()), name
        assert set(DATASET_KEYS) <= set(params), name
        assert (builder.__doc__ or "").strip().splitlines()[0], name
        assert "seed" not in name and MODELS.meta(name).get("default_dataset", "cifar10") in LAYOUTS


# ----------------------------------------------------------------------------- parameter counts


# Every model on its default layout; the derivations of the key counts follow.
PARAMS = {
    "simple_cnn": 431_594, "simple_cnn_huge": 483_242, "vgg_cifar": 4_694_346, "mnist_cnn": 1_626_442,
    "cnn_transformer": 532_138, "cnn_tr_small": 498_666, "cnn_tr_medium": 532_138, "cnn_tr_large": 565_610,
    "cnn_tr_huge": 1_804_202,
    "vit": 2_697_610, "deepvit": 2_699_122, "vit_tiny_patch2_32": 2_727_562, "vit_mini_patch4_32": 1_205_898,
    "vit_mini_patchnorm": 1_202_410, "deepvit_mini_patchnorm": 1_202_554, "convstem_vit_mini": 1_615_562,
    "vit_mini_patch16_160": 1_302_666,
    "convmixer": 594_186, "convmixer_256_8_ks5_p2": 594_186, "convmixer_256_12_ks7_p7": 996_362,
    "resnet18": 11_173_962,
}


def test_every_model_has_a_pinned_parameter_count():
    assert set(PARAMS) == set(list_models())
    counts = {name: n_params(name, default_layout(name)) for name in list_models()}
    assert counts == PARAMS


def encoder_block_params(d, ff):
    return (4 * d * d + 4 * d) + (d * ff + ff + ff * d + d) + 2 * 2 * d  # attention, feed-forward, two LayerNorms


def test_cnn_and_cnn_transformer_parameter_counts():
    # The original summary printed 482,218 for CNN-TR-Medium, missing the 3 x 16,640 attention projection
    # parameters (nn.MultiheadAttention's fused in_proj); the true count is 532,138.
    assert n_params("cnn_tr_medium") == 482_218 + 3 * 16_640 == 532_138
    assert n_params("simple_cnn") == 430_944 + 650  # conv/BN parameters + the 64 -> 10 head
    # Huge: last 1x1 conv 256 -> 256 instead of 256 -> 64, and a 256-wide head.
    assert n_params("simple_cnn_huge") == n_params("simple_cnn") + (256 * 256 + 256 + 512) - (256 * 64 + 64 + 128) \
        + (256 * 10 - 64 * 10)
    block = encoder_block_params(64, 128)
    assert block == 33_472
    assert n_params("cnn_tr_small") == n_params("cnn_tr_medium") - block
    assert n_params("cnn_tr_large") == n_params("cnn_tr_medium") + block
    cnn_huge = n_params("simple_cnn_huge") - (256 * 10 + 10)  # without its head
    assert n_params("cnn_tr_huge") == cnn_huge + 4 * encoder_block_params(256, 128) + 2 * 256 + (256 * 10 + 10)
    # The sweep knobs change exactly what they say.
    assert n_params("cnn_transformer", num_layers=6) == n_params("cnn_tr_medium") + 3 * block
    assert n_params("cnn_transformer", cnn_channels=128, num_heads=4) == n_params("cnn_transformer") \
        + 3 * (encoder_block_params(128, 128) - block) + 64 * (256 + 1 + 2) + 64 * 2 + 64 * 10  # blocks, CNN, norm, fc


def test_vit_parameter_counts():
    # The patch-2 ViT's reported summary: 2,725,632 without the head; + 192 x 10 + 10 for CIFAR-10.
    assert n_params("vit_tiny_patch2_32") == 2_725_632 + 1_930
    # DeepViT adds an H x H head-mixing matrix and a LayerNorm(H) per block: 6 x (16 + 8) = 144 for the mini ones.
    for layout in (MNIST, CIFAR10, CIFAR100):
        assert n_params("deepvit_mini_patchnorm", layout) - n_params("vit_mini_patchnorm", layout) == 144
    assert n_params("deepvit") - n_params("vit") == 9 * (12 * 12 + 2 * 12)
    # vit-pytorch sized the position table from image_size (784 or 1024 rows for a ViT with patch 14 or 16; 144 or
    # 196 for the conv-stem ViT) and sliced it to the 4 real patches; its conv-stem ViT also had a 100-way head.
    # The reported counts are ours plus those unused rows.
    unused_rows = lambda image_size, patch: ((image_size // patch) ** 2 + 1 - 5) * 128  # noqa: E731
    assert n_params("vit_mini_patchnorm", MNIST, patch_size=14) + unused_rows(784, 14) == 1_614_866
    assert n_params("vit_mini_patchnorm", CIFAR10, patch_size=16) + unused_rows(1024, 16) == 1_812_106
    head100 = (100 - 10) * 129
    assert n_params("convstem_vit_mini", MNIST) + unused_rows(144, 6) + head100 == 1_591_652
    assert n_params("convstem_vit_mini", CIFAR10) + unused_rows(196, 7) + head100 == 1_727_012
    # With patch 7 at 28 px and 4 at 32 px every position embedding is used.
    assert n_params("vit_mini_patchnorm", MNIST) == 1_196_396


def test_cnn_baseline_parameter_counts():
    # pytorch/examples' MNIST CNN, as reported.
    assert n_params("mnist_cnn", MNIST) == 1_199_882
    assert n_params("mnist_cnn", CIFAR10) == 1_626_442
    assert n_params("mnist_cnn", CIFAR100) == 1_638_052
    assert n_params("convmixer_256_8_ks5_p2") == 594_186  # the ConvMixer paper's 0.59M
    assert n_params("resnet18") == 11_173_962  # the usual CIFAR ResNet-18
    # The standard stem's 7x7 conv has 64 * 3 * (49 - 9) more weights than the CIFAR stem's 3x3.
    assert n_params("resnet18", IMAGENETTE) - n_params("resnet18") == 64 * 3 * 40


# ----------------------------------------------------------------------------- registry and user errors


def test_named_sizes_cannot_be_resized():
    with pytest.raises(UserError,
                       match=r"model.num_layers: not a parameter of model 'cnn_tr_medium'; accepted: dropout"):
        make("cnn_tr_medium", num_layers=6)


@pytest.mark.parametrize("name, kwargs, message", [
    ("cnn_transformer", {"num_heads": 3}, "num_heads=3 does not divide the token width cnn_channels=64"),
    ("cnn_transformer", {"num_layers": 0}, "num_layers must be at least 1"),
    ("cnn_transformer", {"dropout": 1.5}, "dropout must be in [0, 1)"),
    ("cnn_transformer", {"num_layer": 2},
     "model.num_layer: not a parameter of model 'cnn_transformer' (did you mean 'num_layers'?)"),
    ("cnn_transformer", {"num_layers": "3"}, "model.num_layers: expected an integer, got '3' (str)"),
    ("vit", {"qkv_bias": "false"}, "model.qkv_bias: expected true or false, got 'false' (str)"),
    ("vit", {"embed_dim": 0}, "embed_dim must be at least 1, got 0"),
    ("vit", {"mlp_ratio": -1.0}, "mlp_ratio must give an MLP at least 1 wide"),
    ("vit", {"patch_size": 5}, "model.patch_size=5 does not tile the 32x32 image, dropping 2 px of each row and column; --set model.patch_size=8"),
    ("vit", {"patch_size": 32}, "model.patch_size=32 makes a token grid of one patch over the 32x32 image; --set model.patch_size=8"),
    ("vit", {"num_heads": 5}, "num_heads=5 does not divide embed_dim=192"),
    ("vit", {"drop_path": 1.0}, "drop_path must be in [0, 1)"),
    ("deepvit", {"depth": 0}, "depth must be at least 1"),
    ("convmixer", {"patch_size": 64}, "model.patch_size=64 does not tile the 32x32 image; --set model.patch_size=8"),
    ("convmixer", {"patch_size": 17}, "model.patch_size=17 does not tile the 32x32 image, dropping 15 px"),
    ("resnet18", {"stem": "tiny"}, "model.stem: got 'tiny'; valid: auto, cifar, imagenet"),
])
def test_architecture_errors_are_user_errors(name, kwargs, message):
    with pytest.raises(UserError) as info:
        make(name, **kwargs)
    assert message in str(info.value)


def test_image_size_must_fit_the_cnn():
    with pytest.raises(UserError, match="not divisible by the CNN's downsampling factor 4"):
        make("simple_cnn", (10, 3, 30))


def test_unknown_model_lists_choices():
    with pytest.raises(UserError) as info:
        make("cnn_tr_medum")
    assert "did you mean 'cnn_tr_medium'" in str(info.value) and "simple_cnn" in str(info.value)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="registered twice"):
        MODELS.register(lambda **kw: None, name="simple_cnn")


def test_build_model_checks_the_config_and_leaves_seeding_to_the_caller():
    spec = SimpleNamespace(num_classes=10, in_chans=3, image_size=32)
    cfg = lambda name, **kwargs: SimpleNamespace(model=SimpleNamespace(name=name, kwargs=kwargs))  # noqa: E731
    torch.manual_seed(1)
    a = build_model(cfg("cnn_tr_small", dropout=0.2), spec)
    torch.manual_seed(1)
    b = make("cnn_tr_small", dropout=0.2)
    c = build_model(cfg("cnn_tr_small", dropout=0.2), spec)  # the RNG has moved on: different weights
    assert a.blocks[0].drop1.p == 0.2
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.blocks[0].linear1.weight, c.blocks[0].linear1.weight)
    with pytest.raises(UserError, match=r"model.depth: not a parameter of model 'cnn_tr_small'; accepted: dropout"):
        build_model(cfg("cnn_tr_small", depth=2), spec)
    with pytest.raises(UserError, match="model.num_classes: set by the dataset, not the config"):
        build_model(cfg("cnn_tr_small", num_classes=5), spec)
    with pytest.raises(UserError, match="model.name: unknown model 'vit_seed003'"):
        build_model(cfg("vit_seed003"), spec)


# ----------------------------------------------------------------------------- plain PyTorch pieces


def test_every_dropout_is_an_nn_dropout_module(monkeypatch):
    """Swapping the nn.Dropout modules replaces every dropout: no functional dropout, no custom class."""
    calls = []

    class Recorder(nn.Dropout):
        def forward(self, x):
            calls.append(self.p)
            return x

    def forbidden(*args, **kwargs):
        raise AssertionError("dropout outside an nn.Dropout module")

    for name in ("cnn_tr_small", "vit_mini_patch4_32", "deepvit_mini_patchnorm", "convstem_vit_mini", "mnist_cnn"):
        model = make(name).train()
        drops = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Dropout)]
        assert drops and all(type(m) is nn.Dropout for _, m in drops), name
        assert not [n for n, m in model.named_modules() if "drop" in type(m).__name__.lower()
                    and type(m) not in (nn.Dropout, StochasticDepth)], name
        for module_name, m in drops:
            parent = model.get_submodule(module_name.rpartition(".")[0])
            setattr(parent, module_name.rpartition(".")[2], Recorder(m.p))
        calls.clear()
        with monkeypatch.context() as mp:
            for fn in ("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"):
                mp.setattr(F, fn, forbidden)
            model(torch.randn(2, 3, 32, 32))
        assert calls and all(p > 0 for p in calls), name


def test_stochastic_depth_is_torchvision_row_mode_growing_linearly():
    for name, kwargs, depth, top in (("vit_tiny_patch2_32", {}, 9, 0.1), ("vit_mini_patch4_32", {}, 6, 0.0),
                                     ("vit", {"drop_path": 0.3, "depth": 4}, 4, 0.3)):
        model = make(name, **kwargs)
        assert len(model.blocks) == depth
        for i, block in enumerate(model.blocks):
            assert type(block.drop_path) is StochasticDepth and block.drop_path.mode == "row"
            assert block.drop_path.p == pytest.approx(top * i / (depth - 1))
    # Row mode: whole samples' branches are dropped, the kept ones rescaled.
    sd = make("vit", drop_path=0.5, depth=2).blocks[1].drop_path.train()
    torch.manual_seed(0)
    y = sd(torch.ones(4000, 3, 5))
    per_row = y.flatten(1)
    assert ((per_row == 0).all(1) | (per_row == 2).all(1)).all() and 0.45 < (per_row[:, 0] == 0).float().mean() < 0.55


def sdpa_calls(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        calls.append(kwargs.get("dropout_p", 0.0))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return calls


@pytest.mark.parametrize("name, depth, p", [("vit_mini_patch4_32", 6, 0.1), ("cnn_tr_small", 2, 0.1),
                                            ("convstem_vit_mini", 6, 0.1), ("deepvit_mini_patchnorm", 6, 0.1)])
def test_attention_runs_through_sdpa_unless_the_maps_are_needed_or_dropped_on_the_cpu(monkeypatch, name, depth, p):
    calls = sdpa_calls(monkeypatch)
    model = make(name)
    x = torch.randn(2, 3, 32, 32)
    reattention = name.startswith("deepvit")  # its head mixing needs the maps: always the explicit path
    model.train()(x)
    assert calls == []  # dropping on the CPU: the weights written out, masked by the dropout module
    for m in model.modules():
        if hasattr(m, "maps_on_cpu"):
            m.maps_on_cpu = False
    model(x)
    assert calls == ([] if reattention else [p] * depth)  # else attention dropout rides along in SDPA
    calls.clear()
    model.eval()(x)
    assert calls == ([] if reattention else [0.0] * depth)
    calls.clear()
    model(x, return_attention=True)
    assert calls == []


# Attention models on CIFAR-10 (160 px for the 160 px ViT): (blocks, heads, tokens).
ATTENTION = {
    "cnn_transformer": (3, 2, 64), "cnn_tr_small": (2, 2, 64), "cnn_tr_medium": (3, 2, 64),
    "cnn_tr_large": (4, 2, 64), "cnn_tr_huge": (4, 2, 64),
    "vit": (9, 12, 65), "deepvit": (9, 12, 65), "vit_tiny_patch2_32": (9, 12, 257), "vit_mini_patch4_32": (6, 4, 65),
    "vit_mini_patchnorm": (6, 4, 65), "deepvit_mini_patchnorm": (6, 4, 65), "convstem_vit_mini": (6, 4, 5),
    "vit_mini_patch16_160": (6, 8, 101),
}


def test_every_attention_model_is_covered():
    with_maps = {n for n in list_models()
                 if "return_attention" in inspect.signature(default_model(n).forward).parameters}
    assert with_maps == set(ATTENTION)


@pytest.mark.parametrize("name", sorted(ATTENTION))
def test_attention_maps(name):
    depth, heads, tokens = ATTENTION[name]
    layout = default_layout(name)
    model = default_model(name)
    torch.manual_seed(0)
    x = torch.randn(2, layout[1], layout[2], layout[2])
    with torch.no_grad():
        fast = model(x)
        logits, maps = model(x, return_attention=True)
    torch.testing.assert_close(logits, fast, rtol=1e-4, atol=1e-5)  # the SDPA path == the explicit path
    assert len(maps) == depth
    for m in maps:
        assert m.shape == (2, heads, tokens, tokens)
        torch.testing.assert_close(m.sum(-1), torch.ones(2, heads, tokens))  # each row is a distribution over keys
        assert (m >= 0).all()


def test_conv_stem_vit_exposes_its_blocks():
    model = make("convstem_vit_mini", MNIST)
    assert model.blocks is model.vit.blocks and len(model.blocks) == 6


def test_cnn_transformer_block_matches_torch_encoder_layer():
    """Our post-norm block computes nn.TransformerEncoderLayer's function, given the same weights."""
    torch.manual_seed(0)
    model = make("cnn_transformer", num_layers=5, cnn_channels=128, num_heads=4, dim_feedforward=96)
    assert len(model.blocks) == 5
    assert not [m for m in model.modules() if isinstance(m, (nn.TransformerEncoderLayer, nn.MultiheadAttention))]
    ours = model.blocks[2].eval()
    ref = nn.TransformerEncoderLayer(128, 4, 96, 0.1, batch_first=True).eval()
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(ours.attn.qkv.weight)
        ref.self_attn.in_proj_bias.copy_(ours.attn.qkv.bias)
        ref.self_attn.out_proj.load_state_dict(ours.attn.proj.state_dict())
        for name in ("linear1", "linear2", "norm1", "norm2"):
            getattr(ref, name).load_state_dict(getattr(ours, name).state_dict())
        x = torch.randn(3, 64, 128)
        torch.testing.assert_close(ours(x)[0], ref(x), rtol=1e-5, atol=1e-5)


def test_cnn_transformer_init_follows_multihead_attention():
    torch.manual_seed(0)
    blocks = make("cnn_tr_large").blocks
    d = 64
    for block in blocks:
        qkv, proj = block.attn.qkv, block.attn.proj
        xavier_bound = math.sqrt(6 / (d + 3 * d))  # xavier_uniform_ on the fused (3D, D) weight
        assert qkv.weight.abs().max() <= xavier_bound and qkv.weight.std() > 0.9 * xavier_bound / math.sqrt(3)
        assert not qkv.bias.any() and not proj.bias.any()
        for linear in (proj, block.linear1, block.linear2):  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            assert linear.weight.abs().max() <= 1 / math.sqrt(linear.in_features)
    # Independently initialised, unlike nn.TransformerEncoder's deep copies of one layer.
    assert not torch.equal(blocks[0].attn.qkv.weight, blocks[1].attn.qkv.weight)
    assert not torch.equal(blocks[0].linear1.weight, blocks[1].linear1.weight)


def test_eval_mode_is_deterministic_and_batch_independent():
    model = make("cnn_tr_medium").eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        full, single = model(x), model(x[:1])
    torch.testing.assert_close(full[:1], single, rtol=1e-4, atol=1e-5)


def test_deepvit_reattention_changes_the_output():
    torch.manual_seed(0)
    deep = make("deepvit_mini_patchnorm", MNIST).eval()
    plain = make("vit_mini_patchnorm", MNIST).eval()
    missing, unexpected = plain.load_state_dict(deep.state_dict(), strict=False)
    assert not missing and all("reattn" in k for k in unexpected) and len(unexpected) == 6 * 3
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert not torch.allclose(deep(x), plain(x))


def test_resnet18_stems():
    cifar = default_model("resnet18")
    assert cifar.conv1.kernel_size == (3, 3) and isinstance(cifar.maxpool, nn.Identity)
    imagenet = make("resnet18", (10, 1, 160))
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.in_channels == 1
    forced = make("resnet18", stem="imagenet")
    assert forced.conv1.kernel_size == (7, 7)


def test_conv_stem_patch_must_divide_the_feature_map():
    with pytest.raises(UserError, match=r"model.patch_size=5 does not tile the 12x12 conv stem's feature map \(of 28 "
                                        r"px images\), dropping 2 px of each row and column; --set model.patch_size=3 "
                                        r"\(the sizes that tile it: 1, 2, 3, 4, 6\)"):
        make("convstem_vit_mini", MNIST, patch_size=5)


@pytest.mark.parametrize("name", [n for n in list_models() if "patch_size" in MODELS.parameters(n)])
def test_every_patch_size_that_cannot_tile_or_gives_one_token_is_one_line(name):
    """Every model with a patch_size: a patch that drops pixels, or one patch for the whole input, is refused
    with the size and a patch that fits (models/shapes.py), as timm's ViTs are (test_timm_mistakes...)."""
    side = 12 if name == "convstem_vit_mini" else 28  # the hybrid's patches cover its conv stem's 12x12 map
    odd = 15 if name == "convmixer" else 5  # a ConvMixer's stride-p conv may drop pixels, not make a 1x1 grid
    for patch, says in ((odd, f"model.patch_size={odd} does not tile the {side}x{side}"),
                        (side, f"model.patch_size={side} makes a token grid of one patch over the {side}x{side}")):
        with pytest.raises(UserError) as e:
            with torch.device("meta"):
                create_model(name, **FMNIST, patch_size=patch)
        assert says in str(e.value) and "--set model.patch_size=" in str(e.value) and "\n" not in str(e.value)


def test_a_fixed_patch_that_cannot_tile_points_to_the_open_vit():
    with pytest.raises(UserError, match=r"vit_mini_patch4_32 fixes its patch size, so for another use model.name: vit"):
        create_model("vit_mini_patch4_32", num_classes=10, in_chans=1, image_size=30)


def test_mini_vit_needs_a_patch_for_unknown_sizes():
    with pytest.raises(UserError, match="no default patch size for 160 px inputs"):
        make("vit_mini_patchnorm", IMAGENETTE)
    # 100 patches of 16 x 16 x 3 instead of 64 of 4 x 4 x 3: a wider patch projection and a longer position table.
    assert n_params("vit_mini_patchnorm", IMAGENETTE, patch_size=16) - n_params("vit_mini_patchnorm") \
        == (768 - 48) * (2 + 128) + (100 - 64) * 128


# ----------------------------------------------------------------------------- timm/<name>

FMNIST = dict(num_classes=10, in_chans=1, image_size=28)


@pytest.mark.parametrize("name, kwargs", [
    ("timm/resnet10t", {}),  # a CNN: no img_size, adapts to 28x28
    ("timm/vit_tiny_patch16_224", {"patch_size": 7, "depth": 1}),  # a ViT: img_size=28 from the dataset
])
def test_a_timm_model_builds_for_the_dataset_and_round_trips_its_state_dict(name, kwargs):
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = create_model(name, **FMNIST, **kwargs)
    x = torch.randn(2, 1, 28, 28)
    model.train()
    assert model.training  # the build-time check forward leaves the mode as it was
    y = model(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    copy = create_model(name, **FMNIST, **kwargs)
    copy.load_state_dict(model.state_dict())  # checkpoints are plain state dicts
    model.eval(), copy.eval()
    assert torch.equal(model(x), copy(x))
    cfg = SimpleNamespace(model=SimpleNamespace(name=name, kwargs=kwargs))
    spec = SimpleNamespace(**FMNIST)
    assert sum(p.numel() for p in build_model(cfg, spec).parameters()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, kwargs, says", [
    ("timm/resnet1", {}, "model.name: unknown timm model 'resnet1' (did you mean 'timm/resnet18'?)"),
    ("timm/", {}, "model.name: unknown timm model ''"),
    ("timm/convnext_atto", {}, "model 'timm/convnext_atto': its feature map shrinks below 1x1 on this dataset's "
                               "1x28x28 images"),
    ("timm/vit_tiny_patch16_224", {}, "model 'timm/vit_tiny_patch16_224': model.patch_size=16 does not tile the 28x28 "
                                      "image, dropping 12 px of each row and column; --set model.patch_size=7"),
    ("timm/vit_tiny_patch16_224", {"patch_size": 28}, "model 'timm/vit_tiny_patch16_224': model.patch_size=28 makes a "
                                                      "token grid of one patch over the 28x28 image"),
    ("timm/deit_tiny_patch16_224", {"patch_size": 5}, "model 'timm/deit_tiny_patch16_224': model.patch_size=5 does not "
                                                      "tile the 28x28 image"),
    ("timm/resnet10t", {"bogus": 1}, "model 'timm/resnet10t': cannot build with {'bogus': 1}: TypeError"),
    ("timm/resnet10t", {"img_size": 32}, "model.img_size: set by the dataset, not the config"),
    ("timm/resnet10t", {"num_classes": 3}, "model.num_classes: set by the dataset, not the config"),
    ("timm/resnet10t", {"pretrained": True}, "model.pretrained: pretrained weights are not used"),
])
def test_timm_mistakes_are_one_line_user_errors(name, kwargs, says):
    pytest.importorskip("timm")
    cfg = SimpleNamespace(model=SimpleNamespace(name=name, kwargs=kwargs))
    with pytest.raises(UserError) as e:
        build_model(cfg, SimpleNamespace(**FMNIST))
    assert str(e.value).startswith(says) and "\n" not in str(e.value)
    if "shrinks below 1x1" in says:
        assert "use a model that downsamples less" in str(e.value)


def test_timm_without_timm_installed_is_a_user_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(UserError, match=r"model.name: timm/resnet18 needs the timm package.*pip install timm"):
        create_model("timm/resnet18", **FMNIST)


@pytest.mark.system
def test_timm_is_imported_only_for_a_timm_name_and_listed_in_a_footer():
    import subprocess
    import sys

    code = "import sys, models; print('timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1])).stdout
    assert out.strip() == "False"
    assert not any(n.startswith("timm/") for n in list_models())
    from data import get_spec
    from models.catalog import models_table

    assert "timm/<name>" in models_table(get_spec).splitlines()[-1]


# ----------------------------------------------------------------------------- families


def test_every_model_has_a_family_and_no_family_word_is_a_model():
    from models.families import FAMILIES, TIMM_WORDS

    titles = {MODELS.family(name).title for name in list_models()}
    assert titles == {f.title for f in FAMILIES}  # every family has a model, every model a family
    words = {w for f in FAMILIES for w in f.words} | set(TIMM_WORDS)
    assert not words & set(list_models())  # vit, convmixer: models, not family words


@pytest.mark.parametrize("word, says", [
    ("hybrid", ["'hybrid' is a family", "hybrid CNN+Transformer: cnn_tr_huge", "conv-stem ViT hybrid: convstem_vit_mini"]),
    ("CNN", ["CNN: mnist_cnn, simple_cnn"]),
    ("resnet", ["ResNet: resnet18"]),
    ("timm", ["timm/<name>", "timm/resnet18"]),
])
def test_a_family_word_as_model_name_lists_the_family(word, says):
    with pytest.raises(UserError) as e:
        create_model(word, num_classes=10, in_chans=1, image_size=28)
    assert "\n" not in str(e.value) and all(s in str(e.value) for s in says), str(e.value)


def test_list_models_groups_by_family_with_input_sizes():
    from data import get_spec
    from models.catalog import models_table

    lines = models_table(get_spec).splitlines()
    heads = [line for line in lines if line and not line.startswith(" ") and not line.startswith("timm")]
    assert [h.split("  ")[0] for h in heads] == ["CNN", "hybrid CNN+Transformer", "ViT", "conv-stem ViT hybrid",
                                                  "ConvMixer", "ResNet"]
    assert "for 28 px inputs (MNIST, Fashion-MNIST): vit_mini_patchnorm" in next(h for h in heads if h.startswith("ViT"))
    row = next(line for line in lines if line.split()[:1] == ["vit_mini_patchnorm"])
    assert "28/32 px" in row


def test_the_shipped_families_comparison_has_one_model_per_family_and_builds_at_28_px():
    from pathlib import Path

    from config.sweep import load_points

    points = load_points([Path(__file__).resolve().parents[1] / "configs" / "families_fmnist.yaml"], warn=False)
    assert [MODELS.family(p.cfg.model.name).title for p in points] == [
        "CNN", "hybrid CNN+Transformer", "ViT", "conv-stem ViT hybrid", "ConvMixer"]
    assert points[2].cfg.model.name == "vit_mini_patchnorm"  # the ViT for 28 px
    for p in points:
        assert p.cfg.data.name == "fashion_mnist" and p.name.startswith("families-fashion_mnist-")
        with torch.device("meta"):
            create_model(p.cfg.model.name, **FMNIST, **p.cfg.model.kwargs)


class NoMask(nn.Dropout):
    """A dropout module that keeps everything: the written-out path, minus the randomness."""

    def forward(self, x):
        return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_written_out_is_sdpas_computation_values_and_gradients(dtype):
    from models.attention import attend

    torch.manual_seed(0)
    qkv = [torch.randn(2, 3, 65, 8, requires_grad=True) for _ in range(3)]
    drop = NoMask(0.3).train()  # p > 0 in training on the CPU: the written-out path
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = attend(*qkv, drop)
        ref = F.scaled_dot_product_attention(*qkv)
    assert out.dtype == ref.dtype == dtype
    tol = {} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}  # bf16 products, fp32 softmax in both
    torch.testing.assert_close(out, ref, **tol)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, qkv, g)
    ref_grads = torch.autograd.grad(ref, qkv, g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, **({"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else
                                            {"atol": 5e-2, "rtol": 5e-2}))


def test_attention_written_out_draws_the_dropout_modules_mask():
    from models.attention import attend, softmax_maps

    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    drop = nn.Dropout(0.3).train()
    torch.manual_seed(0)
    out = attend(q, k, v, drop)
    torch.manual_seed(0)
    torch.testing.assert_close(out, drop(softmax_maps(q, k)) @ v)
    assert not torch.allclose(out, F.scaled_dot_product_attention(q, k, v))  # something was dropped
