"""The tuning side of a comparison (issue 26), from files written by hand in the formats launch/tune.py writes:
tune.json in the comparison directory, and the runs of each experiment at its best setting ("tuned") and at the
config's own values ("untuned"). No model is trained: the page reads files only."""
import json
import math
import statistics
from pathlib import Path

import pytest

from fixtures import built_once, call_main, log_lines, png_size, write_yaml
from plots import tune
from plots.runs import find_runs, group_runs

SWEEP = "sizes-fashion_mnist"
SMALL, MEDIUM = f"{SWEEP}-cnn_tr_small", f"{SWEEP}-cnn_tr_medium"
HOSTILE = "<b>x</b>"
MODELS = {"cnn_tr_small": (1.3e6, 4.3e8), "cnn_tr_medium": (2.1e6, 6.8e8)}  # params, training FLOPs per image
BEST = {  # experiment -> the best setting its search found
    SMALL: {"train.lr": 0.0021, "model.dropout": 0.1},
    MEDIUM: {"train.lr": 0.00083, "model.dropout": 0.2},
}
CONFIG = {"train.lr": 0.001, "model.dropout": 0.0}  # the config's own values: the untuned baseline's
# best val acc over seeds 0, 1, 2
ACC = {(SMALL, True): [84.0, 84.6, 83.9], (SMALL, False): [82.1, 82.9, 82.5],
       (MEDIUM, True): [85.2, 85.9, 85.5], (MEDIUM, False): [83.0, 84.1, 83.3]}


