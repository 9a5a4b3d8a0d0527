"""``main.py`` as a user runs it: a subprocess, real flags, real files."""
import json
from pathlib import Path

import pytest

from fixtures import call_main, run_main

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=ROOT):
    return run_main(*args, cwd=cwd)


@pytest.mark.system
def test_help():
    p = run("--help")
    assert p.returncode == 0
    for flag in ("--cfg", "--set", "--dry-run", "--list-models"):
        assert flag in p.stdout


def test_list_models(capsys):
    p = call_main(capsys, "--list-models")
    assert p.returncode == 0
    lines = {line.split()[0]: line for line in p.stdout.splitlines()[1:] if line.strip()}
    assert "timm/<name>" in p.stdout.splitlines()[-1]  # the footer
    assert {"simple_cnn", "simple_cnn_huge", "cnn_tr_small", "cnn_tr_medium", "cnn_tr_large", "cnn_tr_huge"} <= set(lines)
    assert "532,138" in lines["cnn_tr_medium"]


def test_dry_run_prints_config_and_summary_and_writes_nothing(tmp_path, capsys):
    p = call_main(capsys, "--cfg", ROOT / "configs/cnn_tr_medium.yaml", "--set", f"output.dir={tmp_path / 'runs'}",
                  "--dry-run")
    assert p.returncode == 0, p.stderr
    assert "name: cnn_tr_medium" in p.stdout and "Total params: 532,138" in p.stdout and "PostNormBlock" in p.stdout
    assert not (tmp_path / "runs").exists()


def test_end_to_end_training_run(tmp_path, fmnist_root, capsys):
    out = tmp_path / "runs"
    args = ["--cfg", ROOT / "configs/fashion_mnist.yaml", "--set", f"data.root={fmnist_root}",
            "--set", "data.download=false", "--set", f"data.cache_dir={tmp_path / 'cache'}",
            "--set", "train.epochs=2", "--set", "train.batch_size=32", "--set", "data.limit_train=64",
            "--set", "data.limit_val=64", "--set", f"output.dir={out}"]
    # In-process (a real subprocess of main.py runs in test_faults.py's signal test): same code, no import wait.
    p = call_main(capsys, *args)
    assert p.returncode == 0, p.stderr
    # Not a terminal: one plain line per epoch, no progress-bar redraws.
    assert "epoch 1/2" in p.stdout and "epoch 2/2" in p.stdout and "\r" not in p.stdout + p.stderr
    assert "Total params" in p.stdout
    (run_dir,) = out.iterdir()
    assert sorted(f.name for f in run_dir.iterdir()) == sorted(
        [".lock", "config.yaml", "summary.txt", "metrics.jsonl", "results.json", "last.pt", "best.pt"]
        + [f.name for f in run_dir.glob("events.out.tfevents.*")])
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # TensorBoard's, in the run directory itself
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    results = json.loads((run_dir / "results.json").read_text())
    for key in ("params", "mult_adds", "best_val_acc", "final_val_acc", "train_time_s"):
        assert key in results
    assert "train:\n  epochs: 2" in (run_dir / "config.yaml").read_text()

    # A second identical run gets its own directory; the first is untouched.
    before = (run_dir / "metrics.jsonl").read_bytes()
    p = call_main(capsys, *args)
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
def test_user_errors_are_one_line_exit_2_and_leave_nothing(tmp_path, capsys, overrides, message):
    # In-process (main.main is what the script runs); test_bad_config_files covers the real subprocess.
    from main import main

    out = tmp_path / "runs"
    args = ["--cfg", str(ROOT / "configs/cnn_tr_medium.yaml"), "--set", f"output.dir={out}"]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(message), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.system
