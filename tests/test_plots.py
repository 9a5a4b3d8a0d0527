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


# The sweep these runs stand for, in its order: (experiment, seed). Name order (cnn, cnn_tr, vit) differs.
POINTS = [("cnn_tr", 0), ("cnn_tr", 1), ("vit", 0), ("cnn", 0)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four real runs on MNIST-format files: a CNN+Transformer over two seeds, a ViT, a CNN."""
    tmp = tmp_path_factory.mktemp("plots")
    root = write_mnist(tmp / "fmnist", n_train=128, n_test=64)
    dirs = []
    for i, (label, seed) in enumerate(POINTS):
        cfg = tiny_config(root, tmp / "runs", name=f"{label}-seed={seed}", seed=seed, model=TINY[label],
                          epochs=2, batch_size=64)
        # What a sweep point records: its experiment (its name without the seed), its swept values, its place.
        dirs.append(run_fit(cfg, experiment=label, swept={"model.name": label, "seed": seed}, point=i)[0])
    return dirs


@pytest.fixture(scope="module")
def comparison(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    index = compare(runs, out, images=3, latency=True, latency_budget_s=0.3, log=lambda *a: None)
    return out, index


def read_csv(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def run_files(d: Path) -> tuple[dict, list[dict]]:
    return (json.loads((d / "results.json").read_text()),
            [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()])


def test_grouping_by_seed(runs):
    groups = group_runs(find_runs(runs))
    assert [(g.label, len(g.runs)) for g in groups] == [("cnn_tr", 2), ("vit", 1), ("cnn", 1)]


def test_runs_table_matches_each_runs_files(runs, comparison):
    out, _ = comparison
    rows = read_csv(out / "results.csv")
    assert len(rows) == 4
    latency = json.loads((out / "latency.json").read_text())
    for row, d in zip(rows, runs):
        results, metrics = run_files(d)
        assert row["path"] == str(d) and row["run"] == results["name"]
        assert row["model.name"] == results["swept"]["model.name"]  # a column per swept key
        assert row["status"] == "completed" and row["reason"] == "" and row["counted"] == "True"
        assert int(row["params"]) == results["params"] and int(row["mult_adds"]) == results["mult_adds"]
        assert int(row["flops_training"]) == results["flops_training"]
        assert int(row["flops_inference"]) == results["flops_inference"]
        assert results["flops_training"] > results["flops_inference"] > 0
        assert float(row["best_val_acc"]) == pytest.approx(max(m["val_acc"] for m in metrics))
        assert float(row["best_val_acc"]) == pytest.approx(results["best_val_acc"])
        assert float(row["final_val_acc"]) == pytest.approx(metrics[-1]["val_acc"])
        assert float(row["time_per_epoch_s"]) == pytest.approx(statistics.fmean(m["epoch_time_s"] for m in metrics))
        assert "latency_ms_batch1" not in results  # measured by the comparison, once per experiment
        measured = latency["experiments"][row["experiment"]]
        for which in ("batch1", "batched"):
            assert float(row[f"latency_ms_{which}"]) == pytest.approx(measured[which]["ms"])
            assert measured[which]["ms"] > 0 and measured[which]["threads"] == 1
        assert int(row["latency_batch_size"]) == 64 and int(row["latency_threads"]) == 1 == latency["threads"]


def test_latency_is_reported_with_its_spread(comparison):
    """Every latency comes with its spread and repeat count, in the CSV and in the table's text."""
    out, index = comparison
    text = (out / "results.md").read_text()
    for row in read_csv(out / "summary.csv"):
        for which in ("batch1", "batched"):
            spread = float(row[f"latency_{which}_spread"])
            assert 0 <= spread < 10 and int(row[f"latency_{which}_repeats"]) >= 3
            ms = float(row[f"latency_ms_{which}"])
            cell = f"{ms:.{3 if ms < 1 else 2}f} ±{100 * spread:.0f}%"
            assert cell in text, (cell, text)
            assert (row[f"latency_{which}_flagged"] == "True") == (cell + " ⚠ unsteady" in text)


def test_latency_text_flags_an_unsteady_number():
    from plots.table import latency_text

    assert latency_text({"ms": 2.314, "spread": 0.031, "flagged": False}) == "2.31 ±3%"
    assert latency_text({"ms": 155.5, "spread": 0.62, "flagged": True}) == "155.50 ±62% ⚠ unsteady"
    assert latency_text(None) == "–"


def test_folder_of_runs_comes_back_in_sweep_order(runs):
    assert [r.path for r in find_runs([runs[0].parent])] == runs  # not name order: cnn, cnn_tr, vit


def test_summary_is_mean_and_std_over_seeds(runs, comparison):
    out, index = comparison
    (row,) = [r for r in read_csv(out / "summary.csv") if r["experiment"] == "cnn_tr"]
    best = [run_files(d)[0]["best_val_acc"] for d in runs[:2]]
    assert row["runs"] == "2" and row["seeds"] == "0 1" and row["model.name"] == "cnn_tr"
    assert float(row["best_val_acc_mean"]) == pytest.approx(statistics.fmean(best))
    assert float(row["best_val_acc_std"]) == pytest.approx(statistics.stdev(best))
    single = [r for r in read_csv(out / "summary.csv") if r["experiment"] == "vit"][0]
    assert single["best_val_acc_std"] == ""  # one run: no spread to report
    text = index.read_text()
    assert "| cnn_tr | cnn_tr | cnn_transformer | fashion_mnist | 2 |" in text
    assert f"{statistics.fmean(best):.2f} ± {statistics.stdev(best):.2f}" in text


def dominated(p, others) -> bool:
    return any(o["x"] <= p["x"] and o["y"] >= p["y"] and (o["x"] < p["x"] or o["y"] > p["y"]) for o in others)


def test_tradeoff_numbers_are_the_runs_own(runs, comparison):
    """Each point of the trade-off figure against the runs' files; the Pareto front by brute force."""
    out, _ = comparison
    rows = [r for r in read_csv(out / "tradeoffs.csv") if r["figure"] == "tradeoffs.png"]
    latency = json.loads((out / "latency.json").read_text())["experiments"]
    members = {label: [d for d, (lab, _) in zip(runs, POINTS) if lab == label] for label, _ in POINTS}
    for row in rows:
        files = [run_files(d) for d in members[row["experiment"]]]
        best = [max(m["val_acc"] for m in metrics) for _, metrics in files]
        assert float(row["y"]) == pytest.approx(statistics.fmean(best))
        assert (row["y_std"] == "") == (len(best) == 1)
        if len(best) > 1:
            assert float(row["y_std"]) == pytest.approx(statistics.stdev(best))
        x = float(row["x"])
        if row["x_name"] in ("params", "flops_training"):
            assert x == files[0][0][row["x_name"]]
        elif row["x_name"] == "time_per_epoch_s":
            assert x == pytest.approx(statistics.fmean(statistics.fmean(m["epoch_time_s"] for m in metrics)
                                                       for _, metrics in files))
        else:
            measured = latency[row["experiment"]]["batch1"]
            assert (x, float(row["x_lo"]), float(row["x_hi"])) == pytest.approx(
                (measured["ms"], measured["p25_ms"], measured["p75_ms"]))
    assert {r["x_name"] for r in rows} == {"params", "flops_training", "time_per_epoch_s", "latency_batch1"}
    for name in {r["x_name"] for r in rows}:
        panel = [{"x": float(r["x"]), "y": float(r["y"]), "pareto": r["pareto"] == "True",
                  "flagged": r["flagged"] == "True"} for r in rows if r["x_name"] == name]
        assert len(panel) == 3
        steady = [p for p in panel if not p["flagged"]]
        for p in steady:
            assert p["pareto"] == (not dominated(p, [o for o in steady if o is not p])), (name, panel)


def test_accuracy_against_a_categorical_sweep_is_ordered_by_size(runs, comparison):
    out, _ = comparison
    rows = [r for r in read_csv(out / "tradeoffs.csv") if r["figure"] == "accuracy_vs_model.name.png"]
    best = [r for r in rows if r["y_name"] == "best_val_acc"]
    flops = {r["experiment"]: run_files(runs[[lab for lab, _ in POINTS].index(r["experiment"])])[0]["flops_training"]
             for r in best}
    assert len(best) == 3 and len([r for r in rows if r["y_name"] == "final_val_acc"]) == 3
    assert [r["x"] for r in best] == sorted(flops, key=flops.get)  # small to large


def test_summary_sentences_follow_from_the_numbers(runs, comparison):
    """The written summary's "b vs a" line: the difference of means ± its standard error, from the files."""
    out, index = comparison
    text = index.read_text()
    summary = text.split("## Summary")[1].split("\n## ")[0]
    best = {label: [max(m["val_acc"] for m in run_files(d)[1]) for d, (lab, _) in zip(runs, POINTS) if lab == label]
            for label in ("cnn_tr", "vit", "cnn")}
    winner = max(best, key=lambda k: statistics.fmean(best[k]))
    assert f"Best on fashion_mnist: **{winner}**, {statistics.fmean(best[winner]):.2f}" in summary
    flops = {label: run_files(runs[[lab for lab, _ in POINTS].index(label)])[0]["flops_training"] for label in best}
    small, big = sorted(best, key=flops.get)[:2]
    diff = statistics.fmean(best[big]) - statistics.fmean(best[small])
    assert f"{big} vs {small}: {diff:+.2f} points" in summary
    assert f"{flops[big] / flops[small]:.2f}× training FLOPs" in summary
    assert "## Summary" in text and text.index("## Summary") < text.index("## What size buys") < text.index("## Results")


def test_a_run_that_did_not_complete_is_listed_but_not_averaged(runs, tmp_path):
    """A stopped repeat of a seed beside its completed run: one experiment, its status and reason shown, the
    means over the completed runs only."""
    import shutil

    stopped = tmp_path / "stopped"
    shutil.copytree(runs[0], stopped)
    results = json.loads((stopped / "results.json").read_text())
    results.update(status="interrupted", error="stopped by SIGTERM at epoch 1, step 2", best_val_acc=None)
    (stopped / "results.json").write_text(json.dumps(results))
    lines = (stopped / "metrics.jsonl").read_text().splitlines()[:1]
    (stopped / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "c"
    compare([*runs[:2], stopped], out, inspect_models=False, log=lambda *a: None)
    rows = read_csv(out / "results.csv")
    assert [(r["status"], r["counted"]) for r in rows] == [("completed", "True"), ("completed", "True"),
                                                             ("interrupted", "False")]
    assert rows[2]["reason"] == "stopped by SIGTERM at epoch 1, step 2" and rows[2]["experiment"] == "cnn_tr"
    (summary,) = read_csv(out / "summary.csv")
    best = [run_files(d)[0]["best_val_acc"] for d in runs[:2]]
    assert summary["status"] == "2 completed, 1 interrupted" and summary["counted"] == "2"
    assert float(summary["best_val_acc_mean"]) == pytest.approx(statistics.fmean(best))
    assert "Not in the means: cnn_tr-seed=0 (interrupted)" in (out / "index.md").read_text()


def test_same_name_other_settings_are_told_apart(runs, tmp_path):
    import shutil
    import yaml

    other = tmp_path / "longer"
    shutil.copytree(runs[2], other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["train"]["epochs"] = 5
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    labels = [g.label for g in group_runs(find_runs([runs[2], other]))]
    assert labels == ["vit [train.epochs=2]", "vit [train.epochs=5]"]


def test_colours_come_from_the_name_not_the_position(runs):
    from plots.curves import colours

    groups = group_runs(find_runs(runs))
    alone = colours([g for g in groups if g.label == "vit"])
    together = colours(groups)
    reversed_ = colours(groups[::-1])
    assert alone["vit"] == together["vit"] == reversed_["vit"]
    assert len(set(together.values())) == len(groups)


def png_size(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_every_figure_is_a_sensible_png_and_linked_from_the_index(comparison):
    out, index = comparison
    text = index.read_text()
    expected = ["accuracy_vs_model.name.png", "tradeoffs.png", "val_accuracy.png", "loss.png", "convergence.png",
                "attention.png",  # one figure, every attention model side by side
                "features.png"]  # the stems differ: cnn_transformer's and simple_cnn's (the ViT has only its patchify)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(expected)
    for name in expected:
        w, h = png_size(out / name)
        assert 400 <= w <= 4000 and 250 <= h <= 4000, (name, w, h)
        assert f"]({name})" in text
    assert text.count("\n*") == len(expected)  # each figure's one-line caption, in italics under it
    assert (out / "index.html").read_text().count("<figcaption>") == len(expected)  # tests/test_report_html.py
    assert not list(out.glob(".*tmp*"))  # no temporary files left behind


def test_plots_cli_on_a_folder_of_runs(runs, tmp_path):
    p = run_main(runs[0].parent, "--out", tmp_path / "c", "--no-maps", "--no-latency", module="plots")
    assert p.returncode == 0, p.stderr
    assert [r["run"] for r in read_csv(tmp_path / "c" / "results.csv")] == [run_files(d)[0]["name"] for d in runs]
    assert not list((tmp_path / "c").glob("attention*.png")) and not (tmp_path / "c" / "latency.json").exists()


@pytest.mark.parametrize("args, message", [
    (["nowhere"], "nowhere: no such directory"),
    (["."], ": not a run directory and holds none (a run directory has config.yaml"),
    ([".", "--threads", "0"], "--threads must be between 1 and 1024, got 0"),
    ([".", "--latency-budget", "nan"], "--latency-budget must be a number of seconds in (0, 3600], got nan"),
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
