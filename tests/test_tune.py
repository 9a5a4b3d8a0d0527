"""tune: a real Optuna study on fixture data (pruning, the study database, the finals, tune.json against the trials'
own files), and every mistake in a tune: section as one line before anything runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures import TINY_CONVMIXER, call_main, tiny_raw, write_yaml
from train.rundir import read_results


def tune_yaml(data_root: Path, tmp_path: Path, *, tune: dict, sweep: dict | None = None, name: str = "tune.yaml",
              epochs: int = 3) -> Path:
    raw = tiny_raw(data_root, tmp_path / "runs", epochs=epochs, batch_size=16, model=TINY_CONVMIXER,
                   data={"limit_train": 128, "limit_val": 64, "augment": False})
    raw["tune"] = tune
    if sweep:
        raw["sweep"] = sweep
    return write_yaml(tmp_path / name, raw)


SEED = 0  # the sampler's: trials that learn and trials that do not (pruned), on every CPU tried


def study_trials(compare: Path) -> dict[str, list]:
    """Every trial in the comparison's study.db, per study, read with Optuna itself."""
    import optuna

    storage = f"sqlite:///{compare / 'study.db'}"
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage).get_trials()
            for s in optuna.get_all_study_summaries(storage)}


SEARCH = {"params": {"train.lr": {"log_uniform": [1.0e-4, 1.0e-1]}}, "trials": 5, "pruner": "median",
          "sampler_seed": SEED}


def test_a_study_prunes_and_the_comparison_matches_the_trials_files(unsaved_figures, fmnist_root, tmp_path, capsys,
                                                                    plain_comparisons):
    cfg = tune_yaml(fmnist_root, tmp_path, tune=SEARCH)
    compare = tmp_path / "compare"
    r = call_main(capsys, "--cfg", cfg, "--out", compare)
    assert r.returncode == 0, r.stderr

    (study, trials), = study_trials(compare).items()
    assert study.startswith("t-fashion_mnist [") and len(trials) == 5
    summary = json.loads((compare / "tune.json").read_text())
    (exp,) = summary["experiments"]
    assert [t["number"] for t in exp["trials"]] == [0, 1, 2, 3, 4]
    states = {t.number: t.state.name for t in trials}
    assert "PRUNED" in states.values() and "COMPLETE" in states.values(), states
    for row, t in zip(exp["trials"], trials):
        results = read_results(row["run_dir"])
        assert Path(row["run_dir"]).parent == compare / "trials"
        assert results["trial"]["number"] == t.number and results["trial"]["params"] == t.params == row["params"]
        assert row["state"] == t.state.name
        if t.state.name == "PRUNED":  # stopped at an epoch boundary, with a checkpoint to continue from
            assert results["status"] == "pruned" and results["epochs_done"] < 3 == exp["epochs_per_trial"]
            assert "median pruner stopped trial" in results["stop_reason"]
            assert (Path(row["run_dir"]) / "last.pt").is_file() and row["epochs"] == results["epochs_done"]
            assert t.value == row["value"] == max(t.intermediate_values.values())
        else:
            assert results["status"] == "completed" and row["epochs"] == 3
            assert t.value == row["value"] == results["best_val_acc"]
    assert exp["counts"] == {"complete": list(states.values()).count("COMPLETE"),
                             "pruned": list(states.values()).count("PRUNED"), "failed": 0, "running": 0}
    assert exp["epochs_saved"] == sum(3 - t["epochs"] for t in exp["trials"] if t["state"] == "PRUNED") > 0
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert exp["best"]["number"] == best.number and exp["best"]["params"] == best.params

    # One seed, the trials' own: the best trial is the tuned run (the same config and seed train the same numbers).
    manifest = json.loads((compare / "sweep.json").read_text())
    assert manifest["tune"]["searched"] is True
    (point,) = manifest["points"]
    assert point["run_dir"] == exp["best"]["run_dir"] and point["name"] == "t-fashion_mnist-tuned"
    tuned = read_results(point["run_dir"])
    assert tuned["experiment"] == "t-fashion_mnist-tuned" and tuned["swept"]["tuned"] is True
    assert tuned["tuned"]["params"] == best.params and tuned["tuned"]["trial"] == best.number
    page = (compare / "index.md").read_text()
    assert "t-fashion_mnist (tuned)" in page and "## Tuning" in page

    # Resuming a finished call trains nothing and asks no trial.
    r = call_main(capsys, "--resume", compare)
    assert r.returncode == 0, r.stderr
    assert [t.number for t in study_trials(compare)[study]] == [0, 1, 2, 3, 4]


