"""``compare(run_dirs, out)``: every figure and table of a comparison, tied together by ``index.md`` and
``index.html`` (the same page, self-contained, with a sortable table)."""
from __future__ import annotations

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
from plots import curves, html, table
from plots.runs import Group, find_runs, group_runs

DEFAULT_IMAGES = 4


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


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", label).strip("_") or "run"


def _inspect(groups: list[Group], out: Path, images: int, log) -> tuple[list, list, list[str]]:
    """Attention and feature-map figures, one per experiment (its first run with a checkpoint)."""
    from plots import maps as inspect

    attention, features, notes = [], [], []
    cache: dict = {}
    for g in groups:
        run = next((r for r in g.runs if r.checkpoint() is not None), None)
        if run is None:
            notes.append(f"{g.label}: no checkpoint (output.checkpoints was off or the run stopped before "
                         f"its first epoch), so no attention or feature maps")
            continue
        try:
            model = inspect.load_model(run)
            sample = inspect.load_sample(run, images, cache)
            slug = _slug(g.label)
            if inspect.has_attention(model):
                path = inspect.attention_figure(run, g.label, model, sample, out / f"attention_{slug}.png")
                attention.append(Figure(g.label, f"{g.label} ({run.model}): {len(sample.labels)} validation images "
                                        "(rows), the last layer's attention (mean over heads) and the rollout "
                                        "across layers; brighter = more attention.", path))
            path = inspect.feature_figure(run, g.label, model, sample, out / f"features_{slug}.png")
            if path is not None:
                features.append(Figure(g.label, f"{g.label} ({run.model}): the first {inspect.FEATURE_CHANNELS} "
                                       f"channels of its first {inspect.FEATURE_LAYERS} conv layers on one "
                                       "validation image.", path))
        except (UserError, FileNotFoundError, RuntimeError, ValueError) as e:
            notes.append(f"{g.label}: attention/feature maps skipped ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})")
            log(f"warning: {notes[-1]}")
    return attention, features, notes


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


def _measure_latency(groups: list[Group], log) -> list[str]:
    """Inference latency of every run with a checkpoint, on the CPU, into its results (in memory only)."""
    import torch

    from data import get_spec
    from models.measure import latency_ms
    from plots import maps

    notes = []
    cpu = torch.device("cpu")
    for g in groups:
        for run in g.runs:
            if run.checkpoint() is None:
                notes.append(f"{run.name}: no checkpoint, so no latency")
                continue
            try:
                model = maps.load_model(run)
            except (UserError, RuntimeError, ValueError) as e:
                notes.append(f"{run.name}: latency skipped ({type(e).__name__}: {e})")
                continue
            spec = get_spec(run.dataset)
            batch = int(run.config.get("train", {}).get("eval_batch_size", 512))
            run.results.update(latency_ms_batch1=latency_ms(model, spec, cpu, 1),
                               latency_ms_batched=latency_ms(model, spec, cpu, batch),
                               latency_batch_size=batch)
            log(f"latency {run.name}: {run.results['latency_ms_batch1']:.2f} ms at batch 1")
    return notes


