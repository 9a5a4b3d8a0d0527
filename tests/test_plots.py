"""Comparisons from small real runs: the table matches the runs' files, every figure is a real PNG."""
import csv
import io
import json
import math
import re
import statistics
from pathlib import Path

import pytest
import torch

from fixtures import TINY_VIT, built_once, call_main, png_size, run_fit, tiny_config, write_mnist
from evaluate.compare import compare
from evaluate.maps import attention_grids, first_convs, rollout, token_layout
from plots.runs import find_runs, group_runs

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "cnn_tr": {"name": "cnn_transformer", "cnn_channels": 16, "num_layers": 2, "dim_feedforward": 32},
    "vit": {**TINY_VIT, "depth": 2},
    "cnn": {"name": "simple_cnn"},
}


# The sweep these runs stand for, in its order: (experiment, seed). Name order (cnn, cnn_tr, vit) differs.
POINTS = [("cnn_tr", 0), ("cnn_tr", 1), ("vit", 0), ("vit", 1), ("cnn", 0)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Five real runs on MNIST-format files: a CNN+Transformer and a ViT over two seeds, a CNN."""
    def build(tmp):
        # 64 training images in batches of 32: two steps an epoch, as few images as that takes (time: the CNNs).
        root = write_mnist(tmp / "fmnist", n_train=64, n_test=64)
        dirs = []
        for i, (label, seed) in enumerate(POINTS):
            cfg = tiny_config(root, tmp / "runs", name=f"{label}-seed={seed}", seed=seed, model=TINY[label],
                              epochs=2, batch_size=32)
            # What a sweep point records: its experiment (its name without the seed), its swept values, its place.
            dirs.append(run_fit(cfg, experiment=label, swept={"model.name": label, "seed": seed}, point=i)[0])
        return dirs
    return built_once(tmp_path_factory, "plots-runs", build)


@pytest.fixture(scope="module")
def comparison(runs, tmp_path_factory):
    def build(out):
        return out, compare(runs, out, images=3, latency=True, latency_budget_s=0.1)
    return built_once(tmp_path_factory, "plots-comparison", build)


def read_csv(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def run_files(d: Path) -> tuple[dict, list[dict]]:
    return (json.loads((d / "results.json").read_text()),
            [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()])


def test_grouping_by_seed(runs):
    groups = group_runs(find_runs(runs))
    assert [(g.label, len(g.runs)) for g in groups] == [("cnn_tr", 2), ("vit", 2), ("cnn", 1)]


def test_runs_table_matches_each_runs_files(runs, comparison):
    out, _ = comparison
    rows = read_csv(out / "results.csv")
    assert len(rows) == 5
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
    """Every latency comes with its spread and repeat count, in the CSV and in the table's text; a flagged
    one says why."""
    out, index = comparison
    measured = json.loads((out / "latency.json").read_text())["experiments"]
    lines = (out / "results.md").read_text().splitlines()
    for row in read_csv(out / "summary.csv"):
        line = next(line for line in lines if line.startswith(f"| {row['experiment']} |"))
        cells = re.findall(r"([0-9.]+) \(IQR ([0-9]+)%\)( ⚠ [^|]+)?", line)
        assert len(cells) == 2, line  # batch 1 and batched
        for which, (ms, iqr, flag) in zip(("batch1", "batched"), cells):
            lat = measured[row["experiment"]][which]
            assert float(row[f"latency_ms_{which}"]) == lat["ms"] and float(ms) == pytest.approx(lat["ms"], rel=0.01)
            assert float(row[f"latency_{which}_spread"]) == lat["spread"]
            assert int(iqr) == round(100 * (lat["p75_ms"] - lat["p25_ms"]) / lat["ms"])
            assert int(row[f"latency_{which}_repeats"]) == lat["repeats"] >= 3
            assert (row[f"latency_{which}_flagged"] == "True") == lat["flagged"] == bool(flag)
            if lat["flagged"]:
                assert lat["why"] in flag and (lat["spread"] > 0.10 or lat["repeats"] < 7)


def test_latency_text_flags_a_noisy_number():
    from plots.table import latency_text

    assert latency_text({"ms": 2.314, "spread": 0.031, "flagged": False}) == "2.31 (IQR 3%)"
    assert latency_text({"ms": 155.5, "spread": 0.62, "flagged": True, "why": "spread 62% > 10%"}) == \
        "155.50 (IQR 62%) ⚠ spread 62% > 10%"
    assert latency_text(None) == "–"
    for ms, shown in ((0.5, "0.500"), (0.0395, "0.0395"), (0.001234, "0.00123")):  # 3 significant digits below 1 ms
        assert latency_text({"ms": ms, "spread": 0.02, "flagged": False}) == f"{shown} (IQR 2%)"


def test_folder_of_runs_comes_back_in_sweep_order(runs):
    assert [r.path for r in find_runs([runs[0].parent])] == runs  # not name order: cnn, cnn_tr, vit


def test_summary_is_mean_and_std_over_seeds(runs, comparison):
    out, index = comparison
    (row,) = [r for r in read_csv(out / "summary.csv") if r["experiment"] == "cnn_tr"]
    best = [run_files(d)[0]["best_val_acc"] for d in runs[:2]]
    assert row["runs"] == "2" and row["seeds"] == "0 1" and row["model.name"] == "cnn_tr"
    assert float(row["best_val_acc_mean"]) == pytest.approx(statistics.fmean(best))
    assert float(row["best_val_acc_std"]) == pytest.approx(statistics.stdev(best))
    single = [r for r in read_csv(out / "summary.csv") if r["experiment"] == "cnn"][0]
    assert single["best_val_acc_std"] == ""  # one run: no spread to report
    text = index.read_text()
    assert "| cnn_tr | cnn_transformer | 2 |" in text  # the swept model.name and the one dataset: not repeated
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
        else:  # latency: the multiple of the fastest model's, with its interval
            measured = latency[row["experiment"]]["batch1"]
            assert (x, float(row["x_lo"]), float(row["x_hi"])) == pytest.approx(
                (measured["ratio"], measured["ratio"] - measured["ratio_ci"], measured["ratio"] + measured["ratio_ci"]))
            assert (row["flagged"] == "True") == measured["ratio_flagged"]
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
    for row in rows:
        metrics = [run_files(d)[1] for d, (lab, _) in zip(runs, POINTS) if lab == row["experiment"]]
        values = [max(m["val_acc"] for m in ms) if row["y_name"] == "best_val_acc" else ms[-1]["val_acc"]
                  for ms in metrics]
        assert float(row["y"]) == pytest.approx(statistics.fmean(values))
        if len(values) == 1:
            assert row["y_std"] == ""
        else:
            assert float(row["y_std"]) == pytest.approx(statistics.stdev(values))


def test_curves_are_the_per_epoch_mean_and_std_of_the_runs(runs):
    """What val_accuracy.png, loss.png and convergence.png draw for an experiment over two seeds."""
    (group,) = [g for g in group_runs(find_runs(runs)) if g.label == "cnn_tr"]
    files = [run_files(d)[1] for d in runs[:2]]
    for key in ("val_acc", "train_loss", "val_loss"):
        epochs, mean, std = group.curve(key)
        assert epochs == [1, 2]
        for e, m, s in zip(epochs, mean, std):
            values = [ms[e - 1][key] for ms in files]
            assert m == pytest.approx(statistics.fmean(values)) and s == pytest.approx(statistics.stdev(values))


def t_quantile(df: float, p: float = 0.975) -> float:
    """Student's t quantile from mpmath (an independent arbitrary-precision library): the CDF through the
    regularized incomplete beta function, P(T <= t) = 1 - I_{df/(df+t^2)}(df/2, 1/2) / 2, solved for t."""
    import mpmath

    def cdf_gap(t):
        return 1 - mpmath.betainc(df / 2, 0.5, 0, df / (df + t * t), regularized=True) / 2 - p
    return float(mpmath.findroot(cdf_gap, (1.5, 20.0), solver="anderson"))  # the positive root (the gap is even in t)


def test_t_quantiles_of_the_noise_rule():
    from plots.findings import t975

    assert t975(1) == pytest.approx(math.tan(0.475 * math.pi), abs=1e-3)  # df 1 is Cauchy's: closed form
    assert t975(2) == pytest.approx(0.95 * math.sqrt(2 / (4 * 0.975 * 0.025)), abs=1e-3)  # df 2: closed form too
    for df, printed in ((3, 3.182), (4, 2.776), (10, 2.228), (30, 2.042), (10 ** 9, 1.960)):  # any t table
        assert t975(df) == pytest.approx(printed, abs=1e-3), df
    assert t_quantile(4) == pytest.approx(2.776445, abs=1e-6)  # the reference itself, against the table
    for df in (1.2, 1.5, 2.7, 7.3, 15.5, 60.4):  # Welch's degrees of freedom are seldom whole
        assert t975(df) == pytest.approx(t_quantile(df), abs=5e-4), df


def test_summary_sentences_follow_from_the_numbers(runs, comparison):
    """The written summary: the best experiment, and the step from the smallest to the next model, its
    difference of means ± the standard error and the within/beyond-noise verdict, all from the runs' files."""
    out, index = comparison
    text = index.read_text()
    summary = text.split("## Summary")[1].split("\n## ")[0]
    best = {label: [max(m["val_acc"] for m in run_files(d)[1]) for d, (lab, _) in zip(runs, POINTS) if lab == label]
            for label in ("cnn_tr", "vit", "cnn")}
    winner = max(best, key=lambda k: statistics.fmean(best[k]))
    assert f"Best on fashion_mnist: **{winner}**, {statistics.fmean(best[winner]):.2f}" in summary
    flops = {label: run_files(runs[[lab for lab, _ in POINTS].index(label)])[0]["flops_training"] for label in best}
    small, big = sorted(best, key=flops.get)[:2]
    assert (small, big) == ("vit", "cnn_tr")  # two seeds each: a standard error to report
    diff = statistics.fmean(best[big]) - statistics.fmean(best[small])
    ea, eb = (statistics.variance(best[k]) / len(best[k]) for k in (small, big))
    se = math.sqrt(ea + eb)
    line = next(line for line in summary.splitlines() if line.startswith(f"- {big} vs {small}: "))
    assert f"{diff:+.2f} ± {se:.2f} points" in line, line
    assert f"{flops[big] / flops[small]:.2f}× training FLOPs" in line
    if se > 0:
        df = (ea + eb) ** 2 / (ea ** 2 / (len(best[small]) - 1) + eb ** 2 / (len(best[big]) - 1))
        limit = t_quantile(df) * se
        if abs(abs(diff) - limit) > 0.02 * limit:  # not on the edge, where the table's interpolation decides
            assert ("within noise" in line) == (abs(diff) < limit), (line, limit)
    assert text.index("## Summary") < text.index("## What size buys") < text.index("## Results")


def test_a_run_that_did_not_complete_is_listed_but_not_averaged(unsaved_figures, runs, tmp_path):
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
    compare([*runs[:2], stopped], out, inspect_models=False)
    rows = read_csv(out / "results.csv")
    assert [(r["status"], r["counted"]) for r in rows] == [("completed", "True"), ("completed", "True"),
                                                             ("interrupted", "False")]
    assert rows[2]["reason"] == "stopped by SIGTERM at epoch 1, step 2" and rows[2]["experiment"] == "cnn_tr"
    (summary,) = read_csv(out / "summary.csv")
    best = [run_files(d)[0]["best_val_acc"] for d in runs[:2]]
    assert summary["status"] == "2 completed, 1 interrupted" and summary["counted"] == "2"
    assert float(summary["best_val_acc_mean"]) == pytest.approx(statistics.fmean(best))
    assert "Not in the means: cnn_tr-seed=0 (interrupted)" in (out / "index.md").read_text()


def edited_copy(src: Path, dst: Path, config=None, results=None) -> Path:
    """A copy of a real run with some of its config.yaml / results.json changed (what the report reads)."""
    import shutil
    import yaml

    shutil.copytree(src, dst)
    for name, change, load, dump in (("config.yaml", config, yaml.safe_load, yaml.safe_dump),
                                     ("results.json", results, json.loads, json.dumps)):
        if change:
            data = load((dst / name).read_text())
            change(data)
            (dst / name).write_text(dump(data))
    return dst


def test_odd_comparisons_hold_together(runs, tmp_path, unsaved_figures):
    """Two datasets, an experiment whose runs all failed, a list as a swept value, and a first run with no
    results.json: one trade-off set per dataset, the failed one shown but not ranked, costs from whichever
    run recorded them. The tables and the page are read; the figures are drawn but not saved."""
    bare = edited_copy(runs[0], tmp_path / "bare")
    (bare / "results.json").unlink()  # killed before its first write: its numbers come from metrics.jsonl
    other = edited_copy(runs[4], tmp_path / "mnist", config=lambda c: c["data"].update(name="mnist"),
                        results=lambda r: r.update(experiment="cnn-mnist"))
    failed = edited_copy(runs[2], tmp_path / "failed", config=lambda c: c["train"].update(lr=0.5),
                         results=lambda r: r.update(status="failed", error="RuntimeError: boom", experiment="vit-hot",
                                                    swept={"model.name": "vit", "train.milestones": [1, 2]}))
    out = tmp_path / "c"
    compare([bare, *runs, other, failed], out, inspect_models=False)
    summary = {r["experiment"]: r for r in read_csv(out / "summary.csv")}
    assert summary["cnn_tr"]["params"] == str(run_files(runs[0])[0]["params"])  # from the second run
    assert summary["cnn_tr"]["status"] == "2 completed, 1 incomplete" and summary["cnn_tr"]["counted"] == "2"
    assert summary["vit-hot"]["train.milestones"] == "[1, 2]" and summary["vit-hot"]["status"] == "failed"
    assert sorted(p.name for p in out.glob("tradeoffs*.png")) == ["tradeoffs_fashion_mnist.png"]  # mnist: 1 model
    text = (out / "index.md").read_text()
    assert "Best on mnist: **cnn-mnist**" in text and "Best on fashion_mnist: **vit-hot**" not in text
    assert "No completed run, so not ranked (their numbers are from stopped runs): vit-hot (failed)." in text
    rows = [r for r in read_csv(out / "tradeoffs.csv") if r["experiment"] == "vit-hot"]
    on_front = [r for r in rows if r["figure"].startswith("tradeoffs")]
    assert on_front and all(r["pareto"] == "False" and r["flagged"] == "True" for r in on_front)


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


def test_every_figure_is_a_sensible_png_and_linked_from_the_index(comparison):
    out, index = comparison
    text = index.read_text()
    expected = ["accuracy_vs_model.name.png", "tradeoffs.png", "val_accuracy.png", "loss.png", "convergence.png",
                "attention.png",  # one figure, every attention model side by side
                "features.png"]  # the CNNs' shared stem, beside the ViT's patchify (a stem with no conv to draw)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(expected)
    for name in expected:
        w, h = png_size(out / name)
        assert 400 <= w <= 4000 and 250 <= h <= 4000, (name, w, h)
        assert f"]({name})" in text
    assert text.count("\n*") == len(expected)  # each figure's one-line caption, in italics under it
    assert (out / "index.html").read_text().count("<figcaption>") == len(expected)  # tests/test_report_html.py
    assert not list(out.glob(".*tmp*"))  # no temporary files left behind


def test_compare_cli_on_a_folder_of_runs(unsaved_figures, runs, tmp_path, capsys):
    p = call_main(capsys, runs[0].parent, "--out", tmp_path / "c", "--no-maps", "--no-latency",
                  module="evaluate.compare")
    assert p.returncode == 0, p.stderr
    assert [r["run"] for r in read_csv(tmp_path / "c" / "results.csv")] == [run_files(d)[0]["name"] for d in runs]
    assert not list((tmp_path / "c").glob("attention*.png")) and not (tmp_path / "c" / "latency.json").exists()


def test_plots_cli_renders_from_files_with_the_latency_its_out_holds(unsaved_figures, runs, tmp_path, capsys):
    """python -m plots runs no model: the page from the run files, and the latency an earlier comparison into
    the same --out measured (latency.json), for the experiments it names."""
    label = group_runs(find_runs(runs))[0].label
    from models.measure import Latency

    timed = Latency(ms=7.25, p25_ms=7.2, p75_ms=7.345, spread=0.02, repeats=40, threads=1, batch=1, flagged=False,
                    reference=label).to_dict()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "latency.json").write_text(json.dumps({"experiments": {label: {"batch1": timed}}}))
    p = call_main(capsys, *runs, "--out", tmp_path / "c", module="plots")
    assert p.returncode == 0, p.stderr
    assert "7.25 (IQR 2%)" in (tmp_path / "c" / "results.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["nowhere"], "nowhere: no such directory"),
    (["."], ": not a run directory and holds none (a run directory has config.yaml"),
    ([".", "--threads", "0"], "--threads must be between 1 and 1024, got 0"),
    ([".", "--latency-budget", "nan"], "--latency-budget must be a number of seconds in (0, 3600], got nan"),
])
def test_plots_cli_bad_input(tmp_path, capsys, monkeypatch, args, message):
    from evaluate.compare import main

    monkeypatch.chdir(tmp_path)  # as a user in their own folder would
    assert main([*args, "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "c").exists()


def test_token_layout_and_rollout():
    assert token_layout(65) == (True, 8) and token_layout(64) == (False, 8) and token_layout(50) == (True, 7)
    with pytest.raises(ValueError):
        token_layout(60)
    a = torch.softmax(torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0)), -1)
    assert torch.allclose(rollout([a]).sum(-1), torch.ones(2, 5))  # worked by hand: tests/test_maps.py
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


