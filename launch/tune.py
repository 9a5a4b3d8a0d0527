"""``tune:``: search each experiment's settings with Optuna, then train its best setting over its seeds.

A call with a ``tune:`` section (config/tune.py) runs in two phases in one comparison directory:

1. **Search.** Each experiment (a point of the config without its seed) is its own Optuna study in one
   storage: ``study.db`` (SQLite) in the comparison directory, or ``--storage URL`` (any database Optuna's
   RDB storage takes: PostgreSQL for a cluster). A trial is a normal run directory under ``trials/``; its
   pruner (``tune.pruner``) reads the validation accuracy after each epoch and may stop it there, with a
   checkpoint and status ``pruned``. Workers (this process; ``--jobs N`` processes, ``python -m launch.tune``;
   SLURM jobs) draw trials from the storage, Optuna's distributed optimization: nothing else coordinates them.
2. **Finals.** Each experiment's best setting is trained over its ``seed:`` list (the seed its trials used
   reuses its best trial, the same config and seed), and with ``tune.untuned`` each experiment also at the
   config's own values: normal points of the call (sweep.json), run by its executor, then the comparison,
   which reads ``tune.json`` (every trial, written here) for its tuning section.

Faults: a trial's state lives in the storage (written at each report and at its end) and in its run directory.
A worker stopped by a signal checkpoints its trial and releases it. ``--resume COMPARE_DIR`` releases every
trial the call's workers left ``RUNNING`` (none of them is alive then) and continues the search: a released
trial, or one whose process on this host is gone, continues from its last.pt under its run directory's lock
(or is told from its results.json, when it ended before it was told); one that never started training is
marked failed (``not_counted``: not counted against the budget) and its place is asked again. A trial held by
a process on another host is never taken from it. No finished trial is run again.

Optuna's heartbeats (``RDBStorage(heartbeat_interval=...)``) would fail a dead worker's trial, but only inside
``study.optimize``, and a failed trial cannot be continued from its checkpoint; hence pid, start time and the run
directory's lock here.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from config import from_dict
from config.loader import set_dotted
from config.sweep import Point
from config.tune import Dist, TuneSpec
from core.errors import RunFailed, UserError
from core.lock import Busy, DirLock
from core.files import atomic_write, strict_json
from core.log import get_logger
from core.procs import process_alive, process_start
from core.signals import GracefulStop
from core.status import FINISHED, PRUNED
from launch.plan import Job, Manifest
from train.resume import anchor_paths
from train.rundir import RunDir, read_results

log = get_logger(__name__)

STUDY_DB = "study.db"
SUMMARY = "tune.json"
TRIALS = "trials"
# A trial the storage says RUNNING whose process is gone before it trained (or one asked past the budget by a
# worker racing another): failed, with this user attribute, and not counted.
NOT_COUNTED = "not_counted"


# ----------------------------------------------------------------------------- the plan: experiments


@dataclass
class Experiment:
    """One experiment of a tuned call: its name (the points' name without the seed), the config its trials
    start from (its first point's, at the trials' seed), its sweep values without the seed, and its seeds."""

    name: str
    study: str
    config: dict[str, Any]
    values: dict[str, Any]
    seeds: list[int]
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "study": self.study, "config": self.config, "values": self.values,
                "seeds": self.seeds, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict[str, Any], cwd: str) -> "Experiment":
        return cls(d["name"], d["study"], anchor_paths(d["config"], cwd), d["values"], list(d["seeds"]), d["source"])

    def trial_config(self, params: dict[str, Any], **top: Any):
        """The experiment's config with the searched ``params`` set (and ``top``-level keys: seed, name)."""
        raw = {**copy.deepcopy(self.config), **top}
        for key, value in params.items():
            set_dotted(raw, key, value, f"tune.params.{key}")
        return from_dict(raw)


def experiments_of(points: list[Point], call_id: str) -> list[Experiment]:
    """The call's experiments, in order: points grouped by config file and experiment name (seeds apart)."""
    groups: dict[tuple[str, str], list[Point]] = {}
    for p in points:
        groups.setdefault((p.source, p.experiment or p.name), []).append(p)
    out = []
    for i, ((source, name), members) in enumerate(groups.items()):
        spec = members[0].tune
        seeds = list(dict.fromkeys(m.cfg.seed for m in members))
        raw = members[0].cfg.to_dict()
        raw["seed"] = spec.seed if spec.seed is not None else seeds[0]
        raw["name"] = name
        values = {k: v for k, v in members[0].values.items() if k != "seed"}
        # The call's id and the experiment's place: two configs of one call may name the same experiment.
        out.append(Experiment(name, f"{name} [{call_id}.{i}]", raw, values, seeds, source))
    return out


def start_block(points: list[Point], folder: Path, storage: Optional[str]) -> dict[str, Any]:
    """The ``tune`` block of sweep.json for a new call: the spec, the storage, the experiments."""
    specs = {repr(p.tune.to_dict()) if p.tune else None for p in points}
    if len(specs) > 1:
        raise UserError("tune: every config of one call needs the same tune: section (or none); run them as "
                        "separate calls")
    spec = points[0].tune
    call_id = secrets.token_hex(4)
    url = _absolute(storage) if storage else f"sqlite:///{(folder / STUDY_DB).resolve()}"
    block = {"spec": spec.to_dict(), "storage": url, "call_id": call_id, "searched": False,
             "experiments": [e.to_dict() for e in experiments_of(points, call_id)]}
    open_storage(url)  # a URL that does not open is one line before the call writes anything
    return block


def _absolute(url: str) -> str:
    """A relative SQLite path made absolute: every worker and every resume opens the same file wherever it
    starts (``sqlite:///x.db`` is relative to the working directory)."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + str(Path(url[len(prefix):]).expanduser().resolve())
    return url


def open_storage(url: str):
    """Optuna's RDB storage at ``url`` (SQLite waits up to two minutes for another worker's write)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as e:  # noqa: BLE001 - a wrong URL, a database that is not there, a missing driver
        raise UserError(f"--storage {_safe_url(url)}: cannot open ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else 'no detail'})") from None


