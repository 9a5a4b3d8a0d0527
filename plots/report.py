"""``render(out, runs, groups)``: every figure and table of a comparison, tied together by ``index.md`` and
``index.html`` (the same page, self-contained, with a sortable table), from the runs' files alone.

What needs the runs' models (attention and feature maps, latency, FLOPs of old runs) is measured by
``evaluate.compare`` first, which then calls ``render``; ``python -m plots`` renders what the files hold
(``latency.json`` in the output directory included).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from core.cli import run_cli
from core.errors import UserError
from core.lock import DirLock
from core.log import get_logger
from plots import curves, html, table, tradeoff, tune
from plots.findings import findings
from plots.page import Figure, Section, write
from plots.runs import Group, Run, find_runs, group_runs, read_latency

log = get_logger(__name__)


def _slug(label: str) -> str:  # a file name's part
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", label).strip("_") or "run"


def _confusions(groups: list[Group]) -> list[Figure]:
    """Confusion matrices that ``main.py --eval`` wrote into the runs (``confusion_best.png``, ``_last``)."""
    found = []
    for g in groups:
        for run in g.runs:
            for which in ("best", "last"):
                path = run.path / f"confusion_{which}.png"
                if path.is_file():
                    found.append(Figure(f"{run.name} ({which}.pt)", f"{run.name}: confusion matrix of its {which}.pt "
                                        "on the validation split; rows are the true class, colour is the share "
                                        "of that class, numbers are counts.", path))
    return found


TABLE_NOTE = ("Accuracies are top-1 on the validation split, in %; over several seeds, mean ± sample std of the "
              "completed runs. Params are torchinfo's count. FLOPs are per image, counted by "
              "`torch.utils.flop_counter` (attention matmuls included; 2 FLOPs per multiply-add): inference is one "
              "forward pass, training a forward and a backward pass (no optimizer step). Time per epoch is "
              "training plus evaluation. Latency is inference on this machine's CPU with a fixed thread count "
              "(latency.json), measured side by side after warm-up: the median, and the interquartile range "
              "relative to it (IQR); ⚠ marks a number too noisy to trust, with the reason. \"÷ fastest\" divides "
              "each model's time by the fastest model's of the same round, ± its 95% interval: steady where "
              "milliseconds are not. results.csv and summary.csv also have torchinfo's mult-adds, which leave out "
              "attention.")


def collect(run_dirs: list[str | Path], out: str | Path, failures: list[dict[str, Any]] = ()
            ) -> tuple[Path, list[Run], list[Group], list[str]]:
    """The runs in ``run_dirs`` (run directories or folders of them) grouped by experiment; ``out`` made; notes
    on the runs left out. A run whose files cannot be used (unreadable, not UTF-8, text where a number
    belongs) is left out with a warning line naming the file and the field, unless it leaves nothing to
    compare: then that is the error."""
    left_out: list[str] = []
    runs = find_runs(run_dirs, left_out) if run_dirs else []
    if left_out and not runs and not failures:
        more = f" (and {len(left_out) - 1} other run(s) whose files cannot be used)" if len(left_out) > 1 else ""
        raise UserError(f"{left_out[0]}{more}; nothing left to compare")
    if not runs and not failures:
        raise UserError("nothing to compare: give run directories written by main.py")
    for problem in left_out:
        log.warning(f"warning: {problem}; left out of the comparison")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create ({e.strerror})") from None
    return out, runs, group_runs(runs), [f"Left out (its files cannot be used): {p}" for p in left_out]


def render(out: Path, runs: list[Run], groups: list[Group], *, failures: Optional[list[dict[str, Any]]] = None,
           command: Optional[str] = None, attention: list[Figure] = (), features: list[Figure] = (),
           notes: list[str] = ()) -> Path:
    """Write the comparison of ``runs`` (in ``groups``) into ``out`` and return the path of its ``index.md``
    (``index.html`` beside it is the same page for a browser).

    ``failures`` are runs of a sweep that never produced a comparable run (name, status, error,
    traceback); they are listed in the index, with tracebacks in ``failures.log``. ``attention`` and
    ``features``: the figures ``evaluate.maps`` drew; ``notes``: what could not be measured.
    """
    failures, notes = failures or [], list(notes)
    colour = curves.colours(groups)
    tuning = _tuning(out, notes)
    title = f"Comparison of {len(runs)} run{'s' * (len(runs) != 1)}"
    written, command = f"{datetime.now():%Y-%m-%d %H:%M}", command or "python -m plots"
    lines = [f"# {title}", "",
             f"Written {written} by `{command}`. "
             "Each experiment keeps its colour in every figure; repeats over seeds are shown as "
             "mean ± sample std.", ""]
    summary = findings(groups) if groups else []
    if summary:
        lines += ["## Summary", ""] + [f"- {s}" for s in summary] + [""]
    leading: list[Section] = []
    if groups:
        write(out / "results.md", table.markdown(groups) + "\n")
        write(out / "results.csv", table.runs_csv(groups))
        write(out / "summary.csv", table.summary_csv(groups))
        leading = _tradeoff_sections(groups, colour, out)
    for s in leading:
        lines += _section_lines(s, out)
    if groups:
        lines += ["## Results", "", table.markdown(groups), "", TABLE_NOTE, "",
                  "This table: [results.md](results.md). Per run: [results.csv](results.csv). "
                  "Per experiment (mean and std columns): [summary.csv](summary.csv)."
                  + (" The numbers behind the trade-off figures: [tradeoffs.csv](tradeoffs.csv)." if leading else "")
                  + (" Latency details: [latency.json](latency.json)." if (out / "latency.json").is_file()
                     and any(g.latency for g in groups) else ""), ""]
    if failures:
        lines += ["## Runs that did not complete", ""]
        lines += [f"- **{f['name']}** ({f['status']}): {f['error']}" for f in failures]
        logged = [f for f in failures if f.get("traceback")]
        if logged:
            write(out / "failures.log", "\n".join(f"== {f['name']}\n{f['traceback']}" for f in logged))
            lines += ["", "Tracebacks: [failures.log](failures.log)."]
        lines.append("")
    sections: list[Section] = [tune.section(tuning, groups, colour, out)] if tuning else []
    if groups:
        seeds = " (mean over seeds, ±1 std band)" if any(len(g.counted) > 1 for g in groups) else ""
        names = curves.names_note(groups)
        curve_figures = [
            Figure("Validation accuracy", f"Validation top-1 accuracy per epoch, every experiment on one axis{seeds}."
                   + names, curves.val_accuracy(groups, colour, out / "val_accuracy.png")),
            Figure("Training and validation loss", "Training loss (left) and validation loss (right) per epoch, "
                   f"on one scale{seeds}.{names}", curves.losses(groups, colour, out / "loss.png")),
            Figure("Convergence: training vs. validation loss", "Training (solid) vs. validation (dashed) loss per "
                   f"epoch, one panel per experiment: a widening gap is overfitting.{names}",
                   curves.convergence(groups, colour, out / "convergence.png")),
        ]
        sections += [Section(f.title, [f]) for f in curve_figures]
    if attention:
        sections.append(Section("Attention maps", list(attention)))
    if features:
        sections.append(Section("Feature maps of the first conv layers", list(features)))
    confusions = _confusions(groups)
    if confusions:
        sections.append(Section("Confusion matrices", confusions, "Written into the runs by "
                                "`python main.py --eval RUN_DIR`.", side_by_side=True))
    for s in sections:
        lines += _section_lines(s, out)
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if runs:
        lines += ["## Runs", "", "| experiment | run | seed | status | reason | directory |",
                  "|---|---|---|---|---|---|"]
        cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731  (a '|' in a name would split its row)
        lines += [f"| {cell(g.label)} | {cell(r.name)} | {r.seed} | {r.status} | {cell(r.reason)} | `{r.path}` |"
                  for g in groups for r in g.runs]
    index = out / "index.md"
    write(index, "\n".join(lines) + "\n")
    write(out / "index.html", html.page(
        title=title, written=written, command=command, groups=groups, table_note=TABLE_NOTE, failures=failures,
        failures_log=any(f.get("traceback") for f in failures), summary=summary, leading=leading,
        sections=sections, notes=notes))
    return index


def _tuning(out: Path, notes: list[str]) -> Optional[tune.Tuning]:
    """``out/tune.json`` (a tune: search's trials), None when there is none; one that cannot be used is a
    warning and a note, and the page goes without its tuning section."""
    try:
        return tune.read(out)
    except UserError as e:
        log.warning(f"warning: {e}; the comparison has no tuning section")
        notes.append(f"No tuning section: {e}")
        return None


def _section_lines(s: Section, out: Path) -> list[str]:
    lines = [f"## {s.title}", ""] + ([s.intro, ""] if s.intro else [])
    if s.table:
        cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731
        lines += ["| " + " | ".join(map(cell, s.table.head)) + " |",
                  "|" + "".join("---:|" if n else "---|" for n in s.table.numeric)]
        lines += ["| " + " | ".join(map(cell, row)) + " |" for row in s.table.rows] + [""]
    for f in s.figures:
        lines += ([f"### {f.title}", ""] if f.title != s.title else [])
        lines += [f"![{f.title}]({Path(os.path.relpath(f.path, out)).as_posix()})", "", f"*{f.caption}*", ""]
    return lines


def _tradeoff_sections(groups: list[Group], colour: dict, out: Path) -> list[Section]:
    """The figures that answer a sweep's question, first in the report, one set per dataset (accuracies of
    different datasets do not compete); their numbers go to tradeoffs.csv."""
    rows: list[dict[str, Any]] = []
    figures = []
    datasets = list(dict.fromkeys(g.first.dataset for g in groups))
    for dataset in datasets:
        mine = [g for g in groups if g.first.dataset == dataset]
        suffix, on = (f"_{_slug(dataset)}", f" on {dataset}") if len(datasets) > 1 else ("", "")
        seeds = max(len(g.counted) for g in mine)
        spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "one seed, so no error bars"
        hollow = "; a hollow point has no completed run" if not all(g.completed for g in mine) else ""
        for key in table.swept_keys(mine):
            if key == "tuned":  # tuned against untuned: the summary's sentence and the tuning section say it
                continue
            if len({json.dumps(g.swept.get(key)) for g in mine if key in g.swept}) < 2:
                continue
            path = out / f"accuracy_vs_{_slug(key)}{suffix}.png"
            order = "" if tradeoff.swept_numeric(mine, key) else \
                " (ordered by size: training FLOPs per image; ties in sweep order)"
            figures.append(Figure(f"Accuracy against {key}{on}", f"Best (left) and final (right) validation accuracy "
                                  f"against the swept {key}{order}, {spread}{hollow}.",
                                  tradeoff.swept_figure(mine, key, colour, path, rows)))
        if len(mine) > 1:
            path = tradeoff.tradeoffs(mine, colour, out / f"tradeoffs{suffix}.png", rows)
            if path is not None:
                figures.append(Figure(f"Accuracy against cost{on}", "Best validation accuracy against parameters, "
                                      "training FLOPs per image, time per epoch and CPU latency at batch 1 as a "
                                      "multiple of the fastest model's, timed in the same rounds (x bars: std over "
                                      "seeds for time, the ratio's 95% interval for latency), "
                                      f"{spread}. Ringed and joined: the Pareto front, the experiments no other "
                                      "beats on both accuracy and that cost; a hollow point (an unsteady latency, "
                                      "or no completed run) is left off it.", path))
    if not figures:
        return []
    write(out / "tradeoffs.csv", tradeoff.rows_csv(rows))
    return [Section("What size buys", figures)]


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Optional[list[str]]) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m plots",
        description="Render the comparison of finished runs from their files alone: a written summary, accuracy "
                    "against what was swept and against size, FLOPs and time, curves and a results table "
                    "(Markdown and CSV), tied together by DIR/index.md and DIR/index.html. Latency is shown where "
                    "DIR/latency.json has it. To also measure latency and draw attention and feature maps (which "
                    "run the models): python main.py --compare RUN_DIR... --out DIR.",
        epilog="Example: python -m plots runs/cnn_tr_small-* runs/simple_cnn-* --out comparisons/fmnist")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by main.py, or folders of them")
    p.add_argument("--out", required=True, metavar="DIR", help="where to write the figures, tables and index.md")
    args = p.parse_args(argv)
    out, runs, groups, notes = collect(args.runs, args.out)
    read_latency(out, groups)  # what an earlier comparison into DIR measured
    with DirLock(out, "comparison directory"):  # one writer at a time
        index = render(out, runs, groups, notes=notes, command=shlex.join(["python", "-m", "plots",
                                                                           *(sys.argv[1:] if argv is None else argv)]))
    print(f"comparison: {index}")
    return 0
