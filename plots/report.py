"""``compare(run_dirs, out)``: every figure and table of a comparison, tied together by ``index.md`` and
``index.html`` (the same page, self-contained, with a sortable table)."""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from core.cli import run_cli
from core.errors import UserError
from core.files import atomic_write
from plots import curves, html, table, tradeoff
from plots.findings import findings
from plots.runs import Group, find_runs, group_runs

DEFAULT_IMAGES = 6
LATENCY_BATCH = 64  # the "batched" latency: per image, at this batch size
LATENCY_BUDGET_S = 3.0  # seconds of timing per model and batch size, at most (fewer once the spread is small)


@dataclass
class Figure:
    title: str
    caption: str  # one line: what the figure shows
    path: Path


@dataclass
class Section:
    """A heading of the index with its figures (a figure titled like its section gets no heading of its own)."""

    title: str
    figures: list[Figure] = field(default_factory=list)
    intro: str = ""
    side_by_side: bool = False  # narrow, tall figures (one per experiment): two to a row in index.html


def _slug(label: str) -> str:  # a file name's part
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", label).strip("_") or "run"


def _inspect(groups: list[Group], out: Path, images: int, log) -> tuple[list[Figure], list[Figure], list[str]]:
    """The attention figure (every attention model side by side) and the feature figure (only where conv
    stems differ), one each per dataset: plots/maps.py."""
    from plots import maps

    attention, features, notes = maps.inspect_groups(groups, out, images, log)
    return [Figure(*f) for f in attention], [Figure(*f) for f in features], notes


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


def _fill_flops(groups: list[Group], log) -> list[str]:
    """FLOPs per image for runs that predate their recording (results.json ``flops_*``), counted here from the
    config (they do not depend on the weights); kept in memory only."""
    from config import from_dict
    from data import get_spec
    from models import build_model
    from models.measure import flops_per_image

    notes = []
    for g in groups:
        if all(r.results.get("flops_training") is not None for r in g.runs):
            continue
        try:
            cfg = from_dict(g.first.config)
            flops = flops_per_image(build_model(cfg, get_spec(cfg.data.name)), get_spec(cfg.data.name))
        except (UserError, RuntimeError, ValueError) as e:
            notes.append(f"{g.label}: FLOPs not counted ({type(e).__name__}: {e})")
            continue
        for r in g.runs:
            r.results.setdefault("flops_inference", flops.inference)
            r.results.setdefault("flops_training", flops.training)
        log(f"{g.label}: FLOPs counted from its config (its runs predate recording them)")
    return notes


def _measure_latency(groups: list[Group], out: Path, threads: int, budget_s: float, log) -> list[str]:
    """Inference latency of every experiment on this machine's CPU, at batch 1 and at ``LATENCY_BATCH``, with
    ``threads`` torch threads. The models of one dataset are timed side by side, in interleaved rounds
    (models.measure.measure_latency), so a change in the machine's load hits them alike. One model per
    experiment: its seeds share the architecture, and so the cost; the weights of its first checkpoint
    when there is one (the cost does not depend on them, so runs without checkpoints are timed too).
    Recorded on each group and in ``latency.json``."""
    import platform

    import torch

    from config import from_dict
    from data import get_spec
    from models import build_model
    from models.measure import measure_latency
    from plots import maps

    notes: list[str] = []
    models: dict[str, dict[str, Any]] = {}
    for g in groups:
        run = next((r for r in g.runs if r.checkpoint() is not None), g.first)
        try:
            model = maps.load_model(run) if run.checkpoint() is not None else \
                build_model(from_dict(run.config), get_spec(run.dataset))
            models.setdefault(run.dataset, {})[g.label] = model.eval()
        except (UserError, RuntimeError, ValueError) as e:
            notes.append(f"{g.label}: latency skipped ({type(e).__name__}: {e})")
    by_label = {g.label: g for g in groups}
    for dataset, chosen in models.items():
        spec = get_spec(dataset)
        for which, batch in (("batch1", 1), ("batched", LATENCY_BATCH)):
            log(f"latency on {dataset} at batch {batch}, {threads} thread(s): {len(chosen)} model(s) side by side")
            try:
                measured = measure_latency(chosen, spec, batch=batch, threads=threads, budget_s=budget_s * len(chosen))
            except (RuntimeError, MemoryError, ValueError) as e:  # e.g. out of memory at batch 64
                first = (str(e).strip().splitlines() or [""])[0]
                notes.append(f"{dataset}: latency at batch {batch} not measured ({type(e).__name__}: {first})")
                log(f"warning: {notes[-1]}")
                continue
            for label, lat in measured.items():
                by_label[label].latency[which] = lat.to_dict()
    measured = {g.label: g.latency for g in groups if g.latency}
    if measured:
        atomic_write(out / "latency.json", json.dumps({
            "device": "cpu", "threads": threads, "machine": _cpu_name() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "batched_size": LATENCY_BATCH,
            "experiments": measured}, indent=2) + "\n")
    return notes