class Search:
    """A tuned call's search, as sweep.json records it: its spec, storage and experiments."""

    def __init__(self, manifest: Manifest):
        block = manifest.tune
        self.manifest, self.folder = manifest, manifest.folder
        try:
            self.spec = TuneSpec.from_dict(block["spec"], "tune")
            self.url = str(block["storage"])
            self.experiments = [Experiment.from_dict(e, manifest.cwd) for e in block["experiments"]]
        except (KeyError, TypeError, ValueError, AttributeError, UserError) as e:
            raise UserError(f"{manifest.folder / Manifest.FILE}: its tune block is not readable "
                            f"({type(e).__name__}: {e})") from None

    def storage(self):
        return open_storage(self.url)

    def study(self, storage, i: int, rank: int = 0, create: bool = False):
        """Experiment ``i``'s study (made by the call, ``create``; a worker only loads it, so a storage that is
        not the call's is an error rather than a new, empty search). Its sampler's seed is the spec's, the
        experiment's index, the worker's ``rank`` and the trials the study holds already: the call's first
        worker asks the same first trials every time, and neither another worker nor a resumed call repeats
        the draws of another."""
        import optuna

        e = self.experiments[i]
        try:
            study_id = storage.get_study_id_from_name(e.study)
            held = storage.get_n_trials(study_id)
        except KeyError:
            if not create:
                raise UserError(f"{_safe_url(self.url)}: has no study {e.study!r}; is this the storage the call "
                                f"in {self.folder} started with?") from None
            held = 0
        # TPE's random start is a third of the budget (at most its default 10), so a budget of 8 trials still
        # ends with 5 that TPE proposes; constant_liar: workers at once do not all propose the same point
        # (Optuna's advice for distributed optimization).
        sampler = optuna.samplers.TPESampler(seed=hash((self.spec.sampler_seed, i, rank, held)) % 2 ** 32,
                                             n_startup_trials=max(2, min(10, (self.spec.trials or 30) // 3)),
                                             constant_liar=True)
        pruner = _pruner(self.spec, self.epochs(i))
        if create:
            return optuna.create_study(study_name=e.study, storage=storage, direction="maximize",
                                       load_if_exists=True, sampler=sampler, pruner=pruner)
        return optuna.load_study(study_name=e.study, storage=storage, sampler=sampler, pruner=pruner)

    def epochs(self, i: int) -> int:
        return int(self.experiments[i].config["train"]["epochs"])


def _pruner(spec: TuneSpec, epochs: int):
    import optuna

    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec.min_epochs, max_resource=max(epochs, spec.min_epochs))
    if spec.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec.min_epochs)
    if spec.pruner == "median":
        # Optuna prunes from step n_warmup_steps on; our steps are epochs counted from 1.
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=spec.min_epochs)
    return optuna.pruners.NopPruner()


