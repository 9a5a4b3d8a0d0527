"""Train and compare CNNs, vision transformers and hybrids from YAML configs.

    python main.py --cfg configs/cnn_tr_medium.yaml
    python main.py --cfg configs/cnn_tr_medium.yaml --set train.epochs=5 --set data.name=fashion_mnist
    python main.py --cfg configs/cnn_tr_small.yaml configs/cnn_tr_medium.yaml   # several runs + a comparison
    python main.py --cfg configs/sweeps/fmnist_sizes.yaml                      # a sweep: grid of runs + a comparison
    python main.py --cfg configs/cnn_tr_medium.yaml --dry-run
    python main.py --resume runs/cnn_tr_medium-cifar10-20261126-101500            # continue a stopped run
    python main.py --resume runs/cnn_tr_medium-cifar10-20261126-101500 --set train.epochs=40   # extend a finished one
    python main.py --eval runs/cnn_tr_medium-cifar10-20261126-101500 [--ckpt last]
    python main.py --predict runs/cnn_tr_medium-cifar10-20261126-101500 cat.jpg dog.png
    python main.py --list-models
    torchrun --nproc_per_node=4 main.py --cfg configs/cnn_tr_medium.yaml   # one run on 4 processes (DDP)
"""
from __future__ import annotations

import argparse
import os
import sys

from core.cli import EXIT_INTERRUPTED, EXIT_RUN_FAILED, EXIT_USER_ERROR, run_cli
from core.errors import UserError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="main.py",
        description="Train one model on one dataset as described by a YAML config; "
                    "each run writes config.yaml, summary.txt, metrics.jsonl, results.json and checkpoints "
                    "into a new directory under output.dir.",
        epilog="Example: python main.py --cfg configs/fashion_mnist.yaml --set train.epochs=2. One run on several "
               "processes or GPUs: torchrun --nproc_per_node=N main.py --cfg FILE (README 'Scaling out').",
    )
    p.add_argument("--cfg", metavar="FILE", nargs="+",
                   help="YAML config(s) (see configs/ and the README's config reference); several files, or "
                        "one with a sweep: section, run one after another and end with a comparison")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override a config value, dotted key, value parsed as YAML "
                        "(repeatable, applied to every config), e.g. --set train.lr=3e-4 --set data.limit_train=5000")
    p.add_argument("--out", metavar="DIR",
                   help="where a multi-run call writes its comparison (default: a new compare-DATE-TIME "
                        "directory under the first run's output.dir)")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="run up to N points of a multi-run call (or of --resume COMPARE_DIR) at once, each in its "
                        "own process with its log in its run directory; GPUs round-robin, CPU threads divided "
                        "(default 1: one after another in this process)")
    p.add_argument("--jobs-per-gpu", type=int, metavar="K",
                   help="at most K points per GPU at once; without --jobs, N = K x the visible GPUs")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="slurm: submit each point as a SLURM job with submitit (its config's slurm: section), "
                        "wait, and write the comparison; --resume COMPARE_DIR gathers it later (default: local)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config and the model summary (for several runs: each run's name, "
                        "swept values and parameter count), then exit without training")
    p.add_argument("--quiet", action="store_true",
                   help="leave the model summary table off the console (it is still written to summary.txt)")
    p.add_argument("--list-models", action="store_true",
                   help="list registered models with their parameter counts, then exit")
    p.add_argument("--resume", metavar="DIR",
                   help="continue a stopped run from its last.pt in its own directory (a run directory), or the "
                        "unfinished runs of a multi-run call (its comparison directory); --set may only change "
                        "train.epochs (longer) and settings that do not change the numbers (README)")
    p.add_argument("--eval", metavar="RUN_DIR",
                   help="evaluate a run's checkpoint on the validation split: top-1/top-5, per-class accuracy, "
                        "confusion matrix (PNG and CSV, written into RUN_DIR)")
    p.add_argument("--predict", metavar=("RUN_DIR", "IMAGE"), nargs="+",
                   help="the top classes, with probabilities, a run's model gives each image file")
    p.add_argument("--ckpt", choices=("best", "last"), default="best",
                   help="the checkpoint --eval and --predict use (default: best)")
    p.add_argument("--top", type=int, default=5, metavar="K", help="classes --predict prints per image (default 5)")
    args = p.parse_args(argv)
    modes = [f for f, on in (("--cfg", args.cfg is not None), ("--resume", args.resume is not None),
                             ("--eval", args.eval is not None), ("--predict", args.predict is not None),
                             ("--list-models", args.list_models)) if on]
    if not modes:
        p.error("--cfg FILE is required (or --resume DIR, --eval RUN_DIR, --predict RUN_DIR IMAGE..., --list-models)")
    if len(modes) > 1:
        p.error(f"{modes[0]} and {modes[1]} cannot be combined (--resume reads the run's own config)")
    if args.predict is not None and len(args.predict) < 2:
        p.error("--predict RUN_DIR IMAGE...: give the run directory and at least one image file")
    if args.top < 1:
        p.error(f"--top: got {args.top}; must be at least 1")
    if args.overrides and (args.eval or args.predict or args.list_models):
        p.error("--set: only used with --cfg or --resume")
    for flag, value in (("--jobs", args.jobs), ("--jobs-per-gpu", args.jobs_per_gpu)):
        if value is not None and value < 1:  # one line, as every input error (p.error adds the usage)
            raise UserError(f"{flag}: got {value}; must be at least 1")
        if value is not None and args.cfg is None and args.resume is None:
            raise UserError(f"{flag}: only used with --cfg or --resume (it runs the points of a multi-run call "
                            f"at once)")
    if args.launcher == "slurm" and (args.jobs is not None or args.jobs_per_gpu is not None):
        raise UserError("--jobs: only with --launcher local; with slurm, each point is a job and the cluster "
                        "runs as many at once as it has room for")
    for flag, given in (("--dry-run", args.dry_run), ("--out", args.out is not None),
                        ("--launcher", args.launcher != "local")):
        if given and args.cfg is None:
            p.error(f"{flag}: only used with --cfg (a resumed multi-run call writes into its own directory)")
    return args