def synthetic_group(label: str, times: list[list[float]], flops: float, latency: dict = None):
    """An experiment of len(times) completed runs, each with these epoch times (its time per epoch their mean)."""
    from plots.runs import Group, Run

    runs = [Run(Path(f"/{label}-{seed}"), {"model": {"name": label}, "data": {"name": "fashion_mnist"}, "seed": seed},
                {"status": "completed", "experiment": label, "swept": {"model.name": label, "seed": seed},
                 "best_val_acc": 80.0 + seed, "params": flops / 10, "flops_training": flops,
                 "time_per_epoch_s": statistics.fmean(epochs)},
                [{"epoch": e, "epoch_time_s": t, "val_acc": 80.0} for e, t in enumerate(epochs, 1)])
            for seed, epochs in enumerate(times)]
    return Group(label, runs, latency or {})


def test_time_per_epoch_ratio_gets_a_noise_verdict():
    """Issue 24: "cnn_tr_medium vs cnn_tr_small ... 0.84× time per epoch" on a loaded machine. The ratio of
    mean times per epoch gets ± its standard error (delta method) and Welch's verdict on its logarithm, over
    seeds, or over epochs with one run a side."""
    from plots.findings import findings, t975, time_ratio

    small = synthetic_group("small", [[10.0] * 3, [14.0] * 3, [12.0] * 3], 1e6)
    medium = synthetic_group("medium", [[9.0] * 3, [11.0] * 3, [10.2] * 3], 2e6)
    a, b = [12.0, 14.0, 10.0], [9.0, 11.0, 10.2]
    ratio = statistics.fmean(b) / statistics.fmean(a)
    ea, eb = (statistics.variance(v) / statistics.fmean(v) ** 2 / 3 for v in (a, b))
    se = math.sqrt(ea + eb)
    assert abs(math.log(ratio)) < t975((ea + eb) ** 2 / (ea ** 2 / 2 + eb ** 2 / 2)) * se  # inside the noise
    assert time_ratio(small, medium) == f"{ratio:.2f}× time per epoch (± {ratio * se:.2f} over 3 seeds, within noise)"
    line = next(s for s in findings([small, medium]) if s.startswith("medium vs small"))
    assert f"{ratio:.2f}× time per epoch (± {ratio * se:.2f} over 3 seeds, within noise)" in line, line

    steady = synthetic_group("big", [[20.0] * 3, [20.4] * 3, [19.8] * 3], 4e6)
    assert time_ratio(small, steady).endswith("over 3 seeds, beyond noise)")
    one_a, one_b = (synthetic_group(n, [t], f) for n, t, f in (("a", [10.0, 13.0, 11.0], 1e6),
                                                                 ("b", [9.0, 12.5, 10.0], 2e6)))
    assert re.fullmatch(r"0\.9\d× time per epoch \(± 0\.\d\d over 3 epochs, one run a side, within noise\)",
                        time_ratio(one_a, one_b)), time_ratio(one_a, one_b)
    assert time_ratio(synthetic_group("c", [[10.0]], 1e6), synthetic_group("d", [[12.0]], 2e6)) == \
        "1.20× time per epoch (one epoch: no noise estimate)"