def _safe_url(url: str) -> str:
    """A storage URL without its password, for messages and tune.json (SQLAlchemy's own masking)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: say nothing of what it holds
        return "(a storage URL that does not parse)"


# ----------------------------------------------------------------------------- one worker


def _suggest(trial, key: str, d: Dist) -> Any:
    if d.kind == "choice":
        return trial.suggest_categorical(key, list(d.choices))
    if d.kind in ("int", "log_int"):
        return trial.suggest_int(key, int(d.low), int(d.high), log=d.log)
    return trial.suggest_float(key, d.low, d.high, log=d.log)


def _me() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": process_start(os.getpid())}


RELEASED = {"released": True}  # the "owner" of a trial whose process has stopped: any worker may continue it


def _orphaned(trial) -> bool:
    """Whether nobody trains this RUNNING trial: its process stopped and released it (a stop signal, a resumed
    call), or it was on this host and is gone (pid and start time). A trial held on another host is never
    taken from it; a resumed call releases every trial the call's workers left (``release``)."""
    owner = trial.user_attrs.get("owner") or {}
    if owner.get("released"):
        return True
    return process_alive(owner.get("host"), owner.get("pid"), owner.get("started")) is False


def release(s: Search, storage) -> None:
    """At the start of a search no worker of the call trains (the call holds its comparison directory's lock, and
    its workers end with their launcher; a SLURM call's, once no worker job is queued or running): every trial
    still RUNNING was left by a process that is gone, and any worker may continue it."""
    from optuna.trial import TrialState

    for i in range(len(s.experiments)):
        study = s.study(storage, i)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            storage.set_trial_user_attr(_trial_id(study, storage, t.number), "owner", RELEASED)


class Pruning:
    """The trial's ``train.fit`` stopper: reports each epoch's value (the metric so far) to the trial, once,
    and says why when the pruner stops it there."""

    def __init__(self, trial, spec: TuneSpec, reported: set[int]):
        self.trial, self.spec, self.reported = trial, spec, set(reported)  # epochs the storage has already

    def report(self, history: list[dict[str, Any]]) -> Optional[float]:
        """Report every epoch of ``history`` not reported yet; returns the metric so far."""
        best = value = None
        for row in history:
            best = row["val_acc"] if best is None else max(best, row["val_acc"])
            value = best if self.spec.metric == "best_val_acc" else row["val_acc"]
            if row["epoch"] not in self.reported:
                self.trial.report(value, row["epoch"])
                self.reported.add(row["epoch"])
        return value

    def __call__(self, history: list[dict[str, Any]]) -> Optional[str]:
        value = self.report(history)
        if self.spec.pruner == "none" or not self.trial.should_prune():
            return None
        return (f"the {self.spec.pruner} pruner stopped trial {self.trial.number} after epoch {history[-1]['epoch']} "
                f"({self.spec.metric} {value:.2f}% so far)")