def list_models_table() -> str:
    from data import get_spec
    from models import MODELS, create_model

    import torch

    rows = []
    for name in MODELS.names():
        spec = get_spec(MODELS.meta(name).get("default_dataset", "cifar10"))
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            model = create_model(name, num_classes=spec.num_classes, in_chans=spec.in_chans,
                                 image_size=spec.image_size)
        params = sum(p.numel() for p in model.parameters())
        doc = (MODELS.get(name).__doc__ or "").strip().splitlines()
        rows.append((name, f"{params:,}", spec.name, doc[0] if doc else ""))
    widths = [max(len(r[i]) for r in rows + [("model", "params", "dataset", "")]) for i in range(3)]
    lines = [f"{'model':<{widths[0]}}  {'params':>{widths[1]}}  {'dataset':<{widths[2]}}  description"]
    lines += [f"{n:<{widths[0]}}  {p:>{widths[1]}}  {d:<{widths[2]}}  {doc}" for n, p, d, doc in rows]
    lines.append("\nand any timm model as model.name: timm/<name>, e.g. timm/resnet18, timm/convnext_atto "
                 "(not pretrained; timm.list_models() lists them; README 'Models')")
    return "\n".join(lines)


def dry_run(points) -> int:
    from config import dump_config
    from data import get_spec
    from models import build_model
    from models.measure import describe

    if len(points) == 1 and not points[0].values:
        cfg = points[0].cfg
        spec = get_spec(cfg.data.name)
        model = build_model(cfg, spec)  # checks the model name, its arguments and the shapes
        print(dump_config(cfg).rstrip())
        print(describe(model, spec).summary)
        print(run_facts(cfg))
        return 0
    failed = 0
    print(f"{len(points)} runs:")
    for i, p in enumerate(points, 1):
        swept = ", ".join(f"{k}={v}" for k, v in p.values.items()) or p.source
        try:
            params = sum(t.numel() for t in build_model(p.cfg, get_spec(p.cfg.data.name)).parameters())
            status = f"{params:,} params"
        except UserError as e:
            failed += 1
            status = f"error: {e}"
        print(f"{i:>4}. {p.name}  ({swept})  {p.cfg.model.name} on {p.cfg.data.name}: {status}")
    return EXIT_USER_ERROR if failed else 0


