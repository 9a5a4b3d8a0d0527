"""A run knows its own identity: the run id in every file (a copied checkpoint is refused, a lost results.json
is rebuilt whole), the data it trained on (a resume on other files is refused), the threads it used, and the
process that writes it (pid and start time, the directory's lock)."""
from __future__ import annotations

import json
import os
import shutil
import socket

import pytest
import torch

from fixtures import call_main, hold_lock, read_metrics, run_fit, tiny_config, write_mnist
from core.procs import process_alive, process_start
from data import get_spec
from models import build_model
from train.resume import run_config
from models.weights import run_id_of
from train.rundir import config_run_id, read_results


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished runs of one config with different seeds, and their data."""
    base = tmp_path_factory.mktemp("identity")
    root = write_mnist(base / "fmnist", n_train=128, n_test=64)
    made = [run_fit(tiny_config(root, base / "runs", seed=seed))[0] for seed in (0, 1)]
    return root, made


def copy_run(src, tmp_path, interrupted: bool = True):
    """A copy of ``src`` as a run stopped after its first epoch would look to a resume: its last.pt is kept,
    its results.json says interrupted (the copy's own id, so it is its run)."""
    dst = shutil.copytree(src, tmp_path / src.name)
    if interrupted:
        results = read_results(dst)
        (dst / "results.json").write_text(json.dumps({**results, "status": "interrupted"}))
    return dst


def test_every_file_names_its_run(runs):
    _, (a, b) = runs
    ids = [read_results(d)["run_id"] for d in (a, b)]
    assert ids[0] != ids[1] and all(len(i) == 16 for i in ids)
    for d, run_id in zip((a, b), ids):
        assert config_run_id(d / "config.yaml") == run_id
        assert torch.load(d / "last.pt", weights_only=True)["run_id"] == run_id
        best = torch.load(d / "best.pt", weights_only=True)
        assert run_id_of(best) == run_id
        cfg = run_config(d)
        build_model(cfg, get_spec(cfg.data.name)).load_state_dict(best)  # still a plain state dict


def test_a_checkpoint_copied_from_another_run_is_refused(runs, tmp_path, capsys):
    _, (a, b) = runs
    run = copy_run(a, tmp_path)
    shutil.copy(b / "last.pt", run / "last.pt")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    r = call_main(capsys, "--resume", run, "--set", "train.epochs=3")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    theirs, own = read_results(b)["run_id"], read_results(a)["run_id"]
    assert f"names run {theirs}, not this directory's run {own}" in r.stderr
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == {k: v for k, v in before.items() if k != ".lock"}  # nothing written


def test_a_best_pt_copied_from_another_run_is_refused_by_eval(runs, tmp_path, capsys):
    _, (a, b) = runs
    run = copy_run(a, tmp_path, interrupted=False)
    assert call_main(capsys, "--eval", run).returncode == 0
    shutil.copy(b / "best.pt", run / "best.pt")
    r = call_main(capsys, "--eval", run)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert f"names run {read_results(b)['run_id']}, not this directory's run {read_results(a)['run_id']}" in r.stderr


def test_results_and_config_that_name_different_runs_are_refused(runs, tmp_path, capsys):
    _, (a, b) = runs
    run = copy_run(a, tmp_path)
    shutil.copy(b / "config.yaml", run / "config.yaml")
    r = call_main(capsys, "--resume", run)
    assert r.returncode == 2 and "results.json names run" in r.stderr and "config.yaml run" in r.stderr


def test_a_lost_results_json_is_rebuilt_whole_from_last_pt(runs, tmp_path, capsys):
    _, (a, _) = runs
    original = read_results(a)
    run = copy_run(a, tmp_path, interrupted=False)
    (run / "results.json").unlink()
    r = call_main(capsys, "--resume", run)
    assert r.returncode == 0, r.stderr
    assert "rebuilt from last.pt" in r.stderr
    rebuilt = read_results(run)
    for key in ("name", "run_id", "model", "dataset", "params", "mult_adds", "flops_inference", "flops_training",
                "best_val_acc", "best_epoch", "final_val_acc", "epochs_done"):
        assert rebuilt[key] == original[key], key
    assert rebuilt["status"] == "completed" and rebuilt["name"] != run.name


def test_a_resume_on_other_data_is_refused_unless_allowed(runs, tmp_path, capsys):
    root, (a, _) = runs
    run = copy_run(a, tmp_path)
    # The same file names, other images (MNIST where Fashion-MNIST was); then train and test swapped.
    other = write_mnist(tmp_path / "other", n_train=128, n_test=64, seed=7)
    swapped = shutil.copytree(root, tmp_path / "swapped")
    for stem in ("images-idx3-ubyte.gz", "labels-idx1-ubyte.gz"):
        os.replace(swapped / f"train-{stem}", tmp_path / "t")
        os.replace(swapped / f"t10k-{stem}", swapped / f"train-{stem}")
        os.replace(tmp_path / "t", swapped / f"t10k-{stem}")
    for folder, says in ((other, "train: other images or labels; val: other images or labels"),
                         (swapped, "train: 64 images, the run had 128; val: 128 images, the run had 64")):
        r = call_main(capsys, "--resume", run, "--set", f"data.root={folder}", "--set", "train.epochs=3")
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
        assert f"the data differs from what the run trained on ({says})" in r.stderr and "--allow-data-change" in r.stderr
        assert read_results(run)["status"] == "interrupted" and len(read_metrics(run)) == 2
    r = call_main(capsys, "--resume", run, "--set", f"data.root={other}", "--set", "train.epochs=3",
                  "--allow-data-change")
    assert r.returncode == 0, r.stderr
    assert read_results(run)["epochs_done"] == 3
    # The next checkpoint records the data it now trains on: a plain resume on it is accepted.
    r = call_main(capsys, "--resume", run, "--set", f"data.root={other}", "--set", "train.epochs=4")
    assert r.returncode == 0, r.stderr


def test_allow_data_change_is_only_for_a_resume(capsys, tmp_path):
    r = call_main(capsys, "--cfg", "configs/fashion_mnist.yaml", "--allow-data-change", "--dry-run")
    assert r.returncode == 2 and "--allow-data-change: only used with --resume" in r.stderr


def test_a_resume_uses_the_threads_the_run_used(runs, tmp_path, capsys):
    root, _ = runs
    here = torch.get_num_threads()
    torch.set_num_threads(here + 1)
    try:
        run, _ = run_fit(tiny_config(root, tmp_path / "runs", epochs=1))
    finally:
        torch.set_num_threads(here)
    assert read_results(run)["threads"] == here + 1
    r = call_main(capsys, "--resume", run, "--set", "train.epochs=2")
    assert r.returncode == 0, r.stderr
    assert f"threads: {here + 1}, as the run used (this process would use {here})" in r.stdout + r.stderr
    assert read_results(run)["threads"] == here + 1  # recorded by the attempt that used them
    assert torch.get_num_threads() == here  # and put back for what this process does next


def test_a_pid_is_its_process_only_with_its_start_time():
    parent = os.getppid()
    started = process_start(parent)
    assert isinstance(started, int) and started >= 0
    host = socket.gethostname()
    assert process_alive(host, parent, started) is True
    assert process_alive(host, parent, started + 1) is False  # the number now names another process
    assert process_alive(host, parent) is True  # no start time recorded (a run from before): the pid alone
    assert process_alive("another-host", parent, started) is None


def test_a_comparison_directory_held_by_another_process_is_refused(unsaved_figures, runs, tmp_path, capsys):
    _, (a, b) = runs
    out = tmp_path / "cmp"
    out.mkdir()
    holder = hold_lock(out)
    try:
        for module, args in (("plots", (a, b, "--out", out)), ("main", ("--compare", a, b, "--out", out))):
            r = call_main(capsys, *args, module=module)
            assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
            assert f"{out}: in use by pid {holder.pid}" in r.stderr
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    assert call_main(capsys, *(a, b, "--out", out), module="plots").returncode == 0