def test_finals_train_the_best_over_the_seeds_beside_the_untuned_values(fmnist_root, tmp_path, capsys,
                                                                       no_comparison):
    cfg = tune_yaml(fmnist_root, tmp_path, epochs=1, sweep={"seed": [0, 1]},
                    tune={"params": {"train.lr": {"log_uniform": [1.0e-3, 1.0e-2]}}, "trials": 2, "pruner": "none",
                          "untuned": True})
    compare = tmp_path / "compare"
    r = call_main(capsys, "--cfg", cfg, "--out", compare)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((compare / "sweep.json").read_text())
    names = [p["name"] for p in manifest["points"]]
    assert names == ["t-fashion_mnist-untuned-seed=0", "t-fashion_mnist-untuned-seed=1",
                     "t-fashion_mnist-tuned-seed=0", "t-fashion_mnist-tuned-seed=1"]
    best = json.loads((compare / "tune.json").read_text())["experiments"][0]["best"]
    runs = [read_results(p["run_dir"]) for p in manifest["points"]]
    assert [r["config"]["train"]["lr"] if "config" in r else None for r in runs]  # results.json is readable
    lrs = [json.loads(json.dumps(p["config"]))["train"]["lr"] for p in manifest["points"]]
    assert lrs == [2.0e-3, 2.0e-3, best["params"]["train.lr"], best["params"]["train.lr"]]
    assert manifest["points"][2]["run_dir"] == best["run_dir"]  # seed 0 is the trials' seed: the best trial
    assert manifest["points"][3]["run_dir"] != best["run_dir"] and runs[3]["status"] == "completed"
    assert [r["swept"] for r in runs] == [{"tuned": False, "seed": 0}, {"tuned": False, "seed": 1},
                                          {"tuned": True, "seed": 0}, {"tuned": True, "seed": 1}]


def test_a_worker_asking_past_the_budget_gives_its_trial_back(tmp_path):
    """Two workers that both see one trial left both ask: the later number is failed as not counted."""
    import optuna

    from config.tune import parse
    from launch.tune import NOT_COUNTED, Worker, _counted

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s", direction="maximize")
    worker = Worker.__new__(Worker)
    worker.search = type("S", (), {"spec": parse({"params": {"train.lr": {"uniform": [0.1, 0.2]}}, "trials": 2})})()
    worker.storage = study._storage
    first, second, third = study.ask(), study.ask(), study.ask()
    assert not worker._over_budget(study, first.number) and not worker._over_budget(study, second.number)
    assert worker._over_budget(study, third.number)
    from launch.tune import _tell
    assert _tell(study, study._storage, third.number, optuna.trial.TrialState.FAIL, attrs={NOT_COUNTED: "x"})
    assert [t.number for t in _counted(study)] == [0, 1]
    assert not _tell(study, study._storage, third.number, optuna.trial.TrialState.FAIL)  # told once only