def run_facts(cfg) -> str:
    """What --dry-run adds after the summary: where and how the run would train, and whether its data is here."""
    from pathlib import Path

    from data.datasets import get_spec, locate
    from train.setup import Precision, resolve_device

    try:
        device = resolve_device(cfg.train.device)
        precision = f"{Precision.for_device(device, cfg.train.precision)} (train.precision: {cfg.train.precision})"
        device_text = f"{device} (train.device: {cfg.train.device})"
    except UserError as e:
        device_text, precision = f"error: {e}", "-"
    try:
        root = Path(cfg.data.root).expanduser()
        out = Path(cfg.output.dir).expanduser()
    except RuntimeError as e:  # ~user that does not exist
        raise UserError(f"data.root / output.dir: {e}") from None
    files, found_in, looked = locate(get_spec(cfg.data.name), root)
    if files is not None:
        data = f"{cfg.data.name} found in {found_in}" + ("" if found_in == root else f" (not in data.root {cfg.data.root})")
    else:
        data = (f"{cfg.data.name} not found (expected {'; or '.join(looked)}); "
                + ("the run would download it into data.root" if cfg.data.download else "data.download is off"))
    return "\n".join([f"device:     {device_text}", f"precision:  {precision}",
                      f"run dir:    {out / cfg.run_name}-<date>-<time>", f"data:       {data}"])


def run_many(points, out: str | None, command: str, jobs: int | None = None, jobs_per_gpu: int | None = None,
             launcher: str = "local", quiet: bool = False) -> int:
    """Several runs, then their comparison. The comparison directory is made first and holds sweep.json,
    so ``--resume`` on it finishes the call if it is stopped or killed."""
    from pathlib import Path

    from train.parallel import plan_workers
    from train.rundir import new_dir
    from train.sweep import Manifest, check_points, jobs_for

    check_points(points)
    workers = plan_workers(jobs, jobs_per_gpu)  # None: one after another, in this process
    if launcher == "slurm":
        from train.slurm import check_available

        check_available()
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if out is not None and (Path(out) / Manifest.FILE).exists():
        raise UserError(f"--out {out}: already holds a multi-run call; continue it with --resume {out}, "
                        f"or pick another --out")
    if out is not None:
        try:
            Path(out).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--out {out}: cannot create ({e.strerror})") from None
    out_dir = Path(out) if out is not None else new_dir(points[0].cfg.output.dir, "compare")
    manifest = Manifest.start(out_dir, points, command, launcher)
    print(f"comparison directory: {out_dir} (if this call stops: python main.py --resume {out_dir})")
    return finish_many(manifest, [], jobs_for(points), command, workers, quiet=quiet)