class Worker:
    """Draws trials from the storage until the search is done or a stop signal comes: first any trial whose
    process stopped (``_orphaned``), continued in its run directory under that directory's lock, then new ones
    while an experiment's budget allows. ``wait``: when the only trials left are orphans whose run directory is
    still held (a process finishing its checkpoint), wait for them rather than end."""

    def __init__(self, search: Search, command: Optional[str], threads: Optional[int] = None, rank: int = 0,
                 wait: bool = True):
        self.search, self.command, self.threads, self.wait = search, command, threads, wait
        self.storage = search.storage()
        # One study object (and sampler) per experiment for this worker's life: a sampler made anew for each
        # trial would start its random draws over, and ask the same value again.
        self.studies = [search.study(self.storage, i, rank) for i in range(len(search.experiments))]
        self.stop: Optional[GracefulStop] = None

    def run(self) -> Optional[int]:
        """Returns None when the search is done, else the exit code of the signal that stopped it."""
        with GracefulStop(announce=lambda text: log.info(text.strip())) as self.stop:
            while not self.stop.requested:
                task, held = self._next()
                if task is None:
                    if not (held and self.wait):
                        return None
                    time.sleep(1.0)  # an orphan's directory is still held: its process is finishing
                    continue
                code = self._trial(*task)
                if code is not None:
                    return code
            return 128 + self.stop.signum

    def _next(self):
        """((experiment index, study, trial, its run directory's lock or None, epochs reported) to train next,
        or None; whether an orphan was skipped because its run directory is held)."""
        from optuna.trial import TrialState

        held = False
        for i, e in enumerate(self.search.experiments):
            study = self.studies[i]
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if not _orphaned(t):
                    continue
                run_dir = t.user_attrs.get("run_dir")
                lock = DirLock(run_dir, "run directory") if run_dir and Path(run_dir).is_dir() else None
                if lock is not None:
                    try:
                        lock.acquire()  # before anything else: a worker that continues it holds it
                    except Busy:
                        held = True
                        continue
                trial_id = _trial_id(study, self.storage, t.number)
                if self.storage.get_trial(trial_id).state != TrialState.RUNNING:  # told while we looked
                    if lock is not None:
                        lock.release()
                    continue
                if lock is None or not (Path(run_dir) / "config.yaml").is_file():
                    _tell(study, self.storage, t.number, TrialState.FAIL,
                          attrs={NOT_COUNTED: "its process ended before it started training"})
                    if lock is not None:
                        lock.release()
                    log.info(f"{e.name}: trial {t.number} never started training; it is not counted")
                    continue
                self.storage.set_trial_user_attr(trial_id, "owner", _me())
                return (i, study, _trial_of(study, self.storage, t.number), lock, set(t.intermediate_values)), held
            if budget_left(self.search.spec, study, self.search.epochs(i)):
                trial = study.ask()
                trial.set_user_attr("owner", _me())
                if self._over_budget(study, trial.number):  # another worker asked the last one first
                    _tell(study, self.storage, trial.number, TrialState.FAIL,
                          attrs={NOT_COUNTED: "asked past the budget"})
                    continue
                return (i, study, trial, None, set()), held
        return None, held

    def _over_budget(self, study, number: int) -> bool:
        spec = self.search.spec
        return spec.trials is not None and len([t for t in _counted(study) if t.number < number]) >= spec.trials

    def _trial(self, i: int, study, trial, lock: Optional[DirLock], reported: set[int]) -> Optional[int]:
        """Train one trial (new, or continued in the run directory whose ``lock`` this worker holds) and tell
        the study how it ended; the exit code of a stop signal that interrupted it (the trial stays RUNNING,
        released for any worker to continue), else None."""
        try:
            return self._train(i, study, trial, lock, reported)
        finally:
            if lock is not None:
                lock.release()

    def _train(self, i: int, study, trial, lock: Optional[DirLock], reported: set[int]) -> Optional[int]:
        from optuna.trial import TrialState

        from launch.run import run_one
        from train.resume import open_for_resume

        e, spec = self.search.experiments[i], self.search.spec
        tag = f"{e.name}: trial {trial.number}"
        try:
            if lock is not None:
                run_dir = str(lock.folder)
                results = read_results(run_dir) or {}
                if results.get("status") in (*FINISHED, PRUNED, "failed", "diverged"):  # ended before it was told
                    _report_epochs(Pruning(trial, spec, reported), run_dir)
                    _tell_outcome(study, self.storage, trial.number, results.get("status"), results, spec)
                    log.info(f"{tag}: {results.get('status')} before the call stopped; told now")
                    return None
                r = open_for_resume(run_dir)  # its lock: this worker's already (re-entrant)
                job = Job(trial.number, _trial_point(e, trial.number, r.cfg), r.run_dir, r.cfg, r.ckpt)
                log.info(f"\n=== {tag} (continued in {run_dir}): {_params_text(trial.params)}")
            else:
                params = {key: _suggest(trial, key, d) for key, d in spec.params.items()}
                cfg = e.trial_config(params)
                if self.threads:
                    import torch

                    torch.set_num_threads(self.threads)  # train.threads: auto in this worker (train/threads.py)
                record = {"experiment": e.name, "swept": e.values,
                          "trial": {"study": e.study, "number": trial.number, "params": params}}
                run = RunDir(self.search.folder / TRIALS, f"{e.name}-trial{trial.number}", extra=record,
                             on_create=[lambda path: trial.set_user_attr("run_dir", str(Path(path).resolve()))])
                job = Job(trial.number, _trial_point(e, trial.number, cfg), run, cfg)
                log.info(f"\n=== {tag}: {_params_text(params)}")
        except UserError as e:  # its run directory cannot be continued (another run's checkpoint, other data, ...)
            _tell(study, self.storage, trial.number, TrialState.FAIL, attrs={"error": str(e)[:500]})
            log.warning(f"{tag}: failed: {e}")
            return None
        if self.stop is not None and self.stop.requested:  # the signal came before the run could see it
            if lock is None:  # a new trial, no run directory yet: nothing to continue, and nothing trained
                _tell(study, self.storage, trial.number, TrialState.FAIL,
                      attrs={NOT_COUNTED: "stopped before it started training"})
            else:
                trial.set_user_attr("owner", RELEASED)
            return 128 + self.stop.signum
        pruning = Pruning(trial, spec, reported)
        outcome = run_one(job, command=self.command, stopper=pruning)
        if outcome.status == "interrupted":
            trial.set_user_attr("owner", RELEASED)  # checkpointed: any worker of a resumed call continues it
            return outcome.exit_code or 130
        results = outcome.results or (read_results(outcome.run_dir) if outcome.run_dir else {}) or {}
        if outcome.run_dir is not None:
            _report_epochs(pruning, outcome.run_dir)
        _tell_outcome(study, self.storage, trial.number, outcome.status, {**results, "error": outcome.error}, spec)
        value = results.get(spec.metric)
        log.info(f"{tag}: {outcome.status}" + (f", {spec.metric} {value:.2f}%" if isinstance(value, float) else "")
                 + (f" ({outcome.error})" if outcome.error and outcome.status not in (*FINISHED, PRUNED) else ""))
        return None