def _cpu_name() -> str:
    """The CPU's model name on Linux ("AMD EPYC 7B13"); empty elsewhere (platform.processor() is often empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


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


def compare(run_dirs: list[str | Path], out: str | Path, *, failures: Optional[list[dict[str, Any]]] = None,
            images: int = DEFAULT_IMAGES, inspect_models: bool = True, latency: bool = False,
            latency_threads: int = 1, latency_budget_s: float = LATENCY_BUDGET_S, command: Optional[str] = None,
            log=print) -> Path:
    """Write the comparison of ``run_dirs`` into ``out`` and return the path of its ``index.md``
    (``index.html`` beside it is the same page for a browser).

    ``failures`` are runs of a sweep that never produced a comparable run (name, status, error,
    traceback); they are listed in the index, with tracebacks in ``failures.log``. ``latency``: measure
    each experiment's CPU inference latency with ``latency_threads`` threads, for up to ``latency_budget_s``
    seconds per model and batch size.
    """
    failures = failures or []
    runs = find_runs(run_dirs) if run_dirs else []
    if not runs and not failures:
        raise UserError("nothing to compare: give run directories written by main.py")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create ({e.strerror})") from None
    groups = group_runs(runs)
    notes = _fill_flops(groups, log) if groups else []
    if latency and groups:
        notes += _measure_latency(groups, out, latency_threads, latency_budget_s, log)
    colour = curves.colours(groups)
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
        atomic_write(out / "results.md", table.markdown(groups) + "\n")
        atomic_write(out / "results.csv", table.runs_csv(groups))
        atomic_write(out / "summary.csv", table.summary_csv(groups))
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
            atomic_write(out / "failures.log", "\n".join(f"== {f['name']}\n{f['traceback']}" for f in logged))
            lines += ["", "Tracebacks: [failures.log](failures.log)."]
        lines.append("")
    sections: list[Section] = []
    if groups:
        seeds = " (mean over seeds, ±1 std band)" if any(len(g.counted) > 1 for g in groups) else ""
        curve_figures = [
            Figure("Validation accuracy", f"Validation top-1 accuracy per epoch, every experiment on one axis{seeds}.",
                   curves.val_accuracy(groups, colour, out / "val_accuracy.png")),
            Figure("Training and validation loss", "Training loss (left) and validation loss (right) per epoch, "
                   f"on one scale{seeds}.", curves.losses(groups, colour, out / "loss.png")),
            Figure("Convergence: training vs. validation loss", "Training (solid) vs. validation (dashed) loss per "
                   "epoch, one panel per experiment: a widening gap is overfitting.",
                   curves.convergence(groups, colour, out / "convergence.png")),
        ]
        sections += [Section(f.title, [f]) for f in curve_figures]
    if groups and inspect_models:
        attention, features, inspect_notes = _inspect(groups, out, images, log)
        notes += inspect_notes
        if attention:
            sections.append(Section("Attention maps", attention))
        if features:
            sections.append(Section("Feature maps of the first conv layers", features))
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
    atomic_write(index, "\n".join(lines) + "\n")
    atomic_write(out / "index.html", html.page(
        title=title, written=written, command=command, groups=groups, table_note=TABLE_NOTE, failures=failures,
        failures_log=any(f.get("traceback") for f in failures), summary=summary, leading=leading,
        sections=sections, notes=notes))
    return index


def _section_lines(s: Section, out: Path) -> list[str]:
    lines = [f"## {s.title}", ""] + ([s.intro, ""] if s.intro else [])
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
    atomic_write(out / "tradeoffs.csv", tradeoff.rows_csv(rows))
    return [Section("What size buys", figures)]


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Optional[list[str]]) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m plots",
        description="Compare finished runs: a written summary, accuracy against what was swept and against "
                    "size, FLOPs, time and latency, curves, a results table (Markdown and CSV), attention and "
                    "feature maps, tied together by DIR/index.md and DIR/index.html.",
        epilog="Example: python -m plots runs/cnn_tr_small-* runs/simple_cnn-* --out comparisons/fmnist")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by main.py, or folders of them")
    p.add_argument("--out", required=True, metavar="DIR", help="where to write the figures, tables and index.md")
    p.add_argument("--images", type=int, default=DEFAULT_IMAGES,
                   help=f"validation images per attention figure (default {DEFAULT_IMAGES})")
    p.add_argument("--no-maps", action="store_true",
                   help="skip attention and feature maps (they rebuild each model and read the dataset)")
    p.add_argument("--latency", action=argparse.BooleanOptionalAction, default=True,
                   help="measure each experiment's inference latency on this machine's CPU, side by side "
                        "(default: on; --no-latency skips it)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for the latency measurement (default 1: the steadiest on a shared machine)")
    p.add_argument("--latency-budget", type=float, default=LATENCY_BUDGET_S, metavar="S",
                   help=f"at most S seconds of timing per model and batch size (default {LATENCY_BUDGET_S:g}); "
                        "it stops sooner once the spread is small")
    args = p.parse_args(argv)
    if args.images < 1:
        p.error("--images must be at least 1")
    if not 1 <= args.threads <= 1024:
        raise UserError(f"--threads must be between 1 and 1024, got {args.threads}")
    if not (0 < args.latency_budget <= 3600):  # also refuses nan and inf
        raise UserError(f"--latency-budget must be a number of seconds in (0, 3600], got {args.latency_budget}")
    index = compare(args.runs, args.out, images=args.images, inspect_models=not args.no_maps, latency=args.latency,
                    latency_threads=args.threads, latency_budget_s=args.latency_budget,
                    command="python -m plots " + " ".join(sys.argv[1:] if argv is None else argv))
    print(f"comparison: {index}")
    return 0
