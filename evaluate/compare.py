"""A comparison of finished runs, measured and rendered: ``compare(run_dirs, out)`` counts the FLOPs old runs
did not record, times every experiment's inference latency side by side (``latency.json``), draws the
attention and feature maps from the runs' checkpoints, then renders the page from the run files
(``plots.report``). A multi-run call ends with it; ``python main.py --compare RUN_DIR... --out DIR`` runs it
on any runs."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from core.lock import DirLock
from evaluate.maps import inspect_groups
from evaluate.measure import LATENCY_BUDGET_S, fill_flops, measure_latencies
from plots.page import Figure
from plots.report import collect, render

DEFAULT_IMAGES = 6  # validation images per attention figure


def compare(run_dirs: list[str | Path], out: str | Path, *, failures: Optional[list[dict[str, Any]]] = None,
            images: int = DEFAULT_IMAGES, inspect_models: bool = True, latency: bool = False,
            latency_threads: int = 1, latency_budget_s: float = LATENCY_BUDGET_S,
            command: Optional[str] = None) -> Path:
    """Write the comparison of ``run_dirs`` into ``out`` and return the path of its ``index.md``.

    ``failures``: runs of a sweep that never produced a comparable run (name, status, error, traceback).
    ``inspect_models``: draw attention and feature maps (``images`` validation images per attention figure).
    ``latency``: measure each experiment's CPU inference latency with ``latency_threads`` threads, for up to
    ``latency_budget_s`` seconds per model and batch size.
    """
    out, runs, groups, notes = collect(run_dirs, out, failures or [])
    with DirLock(out, "comparison directory"):  # one writer at a time (a multi-run call holds it already)
        return _compare(out, runs, groups, notes, failures, images, inspect_models, latency, latency_threads,
                        latency_budget_s, command)


def _compare(out, runs, groups, notes, failures, images, inspect_models, latency, latency_threads, latency_budget_s,
             command) -> Path:
    notes += fill_flops(groups) if groups else []
    if latency and groups:
        notes += measure_latencies(groups, out, latency_threads, latency_budget_s)
    attention, features = [], []
    if inspect_models and groups:
        drawn_attention, drawn_features, inspect_notes = inspect_groups(groups, out, images)
        attention, features = [Figure(*f) for f in drawn_attention], [Figure(*f) for f in drawn_features]
        notes += inspect_notes
    return render(out, runs, groups, failures=failures, command=command, attention=attention, features=features,
                  notes=notes)


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m evaluate.compare`` (and ``python main.py --compare``): the comparison with every option."""
    from core.cli import run_cli

    return run_cli(_main, argv)


def _main(argv: Optional[list[str]]) -> int:
    import argparse
    import shlex
    import sys

    p = argparse.ArgumentParser(
        prog="python -m evaluate.compare",
        description="Compare finished runs: a written summary, accuracy against what was swept and against "
                    "size, FLOPs, time and latency, curves, a results table (Markdown and CSV), attention and "
                    "feature maps, tied together by DIR/index.md and DIR/index.html.",
        epilog="Example: python -m evaluate.compare runs/cnn_tr_small-* runs/simple_cnn-* --out comparisons/fmnist")
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
    from core.errors import UserError

    if args.images < 1:
        p.error("--images must be at least 1")
    if not 1 <= args.threads <= 1024:
        raise UserError(f"--threads must be between 1 and 1024, got {args.threads}")
    if not (0 < args.latency_budget <= 3600):  # also refuses nan and inf
        raise UserError(f"--latency-budget must be a number of seconds in (0, 3600], got {args.latency_budget}")
    index = compare(args.runs, args.out, images=args.images, inspect_models=not args.no_maps, latency=args.latency,
                    latency_threads=args.threads, latency_budget_s=args.latency_budget,
                    command=shlex.join(["python", "-m", "evaluate.compare", *(sys.argv[1:] if argv is None else argv)]))
    print(f"comparison: {index}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