def _report_epochs(pruning: "Pruning", run_dir: str | Path) -> None:
    """Report the epochs the pruner was not asked about (the last one, at least): the study's intermediate values
    are then every epoch the trial trained, which the epochs budget counts."""
    try:
        rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
        pruning.report(rows)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # metrics.jsonl unreadable: the budget counts what was reported


def budget_left(spec: TuneSpec, study, epochs: int) -> bool:
    """Whether ``study`` may ask another trial of ``epochs`` epochs: fewer counted trials than ``tune.trials``,
    their epochs (a running one's all) plus its own within ``tune.epochs``, the first started within
    ``tune.minutes``."""
    trials = _counted(study)
    if spec.trials is not None and len(trials) >= spec.trials:
        return False
    if spec.epochs is not None and trials:
        used = sum(len(t.intermediate_values) if t.state.is_finished() else epochs for t in trials)
        if used + epochs > spec.epochs:
            return False
    if spec.minutes is not None and trials:
        first = min(t.datetime_start for t in trials if t.datetime_start)
        if (datetime.now() - first).total_seconds() > 60 * spec.minutes:
            return False
    return True


def search_done(s: Search, storage) -> bool:
    """Whether every experiment's budget is spent and none of its trials is still running."""
    from optuna.trial import TrialState

    for i in range(len(s.experiments)):
        study = s.study(storage, i)
        if budget_left(s.spec, study, s.epochs(i)) or study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return False
    return True


def _trial_point(e: Experiment, number: int, cfg) -> Point:
    return Point(f"{e.name}-trial{number}", e.values, cfg, e.source, e.name)


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _counted(study) -> list:
    """The trials that count against the budget: all but those marked ``not_counted``."""
    return [t for t in study.get_trials(deepcopy=False) if NOT_COUNTED not in t.user_attrs]


def _trial_id(study, storage, number: int) -> int:
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


def _trial_of(study, storage, number: int):
    """Trial ``number`` of ``study`` as a live ``optuna.trial.Trial``. Optuna has no public call that takes
    over a RUNNING trial whose process died (its heartbeats fail such trials, and only inside
    ``study.optimize``, which cannot continue a trial from a checkpoint); its Trial is the study and the
    trial's id, as ``study.ask()`` builds it."""
    import optuna

    return optuna.trial.Trial(study, _trial_id(study, storage, number))


def _tell(study, storage, number: int, state, value: Optional[float] = None,
          attrs: Optional[dict[str, Any]] = None) -> bool:
    """Tell the study how trial ``number`` ended; False when it had ended already (another worker told it)."""
    trial_id = _trial_id(study, storage, number)
    if storage.get_trial(trial_id).state.is_finished():
        return False
    try:
        for k, v in (attrs or {}).items():
            storage.set_trial_user_attr(trial_id, k, v)
        study.tell(number, value, state=state)
        return True
    except (RuntimeError, ValueError):  # told by another worker between the look and the tell
        return False


