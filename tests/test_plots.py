"""Comparisons from small real runs: the table matches the runs' files, every figure is a real PNG."""
import csv
import io
import json
import statistics
from pathlib import Path

import pytest
import torch
from PIL import Image

from fixtures import TINY_VIT, run_fit, run_main, tiny_config, write_mnist
from plots import compare
from plots.maps import attention_grids, first_convs, rollout, token_layout
from plots.runs import find_runs, group_runs

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "cnn_tr": {"name": "cnn_transformer", "cnn_channels": 16, "num_layers": 2, "dim_feedforward": 32},
    "vit": {**TINY_VIT, "depth": 2},
    "cnn": {"name": "simple_cnn"},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four real runs on MNIST-format files: a CNN+Transformer over two seeds, a ViT, a CNN."""
    tmp = tmp_path_factory.mktemp("plots")
    root = write_mnist(tmp / "fmnist", n_train=128, n_test=64)
    dirs = []
    for label, seed in (("cnn_tr", 0), ("cnn_tr", 1), ("vit", 0), ("cnn", 0)):
        cfg = tiny_config(root, tmp / "runs", name=f"{label}-seed={seed}", seed=seed, model=TINY[label],
                          epochs=2, batch_size=64)
        # What a sweep point records: its experiment (its name without the seed) and its swept values.
        dirs.append(run_fit(cfg, experiment=label, swept={"seed": seed})[0])
    return dirs


@pytest.fixture(scope="module")
def comparison(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    index = compare(runs, out, images=3, latency=True, log=lambda *a: None)
    return out, index


def read_csv(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_grouping_by_seed(runs):
    groups = group_runs(find_runs(runs))
    assert [(g.label, len(g.runs)) for g in groups] == [("cnn_tr", 2), ("vit", 1), ("cnn", 1)]


def test_runs_table_matches_each_runs_files(runs, comparison):
    out, _ = comparison
    rows = read_csv(out / "results.csv")
    assert len(rows) == 4
    for row, d in zip(rows, runs):
        results = json.loads((d / "results.json").read_text())
        metrics = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        assert row["path"] == str(d) and row["run"] == results["name"]
        assert int(row["params"]) == results["params"] and int(row["mult_adds"]) == results["mult_adds"]
        assert float(row["best_val_acc"]) == pytest.approx(max(m["val_acc"] for m in metrics))
        assert float(row["best_val_acc"]) == pytest.approx(results["best_val_acc"])
        assert float(row["final_val_acc"]) == pytest.approx(metrics[-1]["val_acc"])
        assert float(row["time_per_epoch_s"]) == pytest.approx(statistics.fmean(m["epoch_time_s"] for m in metrics))
        assert "latency_ms_batch1" not in results  # measured by the comparison, on request, not by every run
        assert float(row["latency_ms_batch1"]) > 0 and float(row["latency_ms_batched"]) > 0
        assert int(row["latency_batch_size"]) == 64


def test_summary_is_mean_and_std_over_seeds(runs, comparison):
    out, index = comparison
    (row,) = [r for r in read_csv(out / "summary.csv") if r["experiment"] == "cnn_tr"]
    best = [json.loads((d / "results.json").read_text())["best_val_acc"] for d in runs[:2]]
    assert row["runs"] == "2" and row["seeds"] == "0 1"
    assert float(row["best_val_acc_mean"]) == pytest.approx(statistics.fmean(best))
    assert float(row["best_val_acc_std"]) == pytest.approx(statistics.stdev(best))
    single = [r for r in read_csv(out / "summary.csv") if r["experiment"] == "vit"][0]
    assert single["best_val_acc_std"] == ""  # one run: no spread to report
    text = index.read_text()
    assert "| cnn_tr | cnn_transformer | fashion_mnist | 2 |" in text
    assert f"{statistics.fmean(best):.2f} ± {statistics.stdev(best):.2f}" in text


def png_size(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_every_figure_is_a_sensible_png_and_linked_from_the_index(comparison):
    out, index = comparison
    text = index.read_text()
    expected = ["val_accuracy.png", "loss_accuracy.png", "convergence.png",
                "attention_cnn_tr.png", "attention_vit.png",  # the attention models
                "features_cnn_tr.png", "features_cnn.png"]  # models with conv layers (the ViT has only its patchify)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(expected)
    for name in expected:
        w, h = png_size(out / name)
        assert 400 <= w <= 4000 and 250 <= h <= 4000, (name, w, h)
        assert f"]({name})" in text
    assert text.count("\n*") == len(expected)  # each figure's one-line caption, in italics under it
    assert (out / "index.html").read_text().count("<figcaption>") == len(expected)  # tests/test_report_html.py
    assert not list(out.glob(".*tmp*"))  # no temporary files left behind


def test_plots_cli_on_a_folder_of_runs(runs, tmp_path):
    p = run_main(runs[0].parent, "--out", tmp_path / "c", "--no-maps", module="plots")  # the real `python -m plots`
    assert p.returncode == 0, p.stderr
    assert len(read_csv(tmp_path / "c" / "results.csv")) == 4
    assert not list((tmp_path / "c").glob("attention_*.png"))


@pytest.mark.parametrize("args, message", [
    (["nowhere"], "nowhere: no such directory"),
    (["."], ": not a run directory and holds none (a run directory has config.yaml"),
])
def test_plots_cli_bad_input(tmp_path, capsys, monkeypatch, args, message):
    from plots.report import main

    monkeypatch.chdir(tmp_path)  # as a user in their own folder would
    assert main([*args, "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "c").exists()


def test_token_layout_and_rollout():
    assert token_layout(65) == (True, 8) and token_layout(64) == (False, 8) and token_layout(50) == (True, 7)
    with pytest.raises(ValueError):
        token_layout(60)
    a = torch.softmax(torch.randn(2, 3, 5, 5), -1)
    one = rollout([a])
    expected = 0.5 * a.mean(1) + 0.5 * torch.eye(5)
    assert torch.allclose(one, expected / expected.sum(-1, keepdim=True))
    two = rollout([a, a.flip(1)])
    assert torch.allclose(two.sum(-1), torch.ones(2, 5))  # products of row-stochastic maps stay row-stochastic
    last, joint, cls = attention_grids([a, a])
    assert cls and last.shape == joint.shape == (2, 2, 2)
    assert torch.allclose(last, a.mean(1)[:, 0, 1:].reshape(2, 2, 2))


def test_first_convs_skip_patch_embeddings():
    from models import create_model

    vit = create_model("vit", num_classes=10, in_chans=1, image_size=28, patch_size=7, embed_dim=32, depth=1, num_heads=2)
    assert first_convs(vit) == []
    cnn = create_model("simple_cnn", num_classes=10, in_chans=1, image_size=28)
    assert len(first_convs(cnn)) == 2