def test_bad_config_files(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: simple_cnn\n data: oops\n")
    p = run("--cfg", bad)  # a real subprocess: what the user sees is exactly one line
    assert p.returncode == 2 and p.stderr.startswith(f"error: {bad}: malformed YAML") and p.stderr.count("\n") == 1
    assert "Traceback" not in p.stderr
    p = call_main(capsys, "--cfg", tmp_path / "none.yaml")
    assert p.returncode == 2 and "no such file" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.system
def test_missing_cfg_flag():
    p = run()
    assert p.returncode == 2 and "--cfg FILE is required" in p.stderr


def test_a_diverged_run_exits_1_with_one_line_and_says_so_in_its_directory(tmp_path, fmnist_root, capsys):
    from fixtures import tiny_raw, write_yaml

    cfg = write_yaml(tmp_path / "c.yaml", tiny_raw(fmnist_root, tmp_path / "runs", lr=99.0, optimizer="sgd",
                                                   schedule="constant", precision="fp32"))
    p = call_main(capsys, "--cfg", cfg)
    assert p.returncode == 1 and p.stderr.startswith("error: epoch 1: training loss became") and \
        p.stderr.count("\n") == 1
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "results.json").read_text())["status"] == "diverged"


@pytest.mark.system
def test_the_printed_resume_command_runs_as_printed_with_spaces_in_its_paths(tmp_path, fmnist_root, capsys):
    """A run named 'a b' under an output folder with a space, stopped after its first epoch: the command its
    console line and results.json give runs in a shell exactly as written and finishes the run."""
    import os
    import signal
    import subprocess
    import sys

    from fixtures import log_lines, tiny_raw, write_yaml

    def stop_after_epoch_1(line):
        if line.startswith("epoch 1/"):
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = write_yaml(tmp_path / "c.yaml", tiny_raw(fmnist_root, tmp_path / "my runs", name="a b"))
    with log_lines(stop_after_epoch_1) as lines:
        assert call_main(capsys, "--cfg", cfg).returncode == 143
    (run_dir,) = (tmp_path / "my runs").iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    printed = next(line for line in lines if line.startswith("interrupted by SIGTERM"))
    command = results["resume_command"]
    assert f"resume with: {command} (continues" in printed and "'" in command
    recorded = results["attempts"][0]["command"]
    assert recorded.startswith("python main.py --cfg ") and str(cfg) in recorded
    # "python" is this environment's interpreter, as on the user's PATH after activating it.
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    p = subprocess.run(command, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert json.loads((run_dir / "results.json").read_text())["status"] == "completed"


@pytest.mark.system
def test_a_config_mistake_is_reported_before_torch_is_imported(tmp_path):
    """A typo costs no wait: main.py reads and checks the config before anything imports torch (seconds)."""
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: simple_cnn\ndata:\n  name: fashion_mnist\ntrain:\n  epochs: many\n")
    code = ("import sys, main; code = main.main(['--cfg', sys.argv[1]]); "
            "print(code, 'torch' in sys.modules, file=sys.stderr)")
    p = subprocess.run([sys.executable, "-c", code, str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    first, *_, last = p.stderr.splitlines()
    assert first.startswith("error: ") and "train.epochs" in first and last == "2 False", p.stderr


# ----------------------------------------------------------------------------- KEY=VALUE arguments, completion


def test_plain_key_value_arguments_are_set_overrides(tmp_path, capsys):
    """Hydra style: --cfg FILE train.epochs=1 ... resolves to the config --set gives; several files still work."""
    cfg, medium = ROOT / "configs/fashion_mnist.yaml", ROOT / "configs/cnn_tr_medium.yaml"
    out = f"output.dir={tmp_path / 'runs'}"
    with_set = call_main(capsys, "--cfg", cfg, "--set", "train.epochs=1", "--set", "train.lr=3e-4", "--set", out,
                         "--dry-run")
    plain = call_main(capsys, "--cfg", cfg, "train.epochs=1", "--dry-run", "train.lr=3e-4", out)
    assert with_set.returncode == plain.returncode == 0, plain.stderr
    assert plain.stdout == with_set.stdout and "epochs: 1\n" in plain.stdout and "lr: 0.0003" in plain.stdout

    from main import parse_args

    args = parse_args(["--cfg", str(cfg), str(medium), "train.epochs=1", "--set", "train.lr=1", "seed=3"])
    assert args.cfg == [str(cfg), str(medium)] and args.overrides == ["train.lr=1", "train.epochs=1", "seed=3"]
    args = parse_args(["--resume", "runs/x", "train.epochs=5"])
    assert args.mode == "resume" and args.overrides == ["train.epochs=5"]


def test_a_plain_override_extends_a_resumed_run(tmp_path, fmnist_root, capsys):
    from fixtures import run_fit, tiny_config

    run_dir, _ = run_fit(tiny_config(fmnist_root, tmp_path, epochs=1))
    p = call_main(capsys, "--resume", run_dir, "train.lr=0.5")
    assert p.returncode == 2 and "train.lr is 0.5 but the run used" in p.stderr
    p = call_main(capsys, "--resume", run_dir, "train.epochs=2")
    assert p.returncode == 0, p.stderr
    assert json.loads((run_dir / "results.json").read_text())["epochs_done"] == 2


@pytest.mark.parametrize("args, message", [
    (["--cfg", "configs/none=1.yaml"], "error: --cfg configs/none=1.yaml: no such file, and not KEY=VALUE"),
    (["--cfg", "train.epochs=1"], "error: --cfg: no config file, only overrides (train.epochs=1, ...)"),
    (["--cfg", "configs/fashion_mnist.yaml", "--dry-run", "stray"], "error: stray: an extra argument, not KEY=VALUE"),
    (["--list-models", "train.epochs=2"], "error: train.epochs=2: a KEY=VALUE override (as --set) is only used with"),
    (["--cfg", "configs/fashion_mnist.yaml", "train.epoch=2"], "error: train.epoch: unknown key (did you mean"),
])
def test_ambiguous_or_misplaced_key_value_arguments_are_one_line(capsys, monkeypatch, args, message):
    monkeypatch.chdir(ROOT)
    p = call_main(capsys, *args)
    assert p.returncode == 2 and p.stderr.startswith(message) and p.stderr.count("\n") == 1, p.stderr


def test_a_file_named_like_an_override_is_refused_as_ambiguous(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.lr=1").write_text("")
    p = call_main(capsys, "--cfg", ROOT / "configs/fashion_mnist.yaml", "train.lr=1", "--dry-run")
    assert p.returncode == 2 and p.stderr == ("error: train.lr=1: both an existing file and a KEY=VALUE override; "
                                              "write ./train.lr=1 for the file, or --set train.lr=1 for the override\n")


def complete(line, tmp_path):
    """What argcomplete offers for ``line`` (cursor at its end): main.py as bash's completion hook runs it."""
    import os
    import subprocess
    import sys

    answer = tmp_path / "completion"
    env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "_ARGCOMPLETE_STDOUT_FILENAME": str(answer)}
    # -X importtime: the completion must not import torch (seconds on every Tab).
    p = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "main.py")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert not [row for row in p.stderr.splitlines() if row.split("|")[-1].strip() == "torch"]
    return [w.strip() for w in answer.read_text().split("\013")]


@pytest.mark.parametrize("line, expected", [
    ("main.py --cfg configs/fashion_m", ["configs/fashion_mnist.yaml"]),
    ("main.py --cfg configs/fashion_mnist.yaml train.accu", ["train.accumulate_steps="]),
    ("main.py --set train.lr_s", ["train.lr_scaling="]),
    ("main.py --set train.lr_scaling=", ["train.lr_scaling=none", "train.lr_scaling=linear", "train.lr_scaling=sqrt"]),
    ("main.py --resume runs/x output.tens", ["output.tensorboard="]),
    ("main.py --list-m", ["--list-models"]),
])
def test_shell_completion_offers_files_keys_and_choices(tmp_path, line, expected):
    assert complete(line, tmp_path) == expected
