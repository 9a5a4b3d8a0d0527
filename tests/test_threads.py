"""``train.threads`` (issue 24): the count a run trains with is set before its model is built, recorded, kept by a
resume; ``auto`` is the cores here divided among ``--jobs`` workers; explicit counts that oversubscribe the cores
and a busy machine each get one warning line. Independent of this machine's core count: cores, torch's default
count and the load average are given or monkeypatched."""
import json

import pytest
import torch

import train.fit
import train.threads as threads
from core.errors import UserError
from fixtures import run_fit, tiny_config
from launch.local import Workers, oversubscribed, plan_workers
from train.fit import fit
from train.resume import open_for_resume

SMALL = {"limit_train": 64, "limit_val": 64}  # two steps an epoch: only the thread counts are looked at


@pytest.fixture
def seen(monkeypatch):
    """torch's thread count when the model is built and at every training epoch of the runs in a test."""
    out = {"build": [], "train": []}
    build, epoch = train.fit.build_model, train.fit.train_one_epoch

    def building(*args, **kwargs):
        out["build"].append(torch.get_num_threads())
        return build(*args, **kwargs)

    def training(*args, **kwargs):
        out["train"].append(torch.get_num_threads())
        return epoch(*args, **kwargs)

    monkeypatch.setattr(train.fit, "build_model", building)
    monkeypatch.setattr(train.fit, "train_one_epoch", training)
    return out


def recorded(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    return results["threads"], torch.load(run_dir / "last.pt", weights_only=True)["threads"]


def test_explicit_threads_apply_before_the_build_are_recorded_and_put_back(fmnist_root, tmp_path, seen):
    before = torch.get_num_threads()
    run_dir, results = run_fit(tiny_config(fmnist_root, tmp_path, epochs=1, threads=2, data=SMALL))
    assert results["status"] == "completed"
    assert seen == {"build": [2], "train": [2]}
    assert recorded(run_dir) == (2, 2)
    assert torch.get_num_threads() == before  # the next run of this process starts as it would have


def test_auto_resolves_at_start_and_a_resume_keeps_the_recorded_count(fmnist_root, tmp_path, seen, monkeypatch):
    monkeypatch.setattr(threads, "auto_threads", lambda jobs=1: 2)  # this machine's auto, whatever its cores
    run_dir, _ = run_fit(tiny_config(fmnist_root, tmp_path, epochs=1, schedule="constant", data=SMALL))
    assert recorded(run_dir) == (2, 2) and "threads: auto" in (run_dir / "config.yaml").read_text()
    monkeypatch.setattr(threads, "auto_threads", lambda jobs=1: 1)  # resumed on a machine where auto means 1
    r = open_for_resume(run_dir, ["train.epochs=2"])
    assert fit(r.cfg, r.run_dir, resume=r.ckpt, progress=False)["status"] == "completed"
    assert seen["train"] == [2, 2] and recorded(run_dir) == (2, 2)
    with pytest.raises(UserError, match=r"train\.threads is 1 but the run used 'auto'; a resumed run keeps the "
                                        r"threads it started with"):
        open_for_resume(run_dir, ["train.epochs=3", "train.threads=1"])


def test_auto_is_the_available_cores_at_most_torchs_count_divided_among_jobs():
    assert threads.auto_threads(cores=2, default=2) == 2
    assert threads.auto_threads(cores=2, default=16) == 2  # taskset / a cpuset: fewer cores than torch counts
    assert threads.auto_threads(cores=16, default=8) == 8  # OMP_NUM_THREADS=8, or 8 physical cores
    assert threads.auto_threads(3, cores=16, default=16) == 5
    assert threads.auto_threads(4, cores=2, default=2) == 1  # at least one
    assert threads.resolve(3) == 3


def test_jobs_divide_auto_and_respect_explicit_counts_with_a_warning(monkeypatch, tmp_path, fmnist_root):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    assert plan_workers(2, None, gpus=[]) == Workers(2, [], 2)  # min(8, 4 cores) // 2

    class Job:
        def __init__(self, n):
            self.cfg = tiny_config(fmnist_root, tmp_path, threads=n)

    workers = Workers(2, [], 1)
    assert oversubscribed(workers, [Job("auto")] * 3, cores=2) is None
    assert oversubscribed(workers, [Job(1), Job(1), Job(2)], cores=3) is None  # the two largest: 3 threads
    line = oversubscribed(workers, [Job(2), Job("auto"), Job(2)], cores=2)
    assert line == ("warning: --jobs 2 with the points' train.threads: up to 4 threads at once on 2 core(s); they "
                    "will fight for the cores, each run slower than alone; lower --jobs or train.threads "
                    "(train.threads: auto divides the cores between the runs)")


def test_a_busy_machine_warns_once_per_process(monkeypatch):
    assert threads.busy_warning(2, cores=2, load=0.4) is None  # quiet
    assert threads.busy_warning(1, cores=2, load=9.0) is None  # one thread never waits for another
    assert threads.busy_warning(2, cores=4, load=1.5) is None  # the threads fit beside the load
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.2, 0.5, 0.1))
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    assert threads.busy_warning(2) == (
        "the machine is busy (load 1.2 on 2 core(s)): 2 training threads may fight other work for them and run "
        "several times slower; consider train.threads=1 (docs/config.md#threads)")
    said = []
    monkeypatch.setattr(threads, "log", type("Log", (), {"warning": staticmethod(said.append)}))
    monkeypatch.setattr(threads, "_warned", False)
    threads.warn_if_busy(2)
    threads.warn_if_busy(2)  # a sequential sweep's next point would see this process's own load
    assert said == ["warning: " + threads.busy_warning(2)]