def test_the_latency_reference_is_the_fastest_shown_and_flags_say_why():
    """The latency axis says "× the fastest" only of a model no other shown model beats; a flagged ratio says
    whether rounds were too few or their spread too wide."""
    from plots.findings import findings
    from plots.tradeoff import _latency_title

    def lat(ratio, ref, flagged=False, why="", ms=4.0, repeats=550):
        return {"batch1": {"ms": ms, "spread": 0.3, "repeats": repeats, "flagged": False, "reference": ref,
                           "ratio": ratio, "ratio_ci": 0.2 if flagged else 0.01, "ratio_flagged": flagged,
                           **({"ratio_why": why} if why else {})}}
    cnn = synthetic_group("simple_cnn", [[5.0]], 1e6, lat(0.73, "cnn_tr_small", ms=4.5))
    small = synthetic_group("cnn_tr_small", [[6.0]], 2e6, lat(1.0, "cnn_tr_small"))
    assert _latency_title([cnn, small]) == "inference latency at batch 1, × cnn_tr_small's (4.00 ms)"
    cnn.latency = lat(1.0, "simple_cnn", ms=4.5)
    small.latency = lat(1.37, "simple_cnn")
    assert _latency_title([cnn, small]) == "inference latency at batch 1, × the fastest (simple_cnn: 4.50 ms)"
    assert _latency_title([small]) == "inference latency at batch 1, × that of simple_cnn (not shown)"

    small.latency = lat(1.37, "simple_cnn", flagged=True, why="interval ±15% > ±3% over 550 rounds")
    old = synthetic_group("old", [[6.0]], 3e6, lat(1.5, "simple_cnn", flagged=True))  # latency.json before ratio_why
    text = " ".join(findings([cnn, small, old]))
    assert "cnn_tr_small (interval ±15% > ±3% over 550 rounds)" in text and "old (interval ±13% over 550 rounds)" in text
    assert "too few rounds to rank by" not in text