def finish_many(manifest, done, jobs, command: str, workers=None, attach=None, quiet: bool = False) -> int:
    from pathlib import Path

    from plots import compare
    from train.sweep import run_jobs, summary

    if manifest.launcher == "slurm":
        from train.slurm import run_slurm

        outcomes = done + run_slurm(jobs, len(manifest.points), manifest, command=command, attach=attach)
    else:
        outcomes = done + run_jobs(jobs, len(manifest.points), manifest=manifest, command=command, workers=workers,
                                   quiet=quiet)
    outcomes.sort(key=lambda o: manifest.points.index(o.point))
    print("\n" + summary(outcomes))
    failures = [{"name": o.point.name, "status": o.status, "error": o.error, "traceback": o.traceback}
                for o in outcomes if o.status != "completed"]
    started = {o.point.name for o in outcomes}
    failures += [{"name": p.name, "status": "not started", "error": "the call stopped before it", "traceback": None}
                 for p in manifest.points if p.name not in started]
    # A run that failed before writing its config (e.g. a full disk) is listed among the failures only.
    run_dirs = [o.run_dir for o in outcomes if o.run_dir is not None and (o.run_dir / "config.yaml").is_file()]
    first = manifest.points[0].cfg.output
    index = compare(run_dirs, manifest.folder, failures=failures, command=command, latency=first.latency,
                    latency_threads=first.latency_threads)
    page = Path(index).with_name("index.html")
    print(f"comparison: {index}" + (f" (in a browser: {page})" if page.is_file() else ""))
    stopped = [o for o in outcomes if o.status == "interrupted"]
    if stopped:
        print(f"to finish the remaining runs: python main.py --resume {manifest.folder}")
        return stopped[0].exit_code or EXIT_INTERRUPTED
    return EXIT_RUN_FAILED if failures else 0


def resume_many(folder, overrides: list[str], command: str, jobs: int | None = None,
                jobs_per_gpu: int | None = None, quiet: bool = False) -> int:
    from train.parallel import plan_workers
    from train.sweep import Manifest, plan

    if overrides:
        raise UserError(f"--set: not used when resuming the multi-run call in {folder}; its points keep their "
                        f"configs (extend a single run with --resume RUN_DIR --set train.epochs=N)")
    workers = plan_workers(jobs, jobs_per_gpu)
    manifest = Manifest.load(folder)
    attach = {}
    if manifest.launcher == "slurm":
        from train.slurm import attached_jobs, record_run_dirs

        if workers is not None:
            raise UserError(f"--jobs: {folder} is a SLURM call; its points run as SLURM jobs")
        record_run_dirs(manifest)  # jobs that started (or ended) while nobody watched
        attach = attached_jobs(manifest)  # still queued or running: wait for them
    done, jobs = plan(manifest, attached=frozenset(attach))
    print(f"{folder}: {len(done)} of {len(manifest.points)} runs already finished; "
          + (f"{len(attach)} still queued or running on SLURM; " if attach else "")
          + f"{len(jobs)} to run or continue")
    return finish_many(manifest, done, jobs, command, workers, attach, quiet=quiet)


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    if args.list_models:
        print(list_models_table())
        return 0

    from config.sweep import load_points

    command = "python main.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if os.environ.get("WORLD_SIZE", "1") != "1":  # started by torchrun (the check imports no torch)
        from train.distributed import from_env

        dist = from_env()
        if dist.enabled:
            return distributed(args, dist, command)
    if args.eval is not None:
        return eval_run(args.eval, args.ckpt)
    if args.predict is not None:
        return predict(args.predict[0], args.predict[1:], args.ckpt, args.top)
    if args.resume is not None:
        return resume(args.resume, args.overrides, command, args.jobs, args.jobs_per_gpu, quiet=args.quiet)
    points = load_points(args.cfg, args.overrides)  # before torch is imported: a typo costs no wait

    from train.fit import fit
    from train.rundir import RunDir

    if args.dry_run:
        return dry_run(points)
    if len(points) > 1 or points[0].values or args.launcher == "slurm":
        return run_many(points, args.out, command, args.jobs, args.jobs_per_gpu, args.launcher, quiet=args.quiet)
    if args.out is not None:
        raise UserError("--out: only used to compare several runs (several --cfg files, or a sweep: section)")
    single_run_note(args.jobs, args.jobs_per_gpu)
    cfg = points[0].cfg
    run_dir = RunDir(cfg.output.dir, cfg.run_name)
    results = fit(cfg, run_dir, command=command, quiet=args.quiet)  # diverged, failed: one line and exit 1 (core.cli)
    print_done(results, run_dir.path)
    return 0


