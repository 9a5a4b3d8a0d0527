"""The comparison's attention and feature-map figures, checked against the runs' own checkpoints."""
import shutil

import pytest
import torch

from fixtures import TINY_VIT, built_once, log_lines, png_size, run_fit, tiny_config, write_mnist
from evaluate.maps import attention_comparison, attention_share, inspect_groups, load_pool, pick_images, stem_signature
from evaluate.model import load_model
from plots.runs import find_runs, group_runs, split_prefix

CNN_TR = {"name": "cnn_transformer", "cnn_channels": 16, "num_layers": 2, "dim_feedforward": 32}
MODELS = {
    "cnn_tr": CNN_TR,
    "cnn_tr_1layer": {**CNN_TR, "num_layers": 1},  # the same conv stem as cnn_tr
    "vit": {**TINY_VIT, "depth": 2},
    "simple_cnn": {"name": "simple_cnn"},  # the same first convs as cnn_tr too (ConvBackbone)
    "mnist_cnn": {"name": "mnist_cnn"},  # another stem: unpadded 3x3 convs to 32 and 64 channels
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One short real run per model on MNIST-format files (64 validation images), by label."""
    def build(tmp):
        root = write_mnist(tmp / "fmnist", n_train=64, n_test=64)  # one training step: the maps need a checkpoint
        dirs = {}
        for label, model in MODELS.items():
            cfg = tiny_config(root, tmp / "runs", name=label, model=model, epochs=1, batch_size=64)
            dirs[label] = run_fit(cfg, experiment=f"cmp-fashion_mnist-{label}")[0]
        return dirs
    return built_once(tmp_path_factory, "maps-runs", build)


def groups_of(runs, *labels):
    return group_runs(find_runs([runs[label] for label in labels]))


def reference(run):
    """The run's model and its first validation images, rebuilt here without evaluate.maps."""
    from config import from_dict
    from data import get_spec, load_data
    from models import build_model

    cfg = from_dict(run.config)
    model = build_model(cfg, get_spec(cfg.data.name))
    assert run.checkpoint().name == "best.pt"  # a plain state_dict (train/rundir.py)
    model.load_state_dict(torch.load(run.checkpoint(), map_location="cpu", weights_only=True))
    data = load_data(cfg.data)
    x, y = data.val
    mean = torch.tensor(data.spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.spec.std).view(1, -1, 1, 1)
    return model.eval(), (x.float() / 255 - mean) / std, y


def test_rollout_of_a_hand_worked_two_layer_example():
    """Attention rollout (Abnar & Zuidema 2020) worked by hand: each layer's map averaged over heads, plus the
    residual as 0.5 A + 0.5 I, rows normalised, multiplied first layer first; then the share of each patch.

    Without a class token (4 tokens, a 2x2 grid). Layer 1, one head, uniform: A1 = 1/4 everywhere, so
    R1 = 0.5 A1 + 0.5 I has 5/8 on the diagonal and 1/8 elsewhere. Layer 2, two heads: one sends every token
    to token 0, the other is the identity; their mean has row 0 = e0 and row i = (e0 + ei) / 2, so R2 has
    row 0 = e0 and row i = e0 / 4 + 3 ei / 4. Rollout R2 @ R1: row 0 = (5/8, 1/8, 1/8, 1/8); row 1 =
    1/4 (5/8, 1/8, 1/8, 1/8) + 3/4 (1/8, 5/8, 1/8, 1/8) = (1/4, 1/2, 1/8, 1/8), rows 2 and 3 likewise. The
    attention each token receives, averaged over the 4 queries: (11/32, 7/32, 7/32, 7/32); times 4 tokens
    (1 = a uniform share): (11/8, 7/8, 7/8, 7/8).

    With a class token (5 tokens: the class token and a 2x2 grid). Layer 1: the class token attends only to
    patch 1, every patch uniformly to all 5 tokens: R1 row 0 = (1/2, 1/2, 0, 0, 0), row i = 1/10 + ei / 2.
    Layer 2, uniform: R2 row 0 = (3/5, 1/10, 1/10, 1/10, 1/10). Row 0 of R2 @ R1 = 3/5 (1/2, 1/2, 0, 0, 0) +
    1/10 (rows 1..4 of R1, summed: (4/10, 9/10, 9/10, 9/10, 9/10)) = (34/100, 39/100, 9/100, 9/100, 9/100).
    The class token's row over the patches, renormalised, times 4: (26/11, 6/11, 6/11, 6/11)."""
    from evaluate.maps import attention_share, rollout

    a1 = torch.full((1, 1, 4, 4), 1 / 4)
    to_first = torch.zeros(4, 4)
    to_first[:, 0] = 1
    a2 = torch.stack([to_first, torch.eye(4)])[None]  # (batch 1, 2 heads, 4, 4)
    assert torch.allclose(rollout([a1, a2])[0], torch.tensor([[5, 1, 1, 1], [2, 4, 1, 1], [2, 1, 4, 1],
                                                             [2, 1, 1, 4]]) / 8)
    share, cls = attention_share([a1, a2])
    assert not cls and torch.allclose(share, torch.tensor([[[11, 7], [7, 7]]]) / 8)

    b1 = torch.full((1, 1, 5, 5), 1 / 5)
    b1[0, 0, 0] = torch.tensor([0.0, 1, 0, 0, 0])
    b2 = torch.full((1, 1, 5, 5), 1 / 5)
    share, cls = attention_share([b1, b2])
    assert cls and torch.allclose(share, torch.tensor([[[26, 6], [6, 6]]]) / 11)


def test_attention_figure_matches_the_checkpoints(runs, tmp_path):
    groups = groups_of(runs, "cnn_tr", "cnn_tr_1layer", "vit")
    first = [g.first for g in groups]
    pool = load_pool(first[0], {})
    shown, notes = attention_comparison([(g.label, load_model(r.path, None)[1]) for g, r in zip(groups, first)], pool, 4,
                                        tmp_path / "attention.png")
    assert notes == [] and shown.labels == [g.label for g in groups] and shown.runs == ["", "", ""]
    rows = shown.indices
    assert len(rows) == len(set(rows)) == 4  # one set of images, shown to every model
    preds = []
    for c, run in enumerate(first):
        model, x, y = reference(run)
        with torch.no_grad():
            logits, maps = model(x[rows], return_attention=True)
            preds.append(model(x).argmax(1).tolist())  # the whole pool the rows are picked from
        assert shown.targets == y[rows].tolist()
        assert shown.preds[c] == logits.argmax(1).tolist() == [preds[c][i] for i in rows]
        assert torch.allclose(shown.grids[c], attention_share(maps)[0], atol=1e-5)  # as worked by hand above
        assert shown.class_token[c] == (run.model == "vit")
    # The rows: right in every model first, then wrong in at least one (most-missed first), as the
    # checkpoints' own predictions over the pool pick them.
    right, missed = pick_images(y.tolist(), preds, 4)
    assert rows == right + missed and shown.right == len(right)
    assert missed and shown.missed_in_pool == sum(any(p[i] != t for p in preds) for i, t in enumerate(y.tolist()))
    wrong = [[p != t for p, t in zip(col, shown.targets)] for col in shown.preds]
    assert shown.marked == [(r, c) for r in range(4) for c in range(3) if wrong[c][r]]  # framed in red
    w, h = png_size(shown.path)
    assert 500 <= w <= 1400 and 400 <= h <= 2000, (w, h)


def test_pick_images_half_right_half_missed_different_classes():
    labels = [0, 0, 1, 1, 2, 3, 3, 4]
    preds = [[0, 9, 1, 9, 2, 9, 3, 4],  # wrong at 1, 3, 5
             [0, 9, 1, 1, 2, 9, 3, 9]]  # wrong at 1, 5, 7
    right, missed = pick_images(labels, preds, 4)
    assert missed == [1, 5]  # missed by both models first; 3 (class 1) and 7 (class 4) once only
    assert right == [2, 4]  # right everywhere, classes not shown yet (0 and 3 are taken)
    assert pick_images(labels, preds, 4) == (right, missed)
    assert pick_images(labels, preds, 1) == ([0], [])
    everything_right = pick_images(labels, [labels], 3)
    assert everything_right == ([0, 2, 4], [])
    assert pick_images([0, 1], [[1, 0]], 3) == ([], [0, 1])  # fewer images than asked: all of them


def test_split_prefix():
    assert split_prefix(["sizes-fashion_mnist-cnn_tr_small", "sizes-fashion_mnist-cnn_tr_medium"]) == \
        ("sizes-fashion_mnist-", ["cnn_tr_small", "cnn_tr_medium"])
    assert split_prefix(["cnn_tr_small", "cnn_tr_large"]) == ("", ["cnn_tr_small", "cnn_tr_large"])
    assert split_prefix(["a-b", "a-b-c"]) == ("a-", ["b", "b-c"])
    assert split_prefix(["a-", "a-b"]) == ("", ["a-", "a-b"])  # never a label cut to nothing
    assert split_prefix(["one-run"]) == ("", ["one-run"])


def test_stem_signature():
    from models import create_model

    def build(name, **kw):
        return create_model(name, num_classes=10, in_chans=1, image_size=28, **kw)

    cnn_tr = stem_signature(build("cnn_transformer", cnn_channels=16))
    assert cnn_tr == ("Conv2d 1→16 3×3 pad 1", "BatchNorm2d", "ReLU", "MaxPool2d 2", "Conv2d 16→32 3×3 pad 1")
    # cnn_channels sets only the last conv of the backbone, which the figure never draws.
    assert stem_signature(build("cnn_tr_large")) == stem_signature(build("simple_cnn")) == cnn_tr
    assert stem_signature(build("mnist_cnn")) == ("Conv2d 1→32 3×3", "ReLU", "Conv2d 32→64 3×3")
    assert stem_signature(build("convstem_vit_mini")) == stem_signature(build("mnist_cnn"))
    assert stem_signature(build("vit", patch_size=7, embed_dim=16, depth=1, num_heads=2)) == ()


def test_inspect_groups_one_attention_figure_and_only_different_stems(runs, tmp_path):
    with log_lines() as logged:
        attention, features, notes = inspect_groups(groups_of(runs, *MODELS), tmp_path, 4)
    assert [(t, p.name) for t, _, p in attention] == [("Attention maps", "attention.png")]
    assert "The same 4 validation images" in attention[0][1] and "attention rollout" in attention[0][1]
    # Issue 24: which seed's model each column is, and the names' shared prefix the figure leaves out.
    assert "for every experiment the run of seed 0, best.pt (other seeds' models are not shown)" in attention[0][1]
    assert 'Columns are named without the prefix they share, "cmp-fashion_mnist-".' in attention[0][1]
    assert features[0][1].endswith('Models are named without the prefix they share, "cmp-fashion_mnist-".')
    # cnn_tr, cnn_tr_1layer and simple_cnn share a stem (one block), mnist_cnn has its own; the ViT has none.
    assert [(t, p.name) for t, _, p in features] == [("Feature maps of the first conv layers", "features.png")]
    assert features[0][1].startswith("2 different conv stems among 4 models")
    assert notes == [] and logged == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attention.png", "features.png"]
    w, h = png_size(tmp_path / "features.png")
    assert 600 <= w <= 1400 and 300 <= h <= 2000, (w, h)


def test_inspect_groups_shared_stem_and_a_run_without_checkpoint(runs, tmp_path):
    bare = tmp_path / "runs" / "bare"
    shutil.copytree(runs["vit"], bare)
    for name in ("best.pt", "last.pt"):
        (bare / name).unlink()
    groups = group_runs(find_runs([runs["cnn_tr"], runs["cnn_tr_1layer"], bare]))
    (tmp_path / "out").mkdir()
    attention, features, notes = inspect_groups(groups, tmp_path / "out", 2)
    assert [p.name for _, _, p in attention] == ["attention.png"] and features == []
    assert notes == [
        "cmp-fashion_mnist-vit: no checkpoint (output.checkpoints was off or the run stopped before its first "
        "epoch), so no attention or feature maps",
        "all 2 models share the same conv stem (Conv2d 1→16 3×3 pad 1, BatchNorm2d, ReLU, "
        "MaxPool2d 2, Conv2d 16→32 3×3 pad 1): feature maps omitted, as they are drawn only to compare stems "
        "that differ"]
    assert not (tmp_path / "out" / "features.png").exists()