def _tell_outcome(study, storage, number: int, status: Optional[str], results: dict[str, Any],
                  spec: TuneSpec) -> None:
    from optuna.trial import TrialState

    value = results.get(spec.metric)
    if status in FINISHED and isinstance(value, (int, float)):
        _tell(study, storage, number, TrialState.COMPLETE, float(value))
    elif status == PRUNED:
        _tell(study, storage, number, TrialState.PRUNED)
    else:
        _tell(study, storage, number, TrialState.FAIL, attrs={"error": str(results.get("error") or status)[:500]})


# ----------------------------------------------------------------------------- the call: search, then finals


def search(manifest: Manifest, workers=None, command: Optional[str] = None, slurm_jobs: int = 1) -> Optional[int]:
    """Run a tuned call's search to its end, here (``workers`` None), in ``--jobs`` worker processes, or in
    ``slurm_jobs`` SLURM jobs (a ``--launcher slurm`` call), then record the finals in ``manifest``. Returns the
    exit code of a stop signal that ended it early, else None."""
    s = Search(manifest)
    storage = s.storage()
    for i in range(len(s.experiments)):
        s.study(storage, i, create=True)  # made here, once, before workers race to make them
    n = len(s.experiments)
    log.info(f"tune: {s.spec.describe()}; {n} experiment{'s' * (n != 1)}; study storage "
             f"{_safe_url(s.url)}")
    if manifest.launcher == "slurm":
        code = _slurm_workers(s, slurm_jobs, command, storage)
    elif workers is None:
        release(s, storage)
        code = Worker(s, command).run()
    else:
        release(s, storage)
        code = _local_workers(s, workers, command, storage)
        if code is None:
            code = Worker(s, command).run()  # what a worker that crashed left: its trial, the rest of the budget
    write_summary(s, storage)
    if code is not None:
        log.info(f"search stopped; every finished trial is in the study, and {manifest.resume_command()} "
                 f"continues it")
        return code
    _record_finals(s, storage)
    return None