def write_run(d: Path, *, experiment: str, model: str, seed: int, settings: dict, best: float, status="completed",
              results: dict = (), epochs: int = 3) -> Path:
    """A run directory as train/ leaves it: config.yaml, metrics.jsonl, results.json."""
    d.mkdir(parents=True)
    write_yaml(d / "config.yaml", {"name": d.name, "seed": seed, "model": {"name": model,
                                                                          "dropout": settings["model.dropout"]},
                                   "data": {"name": "fashion_mnist"}, "train": {"lr": settings["train.lr"]}})
    accs = [best - 3.0 + 1.5 * e for e in range(epochs)]  # rising to `best`
    (d / "metrics.jsonl").write_text("".join(json.dumps(
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_acc": a, "epoch_time_s": 30.0 + e + seed}) + "\n"
        for e, a in enumerate(accs, 1)))
    params, flops = MODELS[model]
    (d / "results.json").write_text(json.dumps({
        "name": d.name, "status": status, "epochs": 3, "experiment": experiment, "params": params,
        "flops_inference": flops / 3, "flops_training": flops, "best_val_acc": max(accs), "final_val_acc": accs[-1],
        "time_per_epoch_s": 31.0 + seed, **dict(results)}))
    return d


def write_finals(root: Path) -> Path:
    """Each experiment at its best setting and at the config's own values, over seeds 0..2."""
    for experiment, tuned in ACC:
        model = experiment.rsplit("-", 1)[1]
        settings = BEST[experiment] if tuned else CONFIG
        mark = "tuned" if tuned else "untuned"
        for seed, best in enumerate(ACC[experiment, tuned]):
            extra = {"tuned": {"study": experiment, "trial": 3, "params": settings, "value": 84.1, "trials": 8}} \
                if tuned else {}
            write_run(root / f"{experiment}-{mark}-seed={seed}", experiment=f"{experiment}-{mark}", model=model,
                      seed=seed, settings=settings, best=best,
                      results={"experiment": f"{experiment}-{mark}", **extra,
                               "swept": {"model.name": model, "tuned": tuned, "seed": seed}})
    return root


def trial(number, state, value, lr, dropout, epochs, error=None):
    return {"number": number, "state": state, "value": value, "params": {"train.lr": lr, "model.dropout": dropout},
            "epochs": epochs, "run_dir": f"/abs/trials/{number}", "error": error}


def experiment(name, trials, best):
    counts = {k: sum(t["state"] == s for t in trials)
              for k, s in (("complete", "COMPLETE"), ("pruned", "PRUNED"), ("failed", "FAIL"), ("running", "RUNNING"))}
    run = sum(t["epochs"] or 0 for t in trials)
    saved = sum(4 - t["epochs"] for t in trials if t["state"] == "PRUNED")
    b = next(t for t in trials if t["number"] == best) if best is not None else None
    return {"name": name, "study": name, "epochs_per_trial": 4,
            "best": b and {k: b[k] for k in ("number", "value", "params", "run_dir")},
            "trials": trials, "counts": counts, "epochs_run": run, "epochs_saved": saved}


def tune_json(out: Path) -> dict:
    data = {
        "metric": "best_val_acc", "direction": "maximize", "storage": f"sqlite:///{out}/study.db",
        "space": {"train.lr": {"log_uniform": [0.0001, 0.01]}, "model.dropout": {"choice": [0.0, 0.1, 0.2]}},
        "budget": {"trials": 8, "epochs": None, "minutes": None}, "pruner": "hyperband",
        "experiments": [
            experiment(SMALL, [trial(0, "COMPLETE", 83.2, 0.0005, 0.0, 4), trial(1, "PRUNED", 61.5, 0.0093, 0.2, 1),
                               trial(2, "COMPLETE", 82.7, 0.0002, 0.1, 4), trial(3, "COMPLETE", 84.1, 0.0021, 0.1, 4),
                               trial(4, "PRUNED", 70.2, 0.00012, 0.0, 2), trial(5, "FAIL", None, 0.0071, 0.2, 1,
                                                                               "RuntimeError: boom"),
                               trial(6, "RUNNING", None, 0.003, 0.1, 2)], 3),
            experiment(MEDIUM, [trial(0, "COMPLETE", 84.9, 0.00083, 0.2, 4), trial(1, "PRUNED", 79.0, 0.004, 0.0, 2),
                                trial(2, "COMPLETE", 84.0, 0.0011, 0.1, 4)], 0),
            experiment(HOSTILE, [trial(0, "PRUNED", 55.0, 0.001, 0.0, 1)], None),  # no completed trial: no best
        ]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune.json").write_text(json.dumps(data))
    return data


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """``python -m plots`` over the finals, into a directory that holds tune.json: (out, tune.json's data, log);
    rendered once per session (``built_once``): the tests only read it."""
    def build(tmp: Path):
        runs = write_finals(tmp / "runs")
        out = tmp / "cmp"
        data = tune_json(out)
        from plots.report import main

        with log_lines() as lines:
            assert main([str(runs), "--out", str(out)]) == 0
        return out, data, list(lines)

    return built_once(tmp_path_factory, "tune_page", build)


def section(text: str, title: str) -> str:
    return text.split(f"\n## {title}\n")[1].split("\n## ")[0]


def table_rows(md: str) -> dict[str, list[str]]:
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in md.splitlines() if line.startswith("| ")]
    return {r[0]: r for r in rows[1:]}


def test_figure_draws_every_trial_as_tune_json_says(page, tmp_path):
    out, data, _ = page
    tuning = tune.read(out)
    drawn: list[tune.Marker] = []
    colours = {e["name"]: (0.1, 0.2, 0.7, 1.0) for e in data["experiments"]}
    path = tune.figure(tuning, colours, tmp_path / "tuning.png", drawn)
    w, h = png_size(path)
    assert 1000 <= w <= 1800 and 300 <= h <= 1200, (w, h)  # two panels, scaled to the page's 1,400 px
    values = [t["value"] for e in data["experiments"] for t in e["trials"] if t["value"] is not None]
    choices = data["space"]["model.dropout"]["choice"]
    for e in data["experiments"]:
        for t in e["trials"]:
            mine = [m for m in drawn if m.experiment == e["name"] and m.trial == t["number"]]
            if t["state"] == "RUNNING":
                assert mine == []
                continue
            assert sorted(m.key for m in mine) == ["model.dropout", "train.lr"]
            for m in mine:
                assert m.value == t["params"][m.key] and m.state == t["state"]
                if m.key == "train.lr":
                    assert m.x == t["params"]["train.lr"]
                else:  # the choice's index, the experiments side by side around it
                    assert abs(m.x - choices.index(t["params"]["model.dropout"])) < 0.3
                assert m.best == (e["best"] is not None and e["best"]["number"] == t["number"])
                if t["state"] == "FAIL":
                    assert m.marker == "x" and m.y < min(values)  # at the foot of the panel
                else:
                    assert m.marker == "o" and m.y == t["value"]
                    assert (m.face == "none") == (t["state"] == "PRUNED"), m  # pruned: hollow
                    if t["state"] == "COMPLETE":
                        assert m.face == pytest.approx(colours[e["name"]])
    assert len(drawn) == 2 * sum(t["state"] != "RUNNING" for e in data["experiments"] for t in e["trials"])


def test_figure_is_in_the_tuned_groups_colours(page):
    out, data, _ = page
    from plots.curves import PALETTE, colour_slot, colours

    groups = group_runs(find_runs([out.parent / "runs"]))
    page_colours = colours(groups)
    mine = tune.experiment_colours(tune.read(out), groups, page_colours)
    assert mine[SMALL] == page_colours[f"{SMALL} (tuned)"] and mine[MEDIUM] == page_colours[f"{MEDIUM} (tuned)"]
    assert mine[HOSTILE] == PALETTE[colour_slot(HOSTILE)]  # no group: its own colour, from its name


def test_tuning_table_numbers_are_tune_jsons(page):
    out, data, lines = page
    text = (out / "index.md").read_text()
    part = section(text, "Tuning")
    assert "to maximize best_val_acc; pruner: hyperband; budget: 8 trials." in part
    assert "`train.lr` (log-uniform in [0.0001, 0.01]), `model.dropout` (one of 0, 0.1, 0.2)" in part
    assert "](tuning.png)" in part and png_size(out / "tuning.png")
    rows = table_rows(part)
    assert list(rows) == [SMALL, MEDIUM, HOSTILE]
    for e in data["experiments"]:
        row, c, best = rows[e["name"]], e["counts"], e["best"]
        assert row[1:3] == ([f"{best['params']['train.lr']:.3g}", f"{best['params']['model.dropout']:.3g}"]
                            if best else ["–", "–"])
        assert row[3] == (f"{best['value']:.2f} (#{best['number']})" if best else "– (none completed)")
        assert row[4].startswith(f"{c['complete']} / {c['pruned']} / {c['failed']}")
        assert row[4].endswith(f"(+{c['running']} running)") == (c["running"] > 0)
        assert row[5] == f"{e['epochs_run']} ({e['epochs_saved']} saved)"
    assert rows[SMALL][1:6] == ["0.0021", "0.1", "84.10 (#3)", "3 / 2 / 1 (+1 running)", "18 (5 saved)"]
    trials = (out / "tuning.csv").read_text().splitlines()
    assert len(trials) == 1 + sum(len(e["trials"]) for e in data["experiments"])
    assert not [line for line in lines if "tune.json" in line]  # no warning


def test_tuned_and_untuned_groups_are_labelled_and_the_table_shows_tuned_values(page):
    out, _, _ = page
    groups = group_runs(find_runs([out.parent / "runs"]))
    assert sorted(g.label for g in groups) == sorted(f"{e} ({m})" for e in (SMALL, MEDIUM)
                                                     for m in ("tuned", "untuned"))
    results = table_rows(section((out / "index.md").read_text(), "Results"))
    assert results[f"{SMALL} (tuned)"][1] == "train.lr=0.0021, model.dropout=0.1"
    assert results[f"{MEDIUM} (tuned)"][1] == "train.lr=0.00083, model.dropout=0.2"
    assert results[f"{SMALL} (untuned)"][1] == "no"
    html = (out / "index.html").read_text()
    assert "Experiments named without the prefix they share: <code>sizes-fashion_mnist-</code>" in html
    assert ">cnn_<wbr>tr_<wbr>small (tuned)</td>" in html


def verdict_text(untuned: list[float], tuned: list[float]) -> str:
    """difference(untuned, tuned) computed here: the mean gain ± its standard error."""
    diff = statistics.fmean(tuned) - statistics.fmean(untuned)
    se = math.sqrt(statistics.variance(tuned) / len(tuned) + statistics.variance(untuned) / len(untuned))
    return f"{diff:+.2f} ± {se:.2f} points"


def test_summary_says_what_tuning_changed_and_at_which_settings(page):
    out, _, _ = page
    summary = section((out / "index.md").read_text(), "Summary")
    for name, exp in (("cnn_tr_small", SMALL), ("cnn_tr_medium", MEDIUM)):
        best = BEST[exp]
        line = next(s for s in summary.splitlines() if f"changed {name}'s best val acc by" in s)
        assert line.startswith(f"- Tuning train.lr and model.dropout (best train.lr={best['train.lr']:.3g}, "
                               f"model.dropout={best['model.dropout']:.3g}) changed {name}'s best val acc by "
                               f"{verdict_text(ACC[exp, False], ACC[exp, True])}"), line
    steps = {s.split(":")[0] for s in summary.splitlines() if " vs " in s}
    assert steps == {"- cnn_tr_medium vs cnn_tr_small at tuned settings",
                     "- cnn_tr_medium vs cnn_tr_small at the config's settings"}, summary
    tuned_step = next(s for s in summary.splitlines() if "at tuned settings:" in s)
    assert verdict_text(ACC[SMALL, True], ACC[MEDIUM, True]) in tuned_step
    assert "tuned=" not in summary and "True" not in summary


def test_html_has_the_section_and_escapes_experiment_names(page):
    out, _, _ = page
    text = (out / "index.html").read_text()
    assert '<h2 id="tuning">Tuning</h2>' in text and '<a href="#tuning">Tuning</a>' in text
    assert 'id="tuning-table"' in text and "Tuning: validation accuracy against the searched value" in text
    assert HOSTILE not in text and "&lt;b&gt;x&lt;/b&gt;" in text
    assert text.count('<img src="data:image/png;base64,') == text.count("<img ")  # nothing loaded from elsewhere
    assert text.index('id="results"') < text.index('id="tuning"') < text.index('id="validation-accuracy"')


BAD = {
    "not JSON": (lambda out: (out / "tune.json").write_text('{"metric": '), "cannot read"),
    "not UTF-8": (lambda out: (out / "tune.json").write_bytes(b'{"metric": "\xff"}'), "not UTF-8 text (byte 0xff"),
    "wrong type": (lambda out: edit(out, lambda d: d["experiments"][0]["trials"][1].update(value="61.5")),
                   "experiments[0].trials[1]: value: expected a number or null, got '61.5' (str)"),
    "missing key": (lambda out: edit(out, lambda d: d.pop("metric")), "tune.json: metric: missing"),
    "unknown distribution": (lambda out: edit(out, lambda d: d["space"].update({"train.lr": {"loguniform": [1, 2]}})),
                             "space.train.lr: expected one of log_uniform, uniform, int, log_int, choice"),
    "a value outside its choices": (
        lambda out: edit(out, lambda d: d["experiments"][1]["trials"][1]["params"].update({"model.dropout": 0.5})),
        "experiments[1].trials[1].params: model.dropout: expected one of 0, 0.1, 0.2, got 0.5"),
}


def edit(out: Path, change) -> None:
    data = tune_json(out)
    change(data)
    (out / "tune.json").write_text(json.dumps(data))


@pytest.mark.parametrize("bad", list(BAD))
def test_a_bad_tune_json_is_one_line_naming_the_field(tmp_path, bad):
    from core.errors import UserError

    write_bad, message = BAD[bad]
    out = tmp_path / "cmp"
    out.mkdir()
    write_bad(out)
    with pytest.raises(UserError) as e:
        tune.read(out)
    assert message in str(e.value) and "\n" not in str(e.value), e.value


def test_a_bad_tune_json_is_one_warning_and_the_page_renders_without_it(unsaved_figures, tmp_path, capsys):
    write_bad, message = BAD["wrong type"]
    run = write_run(tmp_path / "runs" / "one", experiment="one", model="cnn_tr_small", seed=0, settings=CONFIG,
                    best=80.0)
    out = tmp_path / "cmp"
    out.mkdir()
    write_bad(out)
    with log_lines() as lines:
        p = call_main(capsys, run, "--out", out, module="plots")
    assert p.returncode == 0 and "Traceback" not in p.stderr
    warnings = [line for line in lines if "tune.json" in line]
    assert len(warnings) == 1 and message in warnings[0] and warnings[0].count("\n") == 0, warnings
    text = (out / "index.md").read_text()
    assert "## Results" in text and "## Tuning" not in text and not (out / "tuning.png").exists()
    assert f"No tuning section: {out / 'tune.json'}" in section(text, "Notes")
    assert "tuning-table" not in (out / "index.html").read_text()


def test_a_pruned_trial_passed_as_a_run_is_listed_not_averaged(tmp_path):
    from plots.findings import findings
    from plots.table import summary_rows

    done = write_run(tmp_path / "done", experiment="x", model="cnn_tr_small", seed=0, settings=CONFIG, best=80.0)
    pruned = write_run(tmp_path / "pruned", experiment="x", model="cnn_tr_small", seed=1, settings=CONFIG, best=60.0,
                       status="pruned", epochs=1,
                       results={"trial": {"study": "x", "number": 4, "params": {"train.lr": 0.001}}})
    (g,) = group_runs(find_runs([done, pruned]))
    assert [r.path for r in g.counted] == [done] and g.values("best_val_acc") == [80.0]
    assert g.runs[1].reason == "pruned by the tuning search after epoch 1 of 3 (trial 4 of x)"
    assert summary_rows([g])[0]["status"] == "1 completed, 1 pruned"
    assert "Not in the means: pruned (pruned)." in findings([g])
    (alone,) = group_runs(find_runs([pruned]))
    assert "No completed run, so not ranked (their numbers are from stopped runs): x (pruned)." in findings([alone])


@pytest.mark.system
def test_the_tuning_section_fits_a_1400_px_window(page):
    """In headless Chromium: the page with its tuning section scrolls sideways nowhere at 1400 px, its images
    decode, and no JS error."""
    from test_report_html import attribute, browse

    out, _, _ = page
    dom = browse((out / "index.html").as_uri(), "--window-size=1400,900", "--dump-dom").stdout
    assert attribute(dom, "html", "data-js-errors") == ""
    assert attribute(dom, "body", "data-overflow-x") == "page:0 results-table:0 tuning-table:0 runs-table:0"
    ok, total = attribute(dom, "body", "data-images-ok").split("/")
    assert ok == total and int(total) >= 6
