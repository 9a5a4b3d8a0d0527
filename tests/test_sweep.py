"""Sweeps and multi-config calls: grid expansion, names, overrides, validation, failed points."""
import json
from pathlib import Path

import pytest
import yaml

from core.errors import UserError
from fixtures import call_main, tiny_raw, write_yaml
from config.sweep import expand, load_points
from launch.plan import check_points

ROOT = Path(__file__).resolve().parents[1]
BASE = {"model": {"name": "cnn_transformer"}, "data": {"name": "fashion_mnist"}}


def points(sweep, overrides=(), **top):
    return expand({**BASE, **top, "sweep": sweep}, "s.yaml", list(overrides))


def test_grid_expansion_names_count_and_values():
    ps = points({"model.num_layers": [1, 2, 3], "train.lr": [1.0e-3, 3.0e-4]})
    assert len(ps) == 6
    assert [p.name for p in ps[:3]] == ["cnn_transformer-fashion_mnist-num_layers=1-lr=0.001",
                                        "cnn_transformer-fashion_mnist-num_layers=1-lr=0.0003",
                                        "cnn_transformer-fashion_mnist-num_layers=2-lr=0.001"]
    assert len({p.name for p in ps}) == 6
    for p in ps:  # each point's config carries exactly its values, and its name
        assert p.cfg.model.kwargs == {"num_layers": p.values["model.num_layers"]}
        assert p.cfg.train.lr == p.values["train.lr"]
        assert p.cfg.name == p.name
    assert {(p.cfg.model.kwargs["num_layers"], p.cfg.train.lr) for p in ps} == {
        (d, lr) for d in (1, 2, 3) for lr in (1.0e-3, 3.0e-4)}


def test_nested_sections_equal_dotted_keys_and_name_prefix():
    nested = points({"model": {"num_layers": [1, 2]}, "seed": [0, 1]}, name="fm")
    dotted = points({"model.num_layers": [1, 2], "seed": [0, 1]}, name="fm")
    assert [p.name for p in nested] == [p.name for p in dotted] == [
        "fm-fashion_mnist-num_layers=1-seed=0", "fm-fashion_mnist-num_layers=1-seed=1", "fm-fashion_mnist-num_layers=2-seed=0", "fm-fashion_mnist-num_layers=2-seed=1"]
    assert [p.cfg.seed for p in nested] == [0, 1, 0, 1]


def test_bundles_set_keys_together_and_a_swept_model_names_itself():
    ps = points({"model": [{"name": "simple_cnn"}, {"name": "cnn_transformer", "num_layers": 2, "cnn_channels": 32}]})
    assert [p.name for p in ps] == ["simple_cnn-fashion_mnist", "cnn_transformer-fashion_mnist-num_layers=2-cnn_channels=32"]
    assert ps[0].cfg.model.name == "simple_cnn" and ps[0].cfg.model.kwargs == {}
    assert ps[1].cfg.model.kwargs == {"num_layers": 2, "cnn_channels": 32}


def test_same_leaf_name_uses_the_full_key():
    ps = points({"train.lr": [0.1], "model.lr": [1]})  # model.lr is invalid for the model, but names come first
    assert ps[0].name == "cnn_transformer-fashion_mnist-train.lr=0.1-model.lr=1"


def test_overrides_apply_to_every_point_and_can_extend_the_sweep():
    ps = points({"seed": [0, 1]}, overrides=["train.epochs=3", "sweep.train.batch_size=[16,32]"])
    assert len(ps) == 4 and {p.cfg.train.epochs for p in ps} == {3}
    assert {p.cfg.train.batch_size for p in ps} == {16, 32}


def test_without_a_sweep_one_point():
    (p,) = expand(BASE, "x.yaml")
    assert p.values == {} and p.name == "cnn_transformer-fashion_mnist"