def write_summary(s: Search, storage) -> dict[str, Any]:
    """``tune.json``: every counted trial of every experiment (state, value, params, epochs, run directory),
    its best, and what pruning saved; what the comparison's tuning section renders (plots/)."""
    from optuna.trial import TrialState

    out = []
    for i, e in enumerate(s.experiments):
        epochs = s.epochs(i)
        rows = []
        for t in _counted(s.study(storage, i)):
            run_dir = t.user_attrs.get("run_dir")
            done = (read_results(run_dir) or {}).get("epochs_done") if run_dir else None
            rows.append({"number": t.number, "state": t.state.name,
                         "value": t.value if t.state in (TrialState.COMPLETE, TrialState.PRUNED) else None,
                         "params": t.params, "epochs": done if isinstance(done, int) else len(t.intermediate_values),
                         "run_dir": run_dir, "error": t.user_attrs.get("error")})
        complete = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
        best = max(complete, key=lambda r: r["value"]) if complete else None
        counts = {k.lower(): sum(r["state"] == k for r in rows) for k in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
        out.append({"name": e.name, "study": e.study, "epochs_per_trial": epochs,
                    "best": {k: best[k] for k in ("number", "value", "params", "run_dir")} if best else None,
                    "trials": rows, "counts": {"complete": counts["complete"], "pruned": counts["pruned"],
                                               "failed": counts["fail"], "running": counts["running"]},
                    "epochs_run": sum(r["epochs"] for r in rows),
                    "epochs_saved": sum(epochs - r["epochs"] for r in rows if r["state"] == "PRUNED")})
    spec = s.spec
    summary = {"metric": spec.metric, "direction": "maximize", "storage": _safe_url(s.url),
               "space": {k: d.to_dict() for k, d in spec.params.items()},
               "budget": {"trials": spec.trials, "epochs": spec.epochs, "minutes": spec.minutes},
               "pruner": spec.pruner, "experiments": out}
    atomic_write(s.folder / SUMMARY, strict_json(summary, indent=2) + "\n")
    return summary


def _record_finals(s: Search, storage) -> None:
    """The points that follow the search, in sweep.json: each experiment's best setting over its seeds (the
    trials' seed reusing the best trial), and with ``tune.untuned`` the config's own values over them."""
    summary = write_summary(s, storage)
    points: list[Point] = []
    run_dirs: list[Optional[str]] = []
    for e, row in zip(s.experiments, summary["experiments"]):
        best = row["best"]
        if s.spec.untuned:
            for seed in e.seeds:
                points.append(_final(e, seed, {}, None, row))
                run_dirs.append(None)
        if best is None:
            log.warning(f"warning: {e.name}: no trial completed, so it has no tuned runs")
            continue
        for seed in e.seeds:
            points.append(_final(e, seed, best["params"], best, row))
            reuse = seed == e.config["seed"] and best["run_dir"] and \
                (read_results(best["run_dir"]) or {}).get("status") in FINISHED
            index = len(s.manifest.points) + len(points) - 1
            run_dirs.append(_adopt(best["run_dir"], points[-1], index) if reuse else None)
    s.manifest.tune["searched"] = True
    s.manifest.add_points(points, run_dirs)


def _final(e: Experiment, seed: int, params: dict[str, Any], best: Optional[dict[str, Any]],
           row: dict[str, Any]) -> Point:
    tuned = best is not None
    label = f"{e.name}-{'tuned' if tuned else 'untuned'}"
    name = f"{label}-seed={seed}" if len(e.seeds) > 1 else label
    values = {**e.values, "tuned": tuned, **({"seed": seed} if len(e.seeds) > 1 else {})}
    extra = {"tuned": {"study": e.study, "trial": best["number"], "params": params, "value": best["value"],
                       "trials": len(row["trials"])}} if tuned else {}
    return Point(name, values, e.trial_config(params, seed=seed, name=name), e.source, label, extra=extra)


def _adopt(run_dir: str, point: Point, index: int) -> str:
    """The best trial stands as its seed's tuned run, the call's ``index``-th point (the same config and seed
    train the same numbers): its results.json is told so, for the comparison."""
    run = RunDir.existing(run_dir)
    try:
        run.update(run.results.get("status"), **point.record(), point=index)
    finally:
        run.release()
    return run_dir


# ----------------------------------------------------------------------------- --jobs N: worker processes


def _local_workers(s: Search, workers, command: Optional[str], storage) -> Optional[int]:
    """``--jobs N``: N processes (``python -m launch.tune``) draw trials from the storage; this one prints
    each trial's end as the storage tells it, passes a stop signal on, and waits for them."""
    from core.signals import SIGNALS

    (s.folder / TRIALS).mkdir(exist_ok=True)
    log.info(f"tune: {workers.count} workers, {workers.threads} CPU thread(s) each; their logs: "
             f"{s.folder / TRIALS}/worker-K.log")
    procs = []
    for k in range(workers.count):
        env = dict(os.environ)
        if workers.gpu(k) is not None:
            env["CUDA_VISIBLE_DEVICES"] = workers.gpu(k)
        with open(s.folder / TRIALS / f"worker-{k}.log", "ab") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "launch.tune", str(s.folder), "--threads", str(workers.threads),
                 "--rank", str(k + 1),
                 "--parent", str(os.getpid()), *(["--command", command] if command else [])],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True))
    got: list[int] = []  # the stop signals this process received
    previous = {sig: signal.signal(sig, lambda signum, frame: got.append(signum)) for sig in SIGNALS}
    seen: set[tuple[int, int]] = set()
    forwarded = 0
    try:
        while any(p.poll() is None for p in procs):
            while forwarded < len(got):  # each, so a second Ctrl-C stops the workers at once as it would here
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(got[forwarded])  # the first: each trial checkpoints, to continue
                forwarded += 1
            _announce(s, storage, seen)
            time.sleep(1.0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _announce(s, storage, seen)
    if got:
        return 128 + got[0]
    crashed = [(k, p.returncode) for k, p in enumerate(procs) if p.returncode not in (0, None)]
    for k, rc in crashed:
        log.warning(f"warning: tune worker {k} ended with exit code {rc} (log: {s.folder / TRIALS}/worker-{k}.log); "
                    f"this process finishes what it left")
    return None


def _announce(s: Search, storage, seen: set[tuple[int, int]]) -> None:
    """One line per trial that ended since the last look (none this time when the database does not answer:
    the workers report their own trouble)."""
    try:
        studies = [s.study(storage, i) for i in range(len(s.experiments))]
    except Exception:  # noqa: BLE001 - a database busy or gone for a moment; the next look tries again
        return
    for i, e in enumerate(s.experiments):
        for t in _counted(studies[i]):
            if t.state.is_finished() and (i, t.number) not in seen:
                seen.add((i, t.number))
                value = f", {s.spec.metric} {t.value:.2f}%" if t.value is not None else ""
                log.info(f"{e.name}: trial {t.number} {t.state.name.lower()}{value} ({_params_text(t.params)})")


# ----------------------------------------------------------------------------- --launcher slurm: worker jobs


class SlurmWorker:
    """What one SLURM job of a search runs (pickled by submitit): a ``Worker`` on the call's study storage. On
    SIGUSR2 (its time limit is near, or it is preempted) its trial checkpoints and the job requeues itself; the
    trial stays RUNNING, and the requeued job (or another worker, once the run directory's lock is free)
    continues it from its last.pt."""

    def __init__(self, folder: str, command: Optional[str], rank: int):
        self.folder, self.command, self.rank = folder, command, rank

    def __call__(self) -> dict[str, Any]:
        from core.signals import also_stop_on

        also_stop_on(signal.SIGUSR2)
        code = Worker(Search(Manifest.load(Path(self.folder))), self.command, rank=self.rank, wait=False).run()
        if code == 128 + signal.SIGUSR2:
            from launch.slurm import requeue

            requeue(f"continue the search with --resume {self.folder}")
        if code is not None:
            sys.exit(code)  # no result: requeued, or cancelled
        return {"status": "done"}  # plain data, all launch.slurm.read_result accepts


def _slurm_workers(s: Search, count: int, command: Optional[str], storage) -> Optional[int]:
    """``--launcher slurm``: ``count`` SLURM jobs (``--jobs N``, default 1) each run a worker, with the first
    experiment's ``slurm:`` section and one task; this process prints each trial's end from the storage and
    waits. Stopped, it leaves the jobs running: ``--resume COMPARE_DIR`` waits for them (or, when none is left
    and the search is not done, submits new ones)."""
    import submitit

    from launch.slurm import LOGS, POLL_S, check_available, queue_states, slurm_parameters

    check_available()
    folder = s.folder / LOGS
    block = s.manifest.tune
    states = queue_states(block.get("slurm_workers", []))
    if states is None:
        raise RunFailed("tune: squeue does not answer, so whether this call's worker jobs still run cannot be "
                        f"told; try again: {s.manifest.resume_command()}")
    ids = [j for j in block.get("slurm_workers", []) if j in states]
    if ids:
        log.info(f"tune: waiting for the SLURM worker job(s) still queued or running: {', '.join(ids)}")
    else:
        release(s, storage)  # no worker job left: whatever trial is RUNNING, its job is gone
        if search_done(s, storage):
            return None
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
        ex.update_parameters(**slurm_parameters(from_dict(s.experiments[0].config), "tune-worker", tasks=1))
        ids = [ex.submit(SlurmWorker(str(s.folder), command, k + 1)).job_id for k in range(count)]
        block["slurm_workers"] = ids
        s.manifest.save()
        log.info(f"tune: {count} SLURM worker job(s): {', '.join(ids)}; their logs in {folder}")
    seen: set[tuple[int, int]] = set()
    with GracefulStop(announce=lambda text: None) as stop:
        while not stop.requested:
            _announce(s, storage, seen)
            states = queue_states(ids)
            if states is not None and not states:
                break
            time.sleep(POLL_S)
    if stop.requested:
        log.info(f"stopped waiting; the worker jobs go on on SLURM, and {s.manifest.resume_command()} waits for them")
        return 128 + stop.signum
    _announce(s, storage, seen)
    if not search_done(s, storage):
        raise RunFailed(f"tune: the SLURM worker jobs ended before the search did (their logs: {folder}); "
                        f"{s.manifest.resume_command()} submits workers again")
    return None


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m launch.tune COMPARE_DIR``: one worker of a tuned call's search (``--jobs N`` starts N)."""
    from core.cli import run_cli

    return run_cli(_main, argv)


def _main(argv: Optional[list[str]]) -> int:
    from launch.worker import die_with_parent

    p = argparse.ArgumentParser(prog="python -m launch.tune", description=(main.__doc__ or "").strip())
    p.add_argument("folder")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rank", type=int, default=1, help="this worker's number (its sampler's seed)")
    p.add_argument("--parent", type=int, default=None)
    p.add_argument("--command", default=None)
    args = p.parse_args(argv)
    if args.parent is not None:
        die_with_parent(args.parent)
    manifest = Manifest.load(Path(args.folder))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    code = Worker(Search(manifest), args.command, args.threads, args.rank).run()
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