BASE = {"params": {"train.lr": {"log_uniform": [1.0e-4, 1.0e-2]}}}
TUNE_MISTAKES = [
    ({"params": {"train.lr": {"log_uniform": [0, 1.0e-2]}}}, "tune.params.train.lr: log_uniform: low 0 must be above 0"),
    ({"params": {"train.lr": {"uniform": [0.1, 0.01]}}}, "low 0.1 must be below high 0.01"),
    ({"params": {"train.lr": {"uniform": [0.0, 0.1]}}}, "tune.params.train.lr: the value 0.0 does not fit (train.lr: got 0.0"),
    ({"params": {"train.lr": {"normal": [0.1, 0.2]}}}, "tune.params.train.lr: got {'normal': [0.1, 0.2]}; expected one distribution"),
    ({"params": {"train.lr": {"uniform": [0.01, float("inf")]}}}, "uniform: inf is not a finite number"),
    ({"params": {"train.lrr": {"uniform": [0.01, 0.1]}}}, "tune.params.train.lrr: the value 0.01 does not fit (train.lrr: unknown key (did you mean 'lr'?)"),
    ({"params": {"seed": {"int": [0, 3]}}}, "tune.params.seed: cannot be searched"),
    ({"params": {"model.depth": {"choice": [1, 1]}}}, "choice: a value is listed twice"),
    ({"params": {"model.depth": {"choice": []}}}, "choice: expected a non-empty list"),
    ({"params": {"model.depth": {"int": [1.5, 3]}}}, "int: 1.5 is not a whole number"),
    ({**BASE, "trials": 0}, "tune.trials: got 0; must be a whole number in [1, 10,000]"),
    ({**BASE, "epochs": -1}, "tune.epochs: got -1"),
    ({**BASE, "minutes": float("nan")}, "tune.minutes: got nan"),
    ({**BASE, "pruner": "asha"}, "tune.pruner: got 'asha'; valid: hyperband, successive_halving, median, none"),
    ({**BASE, "metric": "loss"}, "tune.metric: got 'loss'; valid: best_val_acc, final_val_acc"),
    ({**BASE, "budget": 3}, "tune.budget: unknown key; valid keys: params, trials"),
    ({"trials": 3}, "tune.params: expected a mapping of dotted config keys to distributions"),
    ([1, 2], "tune: expected a mapping with params:"),
]


@pytest.mark.parametrize("tune,expected", TUNE_MISTAKES, ids=[m[1][:40] for m in TUNE_MISTAKES])
def test_tune_mistakes_are_one_line_before_anything_runs(tmp_path, capsys, tune, expected):
    cfg = tune_yaml(tmp_path / "data", tmp_path, tune=tune)
    r = call_main(capsys, "--cfg", cfg, "--dry-run")
    assert r.returncode == 2 and r.stdout == "", r.stdout
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"error: {cfg}: ") and expected in line, line
    assert not (tmp_path / "runs").exists()