@pytest.mark.parametrize("sweep, message", [
    ({"seed": 3}, "sweep.seed: expected a non-empty list of values"),
    ({"seed": []}, "sweep.seed: expected a non-empty list of values"),
    ([1, 2], "sweep: expected a mapping of dotted keys to lists of values"),
    ({"name": ["a", "b"]}, "sweep.name: cannot be swept"),
    ({"model": {}}, "sweep.model: empty section"),
    ({"model.num_layers": [1], "model": [{"num_layers": 2}]}, "sweep.model.num_layers: set by more than one"),
    ({"train.lr": ["fast"]}, "(sweep point cnn_transformer-fashion_mnist-lr=fast): train.lr: expected a number"),
    ({"train.epochs": [1, 0]}, "(sweep point cnn_transformer-fashion_mnist-epochs=0): train.epochs: got 0; must be in [1, 100,000]"),
    ({"train.nope": [1]}, "train.nope: unknown key"),
])
def test_bad_sweeps_are_one_line_user_errors(sweep, message):
    with pytest.raises(UserError) as e:
        points(sweep)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith("s.yaml")


def test_set_conflicting_with_a_swept_key():
    with pytest.raises(UserError, match=r"--set train.lr: also swept by sweep.train.lr"):
        points({"train.lr": [0.1, 0.2]}, overrides=["train.lr=0.3"])
    with pytest.raises(UserError, match=r"--set model: also swept by sweep.model.num_layers"):
        points({"model.num_layers": [1, 2]}, overrides=["model={name: simple_cnn}"])


def test_unknown_model_in_a_sweep_stops_before_training():
    ps = points({"model.name": ["simple_cnn", "simple_cnm"]})
    with pytest.raises(UserError, match=r"sweep point simple_cnm-fashion_mnist\): model.name: unknown model 'simple_cnm' "
                                        r"\(did you mean 'simple_cnn'\?\)"):
        check_points(ps)
    with pytest.raises(UserError, match=r"model.depth: not a parameter of model 'cnn_transformer'"):
        check_points(points({"model.depth": [1, 2]}))


def test_load_points_concatenates_files(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump({**BASE, "name": "a"}))
    b.write_text(yaml.safe_dump({**BASE, "name": "b", "sweep": {"seed": [0, 1]}}))
    assert [p.name for p in load_points([a, b])] == ["a-fashion_mnist", "b-fashion_mnist-seed=0", "b-fashion_mnist-seed=1"]


# ----------------------------------------------------------------------------- main.py, end to end


def tiny_config(path, root, out, **extra):
    return write_yaml(path, {**tiny_raw(root, out, name=None), **extra})


