"""``main.py`` as a user runs it: a subprocess, real flags, real files."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_help():
    p = run("--help")
    assert p.returncode == 0
    for flag in ("--cfg", "--set", "--dry-run", "--list-models"):
        assert flag in p.stdout


def test_list_models():
    p = run("--list-models")
    assert p.returncode == 0
    lines = {line.split()[0]: line for line in p.stdout.splitlines()[1:]}
    assert {"simple_cnn", "simple_cnn_huge", "cnn_tr_small", "cnn_tr_medium", "cnn_tr_large", "cnn_tr_huge"} <= set(lines)
    assert "532,138" in lines["cnn_tr_medium"]


def test_dry_run_prints_config_and_summary_and_writes_nothing(tmp_path):
    p = run("--cfg", ROOT / "configs/cnn_tr_medium.yaml", "--set", f"output.dir={tmp_path / 'runs'}", "--dry-run")
    assert p.returncode == 0, p.stderr
    assert "name: cnn_tr_medium" in p.stdout and "Total params: 532,138" in p.stdout and "TransformerEncoder" in p.stdout
    assert not (tmp_path / "runs").exists()


def test_end_to_end_training_run(tmp_path, fmnist_root):
    out = tmp_path / "runs"
    args = ["--cfg", ROOT / "configs/fashion_mnist.yaml", "--set", f"data.root={fmnist_root}",
            "--set", "data.download=false", "--set", f"data.cache_dir={tmp_path / 'cache'}",
            "--set", "train.epochs=2", "--set", "train.batch_size=64", "--set", f"output.dir={out}"]
    p = run(*args)
    assert p.returncode == 0, p.stderr
    # Not a terminal: one plain line per epoch, no progress-bar redraws.
    assert "epoch 1/2" in p.stdout and "epoch 2/2" in p.stdout and "\r" not in p.stdout + p.stderr
    assert "Total params" in p.stdout
    (run_dir,) = out.iterdir()
    assert sorted(f.name for f in run_dir.iterdir()) == sorted(
        ["config.yaml", "summary.txt", "metrics.jsonl", "results.json", "last.pt", "best.pt"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    results = json.loads((run_dir / "results.json").read_text())
    for key in ("params", "mult_adds", "best_val_acc", "final_val_acc", "train_time_s"):
        assert key in results
    assert "train:\n  epochs: 2" in (run_dir / "config.yaml").read_text()

    # A second identical run gets its own directory; the first is untouched.
    before = (run_dir / "metrics.jsonl").read_bytes()
    p = run(*args)
    assert p.returncode == 0, p.stderr
    assert len(list(out.iterdir())) == 2 and (run_dir / "metrics.jsonl").read_bytes() == before


@pytest.mark.parametrize("overrides, message", [
    (["train.lr=fast"], "error: train.lr: expected a number, got 'fast' (str)"),
    (["train.epoch=3"], "error: train.epoch: unknown key (did you mean 'epochs'?)"),
    (["model.name=vit_huge"], "error: model.name: unknown model 'vit_huge'"),
    (["data.name=svhn"], "error: data.name: unknown dataset 'svhn'; valid: cifar10, cifar100, fashion_mnist,"),
    (["model.depth=3"], "error: model.depth: not a parameter of model 'cnn_tr_medium'; accepted: dropout"),
    (["train.device=tpu"], "error: train.device: got 'tpu' (did you mean 'cpu'?); valid: auto, cpu, cuda"),
    (["data.root=/nonexistent", "data.download=false"], "error: data.root: cifar10 not found: expected "),
    (["nonsense"], "error: --set 'nonsense': expected KEY=VALUE"),
])
def test_user_errors_are_one_line_exit_2_and_leave_nothing(tmp_path, overrides, message):
    out = tmp_path / "runs"
    args = ["--cfg", ROOT / "configs/cnn_tr_medium.yaml", "--set", f"output.dir={out}"]
    for o in overrides:
        args += ["--set", o]
    p = run(*args)
    assert p.returncode == 2
    assert p.stderr.startswith(message), p.stderr
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert not out.exists()


def test_bad_config_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: simple_cnn\n data: oops\n")
    for path, message in ((bad, "malformed YAML"), (tmp_path / "none.yaml", "no such file")):
        p = run("--cfg", path)
        assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr


def test_missing_cfg_flag():
    p = run()
    assert p.returncode == 2 and "--cfg FILE is required" in p.stderr