def test_tune_clashes_with_sweep_set_and_storage_are_one_line(tmp_path, capsys):
    cases = [
        (["--cfg", tune_yaml(tmp_path / "d", tmp_path, tune=BASE, sweep={"train.lr": [0.1, 0.2]})],
         "tune.params.train.lr: also swept by sweep.train.lr; search it or sweep it"),
        (["--cfg", tune_yaml(tmp_path / "d", tmp_path, tune=BASE, name="b.yaml"), "train.lr=0.1"],
         "--set train.lr: also searched by tune.params.train.lr"),
        (["--cfg", write_yaml(tmp_path / "plain.yaml", tiny_raw(tmp_path / "d", tmp_path / "runs")), "--storage",
          "sqlite:///x.db"], "--storage: the study database of a tune: section; this config has none"),
        (["--cfg", tune_yaml(tmp_path / "d", tmp_path, tune=BASE, name="c.yaml"), "--storage", "nosuchdb://x",
          "--out", tmp_path / "o"], "--storage nosuchdb://x: cannot open"),
        (["--resume", tmp_path, "--storage", "sqlite:///x.db"], "--storage: only used with --cfg"),
    ]
    for args, expected in cases:
        r = call_main(capsys, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and expected in r.stderr, r.stderr


def test_dry_run_shows_the_search_space_budget_and_experiments(tmp_path, capsys):
    cfg = tune_yaml(tmp_path / "d", tmp_path, sweep={"seed": [0, 1]},
                    tune={**BASE, "trials": 8, "minutes": 30, "seed": 7, "untuned": True})
    r = call_main(capsys, "--cfg", cfg, "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == ("tune: search train.lr ~ log_uniform [0.0001, 0.01]; 8 trials or 30 minutes per experiment, "
                        "whichever ends first; maximize best_val_acc; hyperband pruning after epoch 1")
    assert lines[2] == "  t-fashion_mnist: trials at seed 7; finals at seed(s) 0, 1"
    assert "and its config's own values over them (tune.untuned)" in lines[1]


def test_whose_trial_is_orphaned_and_a_resumed_call_releases_its_own(tmp_path):
    """A trial is continued by another worker only when its process is gone (this host: pid and start time) or
    released it; a trial held on another host is never taken from it."""
    import os
    import socket
    import subprocess
    import sys

    import optuna

    from core.procs import process_start
    from launch.tune import RELEASED, _orphaned

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)  # a pid that was a process a moment ago
    here = socket.gethostname()
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s", direction="maximize")
    live = os.getppid()  # a live process other than this one (this one asking is between trials: its are done)
    owners = {"a live process": {"host": here, "pid": live, "started": process_start(live)},
              "a gone process": {"host": here, "pid": dead, "started": 1},
              "this pid, another start": {"host": here, "pid": live, "started": 1},
              "another host": {"host": here + "-elsewhere", "pid": os.getpid(), "started": 1},
              "released": RELEASED, "no owner recorded": None}
    for owner in owners.values():
        t = study.ask()
        if owner is not None:
            t.set_user_attr("owner", owner)
    got = {name: _orphaned(t) for name, t in zip(owners, study.get_trials())}
    assert got == {"a live process": False, "a gone process": True, "this pid, another start": True,
                   "another host": False, "released": True, "no owner recorded": False}


def test_a_stop_between_two_trials_fails_the_asked_one_as_not_counted(fmnist_root, tmp_path, capsys,
                                                                      no_comparison, monkeypatch):
    """SIGTERM just after the worker asked its next trial, before that trial had a run directory: the trial is
    told FAIL at once, not counted (not left RUNNING for a resume to find), and the resume asks another."""
    import os
    import signal

    import optuna

    cfg = tune_yaml(fmnist_root, tmp_path, tune={**SEARCH, "trials": 2, "pruner": "none"})
    compare = tmp_path / "compare"
    real, asked = optuna.Study.ask, []

    def ask_then_signal(self, *args, **kwargs):
        trial = real(self, *args, **kwargs)
        asked.append(trial.number)
        if len(asked) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return trial

    monkeypatch.setattr(optuna.Study, "ask", ask_then_signal)
    r = call_main(capsys, "--cfg", cfg, "--out", compare)
    monkeypatch.undo()
    assert r.returncode == 143, r.stderr
    (trials,) = study_trials(compare).values()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL"]
    assert trials[1].user_attrs["not_counted"] == "stopped before it started training"
    assert "run_dir" not in trials[1].user_attrs and len(list((compare / "trials").iterdir())) == 1
    r = call_main(capsys, "--resume", compare)
    assert r.returncode == 0, r.stderr
    (trials,) = study_trials(compare).values()
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE"), (1, "FAIL"), (2, "COMPLETE")]