def compare(run_dirs: list[str | Path], out: str | Path, *, failures: Optional[list[dict[str, Any]]] = None,
            images: int = DEFAULT_IMAGES, inspect_models: bool = True, latency: bool = False,
            command: Optional[str] = None, log=print) -> Path:
    """Write the comparison of ``run_dirs`` into ``out`` and return the path of its ``index.md``
    (``index.html`` beside it is the same page for a browser).

    ``failures`` are runs of a sweep that never produced a comparable run (name, status, error,
    traceback); they are listed in the index, with tracebacks in ``failures.log``.
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
    latency_notes = _measure_latency(groups, log) if latency else []
    colour = curves.colours(groups)
    title = f"Comparison of {len(runs)} run{'s' * (len(runs) != 1)}"
    written, command = f"{datetime.now():%Y-%m-%d %H:%M}", command or "python -m plots"
    table_note = ("Accuracies are top-1 on the validation split, in %. Time per epoch is training plus "
                  "evaluation. Latency (with `--latency`) is inference per image on this machine's CPU "
                  "after warm-up, median over repeats, at batch 1 and at the run's `train.eval_batch_size`, "
                  "from each run's checkpoint. Mult-adds are torchinfo's, per image (they leave out the "
                  "attention matmuls).")
    lines = [f"# {title}", "",
             f"Written {written} by `{command}`. "
             "Each experiment keeps its colour in every figure; repeats over seeds are shown as "
             "mean ± sample std.", ""]
    if groups:
        atomic_write(out / "results.md", table.markdown(groups) + "\n")
        atomic_write(out / "results.csv", table.runs_csv(groups))
        atomic_write(out / "summary.csv", table.summary_csv(groups))
        lines += ["## Results", "", table.markdown(groups), "", table_note, "",
                  "This table: [results.md](results.md). Per run: [results.csv](results.csv). "
                  "Per experiment (mean and std columns): [summary.csv](summary.csv).", ""]
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
        seeds = " (mean over seeds, ±1 std band)" if any(len(g.runs) > 1 for g in groups) else ""
        curve_figures = [
            Figure("Validation accuracy", f"Validation top-1 accuracy per epoch, every experiment on one axis{seeds}.",
                   curves.val_accuracy(groups, colour, out / "val_accuracy.png")),
            Figure("Training loss and validation accuracy", "Training loss (left) and validation accuracy (right) "
                   f"per epoch, side by side{seeds}.", curves.loss_and_accuracy(groups, colour, out / "loss_accuracy.png")),
            Figure("Convergence: training vs. validation loss", "Training (solid) vs. validation (dashed) loss per "
                   "epoch, one panel per experiment: a widening gap is overfitting.",
                   curves.convergence(groups, colour, out / "convergence.png")),
        ]
        sections += [Section(f.title, [f]) for f in curve_figures]
    notes: list[str] = []
    if groups and inspect_models:
        attention, features, notes = _inspect(groups, out, images, log)
        if attention:
            sections.append(Section("Attention maps", attention, "Last layer (mean over heads) and attention rollout "
                                    "across layers, on the same validation images for every run of a dataset.",
                                    side_by_side=True))
        if features:
            sections.append(Section("Feature maps of the first conv layers", features))
    confusions = _confusions(groups)
    if confusions:
        sections.append(Section("Confusion matrices", confusions, "Written into the runs by "
                                "`python main.py --eval RUN_DIR`.", side_by_side=True))
    for s in sections:
        lines += [f"## {s.title}", ""] + ([s.intro, ""] if s.intro else [])
        for f in s.figures:
            lines += ([f"### {f.title}", ""] if f.title != s.title else [])
            lines += [f"![{f.title}]({Path(os.path.relpath(f.path, out)).as_posix()})", "", f"*{f.caption}*", ""]
    notes = latency_notes + notes
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if runs:
        lines += ["## Runs", "", "| experiment | run | status | directory |", "|---|---|---|---|"]
        lines += [f"| {g.label} | {r.name} | {r.status} | `{r.path}` |" for g in groups for r in g.runs]
    index = out / "index.md"
    atomic_write(index, "\n".join(lines) + "\n")
    atomic_write(out / "index.html", html.page(
        title=title, written=written, command=command, groups=groups, table_note=table_note, failures=failures,
        failures_log=any(f.get("traceback") for f in failures), sections=sections, notes=notes))
    return index


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Optional[list[str]]) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m plots",
        description="Compare finished runs: accuracy and loss curves, a results table (Markdown and CSV), "
                    "attention and feature maps, tied together by DIR/index.md.",
        epilog="Example: python -m plots runs/cnn_tr_small-* runs/simple_cnn-* --out comparisons/fmnist")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by main.py, or folders of them")
    p.add_argument("--out", required=True, metavar="DIR", help="where to write the figures, tables and index.md")
    p.add_argument("--images", type=int, default=DEFAULT_IMAGES,
                   help=f"validation images per attention figure (default {DEFAULT_IMAGES})")
    p.add_argument("--no-maps", action="store_true",
                   help="skip attention and feature maps (they rebuild each model and read the dataset)")
    p.add_argument("--latency", action="store_true",
                   help="measure each run's inference latency on this machine's CPU (from its checkpoint)")
    args = p.parse_args(argv)
    if args.images < 1:
        p.error("--images must be at least 1")
    index = compare(args.runs, args.out, images=args.images, inspect_models=not args.no_maps, latency=args.latency,
                    command="python -m plots " + " ".join(sys.argv[1:] if argv is None else argv))
    print(f"comparison: {index}")
    return 0
