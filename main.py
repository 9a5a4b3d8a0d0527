# PYTHON_ARGCOMPLETE_OK (argcomplete's global completion looks for this line; docs/config.md#shell-completion)
"""vitlab's command line (``python main.py`` or, after ``pip install -e .``, ``vitlab``): it parses and hands the
call to the package that does the work: ``launch`` (one run or many), ``evaluate`` (a checkpoint at work, a
comparison), ``models.catalog`` (the list). Examples: README.md; every option: ``python main.py --help``."""
from __future__ import annotations

import argparse
import os
import re
import shlex
import sys

from core.cli import run_cli
from core.errors import UserError

MODES = ("cfg", "resume", "eval", "predict", "compare", "list_models")
# Options that only mean something in some modes: option -> (its dest, the modes that use it).
ONLY_WITH = {"--set": ("overrides", ("cfg", "resume")), "--jobs": ("jobs", ("cfg", "resume")),
             "--jobs-per-gpu": ("jobs_per_gpu", ("cfg", "resume")), "--dry-run": ("dry_run", ("cfg",)),
             "--launcher": ("launcher", ("cfg",)), "--out": ("out", ("cfg", "compare")),
             "--allow-data-change": ("allow_data_change", ("resume",)), "--storage": ("storage", ("cfg",))}


# A command-line override (Hydra style, ``train.lr=3e-4``): a dotted key, then ``=``.
ASSIGNMENT = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)*=")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="main.py",
        description="Train one model on one dataset as described by a YAML config; each run writes config.yaml, "
                    "summary.txt, metrics.jsonl, results.json and checkpoints into a new directory under output.dir.",
        epilog="Example: python main.py --cfg configs/fashion_mnist.yaml --set train.epochs=2. One run on several "
               "processes or GPUs: torchrun --nproc_per_node=N main.py --cfg FILE (docs/scaling.md).")
    mode = p.add_argument_group("what to do (one of)").add_mutually_exclusive_group()
    cfg = mode.add_argument("--cfg", metavar="FILE", nargs="+",
                            help="YAML config(s) (see configs/ and docs/config.md); several files, or one with a "
                                 "sweep: section, run one after another and end with a comparison; KEY=VALUE "
                                 "arguments among or after them are overrides, as --set")
    mode.add_argument("--resume", metavar="DIR",
                      help="continue a stopped run from its last.pt in its own directory (a run directory), or the "
                           "unfinished runs of a multi-run call (its comparison directory); --set may only change "
                           "train.epochs (longer) and settings that do not change the numbers (docs/runs.md)")
    mode.add_argument("--eval", metavar="RUN_DIR",
                      help="evaluate a run's checkpoint on the validation split: top-1/top-5, per-class accuracy, "
                           "confusion matrix (PNG and CSV, written into RUN_DIR)")
    mode.add_argument("--predict", metavar=("RUN_DIR", "IMAGE"), nargs="+",
                      help="the top classes, with probabilities, a run's model gives each image file")
    mode.add_argument("--compare", metavar="RUN_DIR", nargs="+",
                      help="compare finished runs into --out DIR: summary, trade-offs, curves, tables, latency, "
                           "attention and feature maps (more options: python -m evaluate.compare --help)")
    mode.add_argument("--list-models", action="store_true",
                      help="list registered models with their parameter counts, then exit")
    run = p.add_argument_group("training")
    override = run.add_argument(
        "--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
        help="override a config value, dotted key, value parsed as YAML (repeatable, applied to every config), e.g. "
             "--set train.lr=3e-4 --set data.limit_train=5000; a plain KEY=VALUE argument is the same (Hydra style: "
             "--cfg FILE train.lr=3e-4), applied after the --set ones")
    run.add_argument("--dry-run", action="store_true",
                     help="print the resolved config and the model summary (for several runs: each run's name, "
                          "swept values and parameter count), then exit without training")
    run.add_argument("--allow-data-change", action="store_true",
                     help="--resume RUN_DIR on data other than the run trained on (other files, other sizes); "
                          "without it such a resume is refused")
    run.add_argument("--quiet", action="store_true",
                     help="leave the model summary table off the console (it is still written to summary.txt)")
    many = p.add_argument_group("several runs (several --cfg files, a sweep: section, or --resume COMPARE_DIR)")
    many.add_argument("--out", metavar="DIR",
                      help="where the comparison goes (default for a multi-run call: a new compare-DATE-TIME "
                           "directory under the first run's output.dir)")
    many.add_argument("--jobs", type=int, metavar="N",
                      help="run up to N points at once, each in its own process with its log in its run directory; "
                           "GPUs round-robin, CPU threads divided (default 1: one after another in this process)")
    many.add_argument("--jobs-per-gpu", type=int, metavar="K",
                      help="at most K points per GPU at once; without --jobs, N = K x the visible GPUs")
    many.add_argument("--launcher", choices=("local", "slurm"), default="local",
                      help="slurm: submit each point as a SLURM job with submitit (its config's slurm: section), "
                           "wait, and write the comparison; --resume COMPARE_DIR gathers it later (default: local)")
    many.add_argument("--storage", metavar="URL",
                      help="the study database of a tune: section, any URL Optuna's RDB storage takes, e.g. "
                           "postgresql://user@host/db for workers on several machines (default: sqlite:///"
                           "COMPARE_DIR/study.db)")
    use = p.add_argument_group("using a checkpoint (--eval, --predict)")
    use.add_argument("--ckpt", choices=("best", "last", "best_ema"), default="best",
                     help="the checkpoint --eval and --predict use (default: best; best_ema: the weight EMA's, "
                          "train.ema_decay)")
    use.add_argument("--top", type=int, default=5, metavar="K", help="classes --predict prints per image (default 5)")
    extra = p.add_argument("assignments", nargs="*", metavar="KEY=VALUE",
                           help="overrides with --cfg or --resume, the same as --set KEY=VALUE")
    cfg.completer, override.completer, extra.completer = _complete_cfg, _complete_keys, _complete_keys
    return p