def test_an_orphan_whose_directory_is_held_waits_and_a_stopped_trial_continues(fmnist_root, tmp_path, capsys,
                                                                              no_comparison, monkeypatch):
    """A worker does not take a released trial whose run directory another process still holds (it is finishing
    its checkpoint); once the directory is free, the trial continues from its last.pt, in place."""
    import signal
    import os

    import optuna

    import train.engine
    from fixtures import hold_lock, read_metrics

    cfg = tune_yaml(fmnist_root, tmp_path, tune={**SEARCH, "trials": 2, "pruner": "none"})
    compare = tmp_path / "compare"
    real, calls = train.engine.train_step, [0]

    def step_then_signal(*args):  # SIGTERM in trial 1's second epoch (3 epochs of 8 steps a trial)
        out = real(*args)
        calls[0] += 1
        if calls[0] == 24 + 8 + 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(train.engine, "train_step", step_then_signal)
    r = call_main(capsys, "--cfg", cfg, "--out", compare)
    assert r.returncode == 143, r.stderr
    monkeypatch.setattr(train.engine, "train_step", real)
    (study, trials), = study_trials(compare).items()
    assert [t.state.name for t in trials] == ["COMPLETE", "RUNNING"]
    assert trials[1].user_attrs["owner"] == {"released": True}
    stopped = Path(trials[1].user_attrs["run_dir"])
    assert read_results(stopped)["status"] == "interrupted"

    from launch.plan import Manifest
    from launch.tune import Search, Worker

    holder = hold_lock(stopped)  # the stopped trial's process, still finishing
    try:
        worker = Worker(Search(Manifest.load(compare)), None)
        task, held = worker._next()
        assert task is None and held  # nothing to ask (the budget is spent), the orphan is held: wait
    finally:
        holder.kill()
        holder.wait()
    r = call_main(capsys, "--resume", compare)
    assert r.returncode == 0, r.stderr
    (trials,) = study_trials(compare).values()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert [row["epoch"] for row in read_metrics(stopped)] == [1, 2, 3]  # continued in place, each epoch once
    assert sorted(trials[1].intermediate_values) == [1, 2, 3]  # every epoch reported, the last one too
    assert len(list((compare / "trials").glob("*/"))) == 2


def test_budgets_in_epochs_and_the_median_pruners_first_epoch(fmnist_root, tmp_path, capsys, no_comparison):
    import optuna

    from config.tune import parse
    from launch.tune import _pruner

    # 5 epochs for trials of 2: two trials (4 epochs); a third would make 6.
    cfg = tune_yaml(fmnist_root, tmp_path, epochs=2,
                    tune={"params": {"train.lr": {"log_uniform": [1.0e-3, 1.0e-2]}}, "epochs": 5, "pruner": "none"})
    r = call_main(capsys, "--cfg", cfg, "--out", tmp_path / "compare")
    assert r.returncode == 0, r.stderr
    (trials,) = study_trials(tmp_path / "compare").values()
    assert [sorted(t.intermediate_values) for t in trials] == [[1, 2], [1, 2]]

    # tune.min_epochs: 2: no trial is pruned after its first epoch, however far behind.
    pruner = _pruner(parse({**BASE, "pruner": "median", "min_epochs": 2}), 4)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for _ in range(3):
        t = study.ask()
        t.report(90.0, 1)
        t.report(90.0, 2)
        study.tell(t, 90.0)
    t = study.ask()
    t.report(10.0, 1)
    assert not t.should_prune()
    t.report(10.0, 2)
    assert t.should_prune()


def test_study_names_are_the_calls_and_a_relative_sqlite_path_is_made_absolute(tmp_path, monkeypatch):
    from config.sweep import load_points
    from launch.tune import _absolute, experiments_of

    a = tune_yaml(tmp_path / "d", tmp_path, tune=BASE, name="a.yaml")
    b = tune_yaml(tmp_path / "d", tmp_path, tune=BASE, name="b.yaml")  # the same experiment name, another file
    studies = [e.study for e in experiments_of(load_points([a, b], warn=False), "c0ffee")]
    assert studies == ["t-fashion_mnist [c0ffee.0]", "t-fashion_mnist [c0ffee.1]"]
    monkeypatch.chdir(tmp_path)
    assert _absolute("sqlite:///x.db") == f"sqlite:///{tmp_path / 'x.db'}"
    assert _absolute("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert _absolute("postgresql://u:p@h/db") == "postgresql://u:p@h/db"
