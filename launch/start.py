"""What ``main.py --cfg`` and ``--resume`` start: one run in this process (or on several, under torchrun), or a
multi-run call (launch/call.py) when there are several points or the directory is a comparison's."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from config.sweep import Point, load_points
from core.cli import EXIT_USER_ERROR
from core.errors import UserError
from core.log import get_logger

log = get_logger(__name__)


def train(cfg_files: list[str], overrides: list[str], command: str, *, out: Optional[str] = None,
          jobs: Optional[int] = None, jobs_per_gpu: Optional[int] = None, launcher: str = "local",
          dry_run: bool = False, storage: Optional[str] = None) -> int:
    points = load_points(cfg_files, overrides)  # before torch is imported: a typo costs no wait
    if dry_run:
        return _dry_run(points)
    if len(points) > 1 or points[0].values or points[0].tune or launcher == "slurm":
        from launch.call import run_call

        return run_call(points, out, command, jobs, jobs_per_gpu, launcher, storage)
    if storage is not None:
        raise UserError("--storage: the study database of a tune: section; this config has none")
    if out is not None:
        raise UserError("--out: only used to compare several runs (several --cfg files, or a sweep: section)")
    _single_run_note(jobs, jobs_per_gpu)
    from train.fit import fit
    from train.rundir import RunDir

    cfg = points[0].cfg
    run_dir = RunDir(cfg.output.dir, cfg.run_name)
    results = fit(cfg, run_dir, command=command)  # diverged, failed: one line and exit 1 (core.cli)
    _print_done(results, run_dir.path)
    return 0


def resume(path: str, overrides: list[str], command: str, jobs: Optional[int] = None,
           jobs_per_gpu: Optional[int] = None, *, allow_data_change: bool = False) -> int:
    from launch.plan import Manifest

    if Manifest.holds(path):
        from launch.call import resume_call

        if allow_data_change:
            raise UserError(f"--allow-data-change: {path} is a multi-run call; resume the point whose data changed "
                            f"by its run directory (--resume RUN_DIR --allow-data-change), then this call")

        return resume_call(Path(path), overrides, command, jobs, jobs_per_gpu)
    _single_run_note(jobs, jobs_per_gpu)
    from train.fit import fit
    from train.resume import open_for_resume

    r = open_for_resume(path, overrides)  # holds the run's lock until fit ends
    try:
        _allow_data_change(r, allow_data_change)
        if r.done:
            log.info(r.done_note)
            return 0
        if r.ckpt is None:
            log.info(f"{path}: no last.pt yet (stopped before its first checkpoint): starting it over in place")
        results = fit(r.cfg, r.run_dir, resume=r.ckpt, command=command)
    finally:
        r.run_dir.release()
    _print_done(results, r.run_dir.path)
    return 0


def distributed(cfg_files: Optional[list[str]], resume_dir: Optional[str], overrides: list[str], command: str,
                other: bool, allow_data_change: bool = False) -> Optional[int]:
    """One run on several processes, started by torchrun: ``--cfg`` with one config, or ``--resume RUN_DIR``;
    ``other``: the command line asked for something else. None when the environment names one process."""
    from launch.plan import Manifest
    import torch

    from train import distributed as d
    from train.fit import fit
    from train.resume import open_for_resume
    from train.rundir import RunDir

    dist = d.from_env()
    if not dist.enabled:
        return None
    if other:
        raise UserError("torchrun: trains one run (--cfg FILE or --resume RUN_DIR); run --eval, --predict, "
                        "--compare, --dry-run and --list-models with plain python")
    points = load_points(cfg_files, overrides) if cfg_files is not None else None
    if points is not None and (len(points) > 1 or points[0].values):
        raise UserError("torchrun: trains one run; for several (a sweep, several --cfg files) use --jobs N or "
                        "--launcher slurm, each point of which may use several GPUs (docs/scaling.md)")
    if resume_dir is not None and Manifest.holds(resume_dir):
        raise UserError(f"torchrun: --resume {resume_dir} is a multi-run call; resume it with plain python")
    command = command.replace("python main.py", d.launcher(dist), 1)
    d.start(dist)
    try:
        ckpt = None
        if points is not None:
            cfg = points[0].cfg
            run_dir = RunDir(cfg.output.dir, cfg.run_name)
        else:
            try:
                r, problem = open_for_resume(resume_dir, overrides, follower=not dist.is_main), None
            except UserError as e:  # e.g. held by another process: rank 0 alone can tell
                r, problem = None, str(e)
            # Together: every process has read the run's state before rank 0 writes it again, and stops alike.
            if dist.any([problem is not None], torch.device("cpu"))[0]:
                raise UserError(dist.broadcast(problem) or problem or "another process could not open the run")
            _allow_data_change(r, allow_data_change)
            if r.done:
                r.run_dir.release()
                if dist.is_main:
                    log.info(r.done_note)
                return 0
            cfg, run_dir, ckpt = r.cfg, r.run_dir, r.ckpt
        results = fit(cfg, run_dir, resume=ckpt, command=command, dist=dist)
        if dist.is_main:
            _print_done(results, run_dir.path)
        return 0
    finally:
        d.stop()


def _allow_data_change(r, allowed: bool) -> None:
    """``--allow-data-change``: the run continues on whatever data its config now finds (its checkpoint's record
    of the data it trained on is dropped, so the next checkpoint records the new data)."""
    if allowed and r.ckpt is not None and r.ckpt.get("data") is not None:
        r.ckpt["data"] = None
        log.warning("note: --allow-data-change: the run continues on the data it finds now, even if it differs "
                    "from what it trained on")


def _single_run_note(jobs: Optional[int], jobs_per_gpu: Optional[int]) -> None:
    given = " ".join(f"{flag} {v}" for flag, v in (("--jobs", jobs), ("--jobs-per-gpu", jobs_per_gpu)) if v is not None)
    if given:
        log.warning(f"note: {given}: ignored for a single run (it runs in this process)")


def _print_done(results: dict[str, Any], path: Path) -> None:
    log.info(f"done: best val acc {results['best_val_acc']:.2f}% (epoch {results['best_epoch']}), "
             f"final {results['final_val_acc']:.2f}%, {results['train_time_s']:.1f}s training -> {path}")


def _dry_run(points: list[Point]) -> int:
    from config import dump_config
    from data import get_spec
    from models import build_model
    from models.measure import describe

    if points[0].tune is not None:
        _dry_run_tune(points)
    if len(points) == 1 and not points[0].values and points[0].tune is None:
        cfg = points[0].cfg
        spec = get_spec(cfg.data.name)
        model = build_model(cfg, spec)  # checks the model name, its arguments and the shapes
        print(dump_config(cfg).rstrip())
        print(describe(model, spec).summary)
        print(_run_facts(cfg))
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


def _dry_run_tune(points: list[Point]) -> None:
    """What a tune: section would search: the space, the budget and pruner, the experiments and their seeds."""
    spec = points[0].tune
    seeds: dict[str, list[int]] = {}
    for p in points:
        seeds.setdefault(p.experiment or p.name, []).append(p.cfg.seed)
    print(f"tune: {spec.describe()}")
    print(f"{len(seeds)} experiment(s), each its own study, then its best setting over its seeds"
          + (" and its config's own values over them (tune.untuned)" if spec.untuned else "") + ":")
    for name, s in seeds.items():
        trial_seed = spec.seed if spec.seed is not None else s[0]
        print(f"  {name}: trials at seed {trial_seed}; finals at seed(s) {', '.join(map(str, s))}")
    print("each point below trains after the search as <experiment>-tuned"
          + (" and <experiment>-untuned (its values as listed)" if spec.untuned else "") + ":")


def _run_facts(cfg) -> str:
    """What --dry-run adds after the summary: where and how the run would train, and whether its data is here."""
    from data import get_spec
    from data.locate import locate
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