def test_sweep_with_a_failing_point_goes_on_and_compares(plain_comparisons, unsaved_figures, fmnist_root, tmp_path,
                                                         capsys, monkeypatch):
    import functools

    import launch.call

    # Latency timed for 0.2 s per model instead of 3 s: what is measured and recorded stays the same.
    monkeypatch.setattr(launch.call, "compare", functools.partial(launch.call.compare, latency_budget_s=0.2))
    # num_heads=3 does not divide the token width 16: that point fails when its model is built.
    cfg = tiny_config(tmp_path / "s.yaml", fmnist_root, tmp_path / "runs", name="tiny",
                      sweep={"model.num_heads": [2, 3], "seed": [0, 1]})
    p = call_main(capsys, "--cfg", cfg, "--out", tmp_path / "cmp", "--set", "output.latency=true",
                  "--set", "output.latency_threads=1")
    assert p.returncode == 1, p.stderr
    assert "2 of 4 runs completed" in p.stdout
    assert "failed  tiny-fashion_mnist-num_heads=3-seed=0: model 'vit': num_heads=3 does not divide" in p.stdout
    assert "Traceback" not in p.stdout + p.stderr
    runs = sorted((tmp_path / "runs").iterdir())
    assert [r.name.rsplit("-", 2)[0] for r in runs] == ["tiny-fashion_mnist-num_heads=2-seed=0",
                                                    "tiny-fashion_mnist-num_heads=2-seed=1"]
    for r in runs:
        assert json.loads((r / "results.json").read_text())["status"] == "completed"
    index = (tmp_path / "cmp" / "index.md").read_text()
    assert "tiny-fashion_mnist-num_heads=3-seed=1** (failed): model 'vit': num_heads=3" in index
    summary = (tmp_path / "cmp" / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("experiment,model.num_heads,model,dataset,runs,counted,seeds,completed,status,")
    assert len(summary) == 2 and summary[1].startswith("tiny-fashion_mnist-num_heads=2,2,vit,fashion_mnist,2,2,0 1,2,"
                                                       "completed,")
    latency = json.loads((tmp_path / "cmp" / "latency.json").read_text())  # the sweep's output.latency settings
    assert latency["threads"] == 1 and set(latency["experiments"]) == {"tiny-fashion_mnist-num_heads=2"}


def test_a_numeric_sweep_is_an_axis_of_its_comparison(plain_comparisons, unsaved_figures, fmnist_root, tmp_path, capsys):
    """A sweep of ViT depths over two seeds, as a user runs it: accuracy against depth from the runs' files, and
    the summary's step from depth 1 to 2."""
    import csv
    import statistics

    cfg = tiny_config(tmp_path / "s.yaml", fmnist_root, tmp_path / "runs", name="tiny",
                      sweep={"model.depth": [2, 1], "seed": [0, 1]})  # written out of order: the axis sorts
    p = call_main(capsys, "--cfg", cfg, "--out", tmp_path / "cmp")
    assert p.returncode == 0, p.stderr
    best: dict[int, list[float]] = {}
    for run in (tmp_path / "runs").iterdir():
        results = json.loads((run / "results.json").read_text())
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        best.setdefault(results["swept"]["model.depth"], []).append(max(m["val_acc"] for m in metrics))
    rows = [r for r in csv.DictReader((tmp_path / "cmp" / "tradeoffs.csv").open())
            if r["figure"] == "accuracy_vs_model.depth.png" and r["y_name"] == "best_val_acc"]
    assert sorted((int(r["x"]), float(r["y"]), float(r["y_std"])) for r in rows) == [
        (d, pytest.approx(statistics.fmean(best[d])), pytest.approx(statistics.stdev(best[d]))) for d in (1, 2)]
    assert (tmp_path / "cmp" / "accuracy_vs_model.depth.png").is_file()
    summary = (tmp_path / "cmp" / "index.md").read_text().split("## Summary")[1].split("\n## ")[0]
    diff = statistics.fmean(best[2]) - statistics.fmean(best[1])
    assert f"- depth=2 vs depth=1: {diff:+.2f} ± " in summary


def test_several_configs_then_a_comparison(unsaved_figures, fmnist_root, tmp_path, capsys):
    a = tiny_config(tmp_path / "a.yaml", fmnist_root, tmp_path / "runs", name="a")
    b = tiny_config(tmp_path / "b.yaml", fmnist_root, tmp_path / "runs", name="b")
    p = call_main(capsys, "--cfg", a, b, "--set", "train.epochs=1", "--set", "output.checkpoints=false")
    assert p.returncode == 0, p.stderr
    assert "2 of 2 runs completed" in p.stdout
    (cmp,) = [d for d in (tmp_path / "runs").iterdir() if d.name.startswith("compare-")]
    assert p.stdout.strip().splitlines()[-1] == f"comparison: {cmp / 'index.md'} (in a browser: {cmp / 'index.html'})"
    rows = (cmp / "results.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["a-fashion_mnist", "b-fashion_mnist"]
    assert "no checkpoint" in (cmp / "index.md").read_text()  # checkpoints off: maps skipped, and said so


def test_dry_run_of_a_sweep_lists_points_and_writes_nothing(fmnist_root, tmp_path, capsys):
    cfg = tiny_config(tmp_path / "s.yaml", fmnist_root, tmp_path / "runs", sweep={"model.num_heads": [2, 3]})
    p = call_main(capsys, "--cfg", cfg, "--dry-run")
    assert p.returncode == 2
    lines = p.stdout.splitlines()
    assert lines[0] == "2 runs:"
    assert "vit-fashion_mnist-num_heads=2  (model.num_heads=2)  vit on fashion_mnist:" in lines[1]
    assert "params" in lines[1] and "error: model 'vit': num_heads=3" in lines[2]
    assert not (tmp_path / "runs").exists()


def test_bad_sweep_exits_2_before_training(fmnist_root, tmp_path, capsys):
    cfg = tiny_config(tmp_path / "s.yaml", fmnist_root, tmp_path / "runs", sweep={"model.name": ["cnn_tr_smal"]})
    p = call_main(capsys, "--cfg", cfg)
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "unknown model 'cnn_tr_smal' (did you mean 'cnn_tr_small'?)" in p.stderr
    assert not (tmp_path / "runs").exists()