def _complete_keys(prefix: str, **_) -> list[str]:
    """Shell completion of KEY=VALUE: the config's dotted keys, then a key's choices (config/schema.py)."""
    from config.schema import config_keys

    keys = config_keys()
    key, eq, _value = prefix.partition("=")
    if eq:
        return [f"{key}={choice}" for choice in keys.get(key, ())]
    return [f"{k}=" for k in keys if k.startswith(prefix)]


def _complete_cfg(prefix: str, **kwargs) -> list[str]:
    """--cfg: YAML files (and folders), and KEY=VALUE overrides once a prefix could be a key."""
    from argcomplete.completers import FilesCompleter

    files = list(FilesCompleter(("yaml", "yml"))(prefix, **kwargs))
    return files + (_complete_keys(prefix) if prefix and "/" not in prefix else [])


def _autocomplete(p: argparse.ArgumentParser) -> None:
    """Answer the shell's completion request (argcomplete; it exits) before anything heavy is imported."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ImportError:  # a dependency (pyproject.toml); without it there is nothing to complete with
        return
    argcomplete.autocomplete(p)


def split_assignments(items: list[str]) -> tuple[list[str], list[str]]:
    """``--cfg``'s arguments as (config files, KEY=VALUE overrides): an argument is an override when it starts
    with a dotted key and ``=`` and is no existing file; one that could be either is a one-line error."""
    files, assignments = [], []
    for item in items:
        looks = ASSIGNMENT.match(item) is not None
        exists = os.path.exists(item)
        if looks and exists:
            raise UserError(f"{item}: both an existing file and a KEY=VALUE override; write ./{item} for the "
                            f"file, or --set {item} for the override")
        if looks:
            assignments.append(item)
        elif "=" in item and not exists:
            raise UserError(f"--cfg {item}: no such file, and not KEY=VALUE with a dotted key (e.g. train.lr=3e-4)")
        else:
            files.append(item)
    return files, assignments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    _autocomplete(p)
    args = p.parse_intermixed_args(argv)
    args.mode = next((m for m in MODES if getattr(args, m) not in (None, False)), None)
    if args.mode is None:
        p.error("--cfg FILE is required (or --resume DIR, --eval RUN_DIR, --predict RUN_DIR IMAGE..., "
                "--compare RUN_DIR..., --list-models)")
    if args.predict is not None and len(args.predict) < 2:
        p.error("--predict RUN_DIR IMAGE...: give the run directory and at least one image file")
    if args.top < 1:
        p.error(f"--top: got {args.top}; must be at least 1")
    for flag, value in (("--jobs", args.jobs), ("--jobs-per-gpu", args.jobs_per_gpu)):
        if value is not None and value < 1:  # one line, as every input error (p.error adds the usage)
            raise UserError(f"{flag}: got {value}; must be at least 1")
    for flag, (dest, modes) in ONLY_WITH.items():
        if getattr(args, dest) not in (None, False, [], "local") and args.mode not in modes:
            raise UserError(f"{flag}: only used with {' or '.join('--' + m for m in modes)}")
    _take_assignments(args)
    if args.mode == "compare" and args.out is None:
        p.error("--compare RUN_DIR...: give --out DIR, where the comparison goes")
    return args


def _take_assignments(args: argparse.Namespace) -> None:
    """Plain KEY=VALUE arguments (after --cfg's files, or anywhere) join --set's overrides, after them."""
    found = list(args.assignments)
    if args.cfg is not None:
        args.cfg, among = split_assignments(args.cfg)
        found = among + found
        if not args.cfg:
            raise UserError(f"--cfg: no config file, only overrides ({found[0]}, ...); give --cfg FILE [KEY=VALUE ...]")
    for item in args.assignments:
        if "=" not in item:
            raise UserError(f"{item}: an extra argument, not KEY=VALUE; config files follow --cfg "
                            f"(--cfg a.yaml b.yaml)")
    if found and args.mode not in ("cfg", "resume"):
        raise UserError(f"{found[0]}: a KEY=VALUE override (as --set) is only used with --cfg or --resume")
    args.overrides = [*args.overrides, *found]
    del args.assignments


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    from core.log import quiet

    args = parse_args(argv)
    with quiet(args.quiet):
        return _dispatch(args, shlex.join(["python", "main.py", *(sys.argv[1:] if argv is None else argv)]))


def _dispatch(args: argparse.Namespace, command: str) -> int:
    """Hand the call on; nothing imports torch before the config is read (a typo costs no wait)."""
    if os.environ.get("WORLD_SIZE", "1") != "1":  # started by torchrun (the check imports no torch)
        from launch.start import distributed

        code = distributed(args.cfg, args.resume, args.overrides, command, other=args.mode not in ("cfg", "resume")
                           or args.dry_run or args.out is not None, allow_data_change=args.allow_data_change)
        if code is not None:
            return code
    if args.mode == "list_models":
        from data import get_spec
        from models.catalog import models_table

        print(models_table(get_spec))
        return 0
    if args.mode in ("eval", "predict", "compare"):
        from evaluate.cli import compare_runs, eval_run, predict

        if args.mode == "eval":
            return eval_run(args.eval, args.ckpt)
        if args.mode == "predict":
            return predict(args.predict[0], args.predict[1:], args.ckpt, args.top)
        return compare_runs(args.compare, args.out, command)
    from launch.start import resume, train

    if args.mode == "resume":
        return resume(args.resume, args.overrides, command, args.jobs, args.jobs_per_gpu,
                      allow_data_change=args.allow_data_change)
    return train(args.cfg, args.overrides, command, out=args.out, jobs=args.jobs, jobs_per_gpu=args.jobs_per_gpu,
                 launcher=args.launcher, dry_run=args.dry_run, storage=args.storage)


if __name__ == "__main__":
    sys.exit(main())