def distributed(args, dist, command: str) -> int:
    """One run on several processes (started by torchrun): ``--cfg`` with one config, or ``--resume RUN_DIR``."""
    from pathlib import Path

    from config.sweep import load_points

    if args.cfg is None and args.resume is None or args.dry_run or args.out is not None:
        raise UserError("torchrun: trains one run (--cfg FILE or --resume RUN_DIR); run --eval, --predict, "
                        "--dry-run and --list-models with plain python")
    points = load_points(args.cfg, args.overrides) if args.cfg is not None else None
    if points is not None and (len(points) > 1 or points[0].values):
        raise UserError("torchrun: trains one run; for several (a sweep, several --cfg files) use --jobs N or "
                        "--launcher slurm, each point of which may use several GPUs (README 'Scaling out')")
    from train import distributed as d
    from train.fit import fit
    from train.resume import open_for_resume
    from train.rundir import RunDir
    from train.sweep import Manifest

    if args.resume is not None and (Path(args.resume) / Manifest.FILE).is_file():
        raise UserError(f"torchrun: --resume {args.resume} is a multi-run call; resume it with plain python")
    command = command.replace("python main.py", d.launcher(dist), 1)
    d.start(dist)
    try:
        ckpt = None
        if points is not None:
            cfg = points[0].cfg
            run_dir = RunDir(cfg.output.dir, cfg.run_name)
        else:
            r = open_for_resume(args.resume, args.overrides)
            dist.barrier()  # every process has read the run's state before rank 0 writes it again
            if r.done:
                if dist.is_main:
                    print(f"{args.resume}: already completed all {r.cfg.train.epochs} epochs")
                return 0
            cfg, run_dir, ckpt = r.cfg, r.run_dir, r.ckpt
        results = fit(cfg, run_dir, resume=ckpt, command=command, dist=dist, quiet=args.quiet)
        if dist.is_main:
            print_done(results, run_dir.path)
        return 0
    finally:
        d.stop()


def single_run_note(jobs: int | None, jobs_per_gpu: int | None) -> None:
    given = " ".join(f"{flag} {v}" for flag, v in (("--jobs", jobs), ("--jobs-per-gpu", jobs_per_gpu)) if v is not None)
    if given:
        print(f"note: {given}: ignored for a single run (it runs in this process)", file=sys.stderr)


def print_done(results, path) -> None:
    print(f"done: best val acc {results['best_val_acc']:.2f}% (epoch {results['best_epoch']}), "
          f"final {results['final_val_acc']:.2f}%, {results['train_time_s']:.1f}s training -> {path}")


def eval_run(path: str, which: str) -> int:
    from plots.confusion import write_confusion
    from train.inference import evaluate_run, format_eval

    r = evaluate_run(path, which, progress=sys.stderr.isatty())
    print(format_eval(r))
    csv, png = write_confusion(r.confusion, r.classes, r.run_dir, f"confusion_{which}", top1=r.top1,
                               title=f"{r.model} on {r.dataset}, {which}.pt")
    print(f"confusion matrix: {csv}, {png}")
    return 0


def predict(path: str, images: list[str], which: str, top: int) -> int:
    from train.inference import format_predictions, predict_images

    print(format_predictions(predict_images(path, images, which, top)))
    return 0


def resume(path: str, overrides: list[str], command: str, jobs: int | None = None,
           jobs_per_gpu: int | None = None, quiet: bool = False) -> int:
    from pathlib import Path

    from train.fit import fit
    from train.resume import open_for_resume
    from train.sweep import Manifest

    if (Path(path) / Manifest.FILE).is_file():
        return resume_many(Path(path), overrides, command, jobs, jobs_per_gpu, quiet=quiet)
    single_run_note(jobs, jobs_per_gpu)
    r = open_for_resume(path, overrides)
    if r.done:
        print(f"{path}: already completed all {r.cfg.train.epochs} epochs; to train longer: "
              f"python main.py --resume {path} --set train.epochs=N")
        return 0
    if r.ckpt is None:
        print(f"{path}: no last.pt yet (stopped before its first checkpoint): starting it over in place")
    results = fit(r.cfg, r.run_dir, resume=r.ckpt, command=command)
    print_done(results, r.run_dir.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
