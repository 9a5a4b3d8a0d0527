"""The speed tools of issue 25: the step profile, the new A/B levers, and time to accuracy against timm's train.py."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from bench import ab, profile, vs_timm

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- profile


def event(name, parent=None):
    return SimpleNamespace(name=name, cpu_parent=parent)


@pytest.mark.parametrize("chain, part", [
    (["aten::mm"], None),  # an op outside every label: the caller decides (other ops)
    (["bench.part:matmul", "aten::addmm"], "matmul"),
    (["bench.part:attention", "bench.part:matmul", "aten::addmm"], "matmul"),  # innermost label wins
    (["bench.part:attention", "aten::scaled_dot_product_attention", "aten::bmm"], "attention"),
    (["autograd::engine::evaluate_function: AddmmBackward0", "AddmmBackward0", "aten::mm"], "matmul"),
    (["autograd::engine::evaluate_function: NativeLayerNormBackward0", "aten::native_layer_norm_backward"],
     "norm/act/dropout"),
    (["autograd::engine::evaluate_function: ConvolutionBackward0", "aten::convolution_backward"], "conv"),
    (["Optimizer.step#AdamW.step", "aten::_fused_adamw_"], "optimizer"),
    (["bench.data", "aten::index"], "data"),
])
def test_profile_parts_follow_the_innermost_label(chain, part):
    e = None
    for name in chain:
        e = event(name, e)
    assert profile.part_of(e) == part


def test_profile_labels_modules_by_kind():
    from models.vit import Attention
    assert profile.module_part(nn.Linear(2, 2)) == "matmul"
    assert profile.module_part(nn.Conv2d(1, 1, 1)) == "conv"
    assert profile.module_part(nn.LayerNorm(2)) == profile.module_part(nn.Dropout()) == "norm/act/dropout"
    assert profile.module_part(Attention(8, 2, dim_head=4, qkv_bias=True, attn_drop=0.0, proj_drop=0.0)) \
        == "attention"
    assert profile.module_part(nn.Sequential()) is None


def test_profile_of_a_vit_splits_its_step(capsys, tmp_path):
    md = tmp_path / "p.md"
    assert profile.main(["--models", "vit", "--dataset", "mnist", "--device", "cpu", "--batch-size", "4",
                         "--steps", "1", "--warmup", "1", "--peak-size", "256", "--markdown", str(md)]) == 0
    text = md.read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ") and not line.startswith("| part")}
    times = [float(c[0].rstrip("%")) for c in rows.values()]
    flops = [float(c[1].rstrip("%")) for c in rows.values()]
    assert sum(times) == pytest.approx(100, abs=0.5) and sum(flops) == pytest.approx(100, abs=0.5)
    # A ViT's FLOPs are its linear layers and attention; each is timed, with a rate against the peak.
    assert {"matmul", "attention", "norm/act/dropout", "optimizer", "data"} <= set(rows)
    assert float(rows["matmul"][1].rstrip("%")) > 50 and float(rows["matmul"][2]) > 0
    assert float(rows["norm/act/dropout"][1].rstrip("%")) == 0  # no counted FLOPs: memory-bound work
    assert "vit" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--precision", "fp8"], "--precision: got 'fp8'"),
    (["--warmup", "-1"], "--warmup: got -1; must be >= 0"),
    (["--peak-size", "0"], "--peak-size: got 0; must be >= 1"),
])
def test_profile_bad_input_is_one_line(capsys, argv, message):
    assert profile.main(["--models", "vit", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


# ----------------------------------------------------------------------------- A/B levers


def test_ab_fused_optimizer_sides():
    off = ab.setup_for("vit", "mnist", 4, CPU, "fused_optimizer", False)
    on = ab.setup_for("vit", "mnist", 4, CPU, "fused_optimizer", True)
    assert on.optimizer.defaults["fused"] is True and not off.optimizer.defaults.get("fused")
    assert all(torch.equal(a, b) for a, b in zip(on.module.state_dict().values(), off.module.state_dict().values()))


def test_ab_attn_dropout_turns_off_only_the_attention_maps_dropout():
    off = ab.setup_for("vit_mini_patch4_32", "cifar10", 4, CPU, "attn_dropout", False)
    on = ab.setup_for("vit_mini_patch4_32", "cifar10", 4, CPU, "attn_dropout", True)
    assert {d.p for d in ab.attention_dropouts(off.module)} == {0.1}
    assert {d.p for d in ab.attention_dropouts(on.module)} == {0.0}
    others = lambda m: sorted(x.p for x in m.modules() if isinstance(x, nn.Dropout))  # noqa: E731
    assert others(on.module).count(0.1) == others(off.module).count(0.1) - 6  # 6 blocks' maps, nothing else


@pytest.mark.parametrize("setting, model, message", [
    ("attn_dropout", "simple_cnn", "simple_cnn has no attention dropout"),
    ("attention_maps", "deepvit_mini_patchnorm", "does not choose between SDPA"),  # re-attention: always written out
    ("attention_maps", "timm/vit_tiny_patch16_224", "has no attention dropout"),
])
def test_ab_a_setting_that_changes_nothing_is_one_line_before_the_table(capsys, setting, model, message):
    assert ab.main(["--setting", setting, "--models", f"vit_mini_patch4_32,{model}", "--device", "cpu"]) == 2
    out, err = capsys.readouterr()
    assert message in err and err.count("\n") == 1 and "|" not in out  # nothing measured first


def test_ab_compile_side_is_compiled(monkeypatch):
    modes = []  # torch.compile itself is lazy, but importing dynamo for it costs a second and a half
    monkeypatch.setattr(torch, "compile", lambda m, mode: modes.append(mode) or nn.Sequential(m))
    on = ab.setup_for("vit", "mnist", 4, CPU, "compile", True)
    assert modes == ["default"] and "compiled" in on.describe()
    off = ab.setup_for("vit", "mnist", 4, CPU, "compile", False)
    assert modes == ["default"] and "compiled" not in off.describe()


def test_ab_fused_optimizer_row(capsys):
    assert ab.main(["--setting", "fused_optimizer", "--models", "vit", "--device", "cpu", "--dataset", "mnist",
                    "--batch-size", "4", "--steps", "1", "--rounds", "1", "--warmup", "1", "--precision", "fp32"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    cells = [c.strip().replace(",", "") for c in row.strip("|").split("|")]
    assert cells[0] == "vit" and float(cells[1]) > 0 and float(cells[2]) > 0
    warm_off, warm_on = (float(x) for x in cells[4].split("/"))
    assert warm_off > 0 and warm_on > 0


# ----------------------------------------------------------------------------- time to accuracy vs. timm


FAKE_TRAIN = '''
import argparse, csv, os, subprocess, sys, time
p = argparse.ArgumentParser()
p.add_argument("--output"); p.add_argument("--experiment"); p.add_argument("--epochs", type=int)
p.add_argument("--data-dir")
args, _ = p.parse_known_args()
import timm  # the package beside this script, not the pinned one
assert timm.__file__.startswith(os.path.dirname(os.path.abspath(__file__))), timm.__file__
for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):  # uncompressed, where torchvision reads them
    assert os.path.getsize(os.path.join(args.data_dir, "FashionMNIST", "raw", name)) > 0
out = os.path.join(args.output, args.experiment)
os.makedirs(out, exist_ok=True)
for epoch in range(args.epochs):
    # a worker process that burns CPU, as a DataLoader worker would, then exits (reaped)
    burn = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.2: pass"
    subprocess.run([sys.executable, "-c", burn])
    with open(os.path.join(out, "summary.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr"])
        for e in range(epoch + 1):
            w.writerow([e, 1.0, 1.0, 85.0 + 3 * e, 99.0, 0.001])
    time.sleep(0.3)  # six polls of the test's 0.05 s: each epoch is seen on its own
'''


@pytest.fixture
def fake_timm_repo(tmp_path):
    repo = tmp_path / "timm-repo"
    (repo / "timm").mkdir(parents=True)
    (repo / "timm" / "__init__.py").write_text("")
    (repo / "timm" / "version.py").write_text("__version__ = '9.9.9'\n")
    (repo / "train.py").write_text(textwrap.dedent(FAKE_TRAIN))
    return repo


def test_tree_cpu_counts_live_and_reaped_children():
    burn = "import time\nt=time.process_time()\nwhile time.process_time()-t<{}: pass\n"
    # a parent that reaps one child (0.3 s of CPU) and keeps another burning until killed
    code = (f"import subprocess,sys\nsubprocess.run([sys.executable,'-c',{burn.format(0.2)!r}])\n"
            f"p=subprocess.Popen([sys.executable,'-c',{burn.format(30)!r}])\np.wait()\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 20
        while vs_timm.tree_cpu_seconds(proc.pid) < 0.4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert vs_timm.tree_cpu_seconds(proc.pid) >= 0.4  # 0.2 reaped + the live child's 0.2 so far
    finally:
        subprocess.run(["pkill", "-KILL", "-P", str(proc.pid)])
        proc.kill()
        proc.wait()
    assert vs_timm.tree_cpu_seconds(proc.pid) == 0  # gone: nothing to count


def test_vs_timm_times_each_epoch_of_timms_train_py(fake_timm_repo, fmnist_root, tmp_path, capsys, monkeypatch):
    md, js = tmp_path / "t.md", tmp_path / "t.json"
    monkeypatch.setattr(vs_timm, "POLL_S", 0.05)
    monkeypatch.chdir(tmp_path)  # a relative --out: timm runs in it, and still finds its data and output
    assert vs_timm.main(["--timm-repo", str(fake_timm_repo), "--root", str(fmnist_root), "--epochs", "2",
                         "--tools", "timm", "--targets", "87,90", "--out", "out",
                         "--markdown", str(md), "--json", str(js)]) == 0
    rows = json.loads(js.read_text())["results"]["timm"]["rows"]
    assert [(r["epoch"], r["val_acc"]) for r in rows] == [(1, 85.0), (2, 88.0)]
    assert rows[0]["wall_s"] < rows[1]["wall_s"] and 0.18 <= rows[0]["cpu_s"] < rows[1]["cpu_s"]
    text = md.read_text()
    assert "timm train.py 9.9.9" in text
    assert "Time to 87%: timm" in text and "(epoch 2)" in text and "Time to 90%: timm not reached" in text
    assert (tmp_path / "out" / "timm" / "summary.csv").is_file()
    err = capsys.readouterr().err  # progress as each epoch ends
    assert "timm: epoch 1 val acc 85.00% at" in err and "timm: epoch 2 val acc 88.00% at" in err


def test_vs_timm_a_tool_that_fails_is_told_apart_from_one_that_falls_short(fake_timm_repo, fmnist_root, tmp_path,
                                                                            monkeypatch):
    (fake_timm_repo / "train.py").write_text("import sys\nsys.exit(3)\n")
    md = tmp_path / "t.md"
    assert vs_timm.main(["--timm-repo", str(fake_timm_repo), "--root", str(fmnist_root), "--tools", "timm",
                         "--out", str(tmp_path / "out"), "--markdown", str(md)]) == 1
    assert "timm failed first (exit 3; see timm.log)" in md.read_text()


@pytest.mark.parametrize("argv, message", [
    (["--timm-repo", "/nonexistent"], "--timm-repo /nonexistent: no train.py"),
    (["--timm-repo", "/tmp", "--root", "/nonexistent"], "--root /nonexistent: expected the four idx files"),
    (["--timm-repo", "/tmp", "--tools", "lightning"], "--tools: got 'lightning'"),
    (["--timm-repo", "/tmp", "--targets", "x"], "--targets: got 'x'"),
    (["--timm-repo", "/tmp", "--targets", "88,nan"], "--targets: got '88,nan'"),
    (["--timm-repo", "/tmp", "--workers", "-1"], "--workers: got -1; must be >= 0"),
    (["--timm-repo", "/tmp", "--tools", "ours", "--out", "/etc/hostname"], "exists and is not an empty folder"),
])
def test_vs_timm_bad_input_is_one_line(capsys, fmnist_root, argv, message):
    argv = [a if a != "/tmp" else str(fmnist_root) for a in argv]
    if "--root" not in argv:
        argv += ["--root", str(fmnist_root)]
    assert vs_timm.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.system  # main.py as a subprocess, training a timm model
def test_vs_timm_runs_main_py_on_a_timm_model(fmnist_root, tmp_path, capsys):
    js = tmp_path / "t.json"
    assert vs_timm.main(["--timm-repo", str(tmp_path), "--root", str(fmnist_root), "--model", "test_resnet",
                         "--epochs", "2", "--batch-size", "32", "--tools", "ours", "--out", str(tmp_path / "out"),
                         "--json", str(js)]) == 0
    ours = json.loads(js.read_text())["results"]["ours"]
    assert [r["epoch"] for r in ours["rows"]] == [1, 2] and ours["returncode"] == 0
    assert 0 < ours["rows"][0]["cpu_s"] <= ours["rows"][1]["cpu_s"] <= ours["cpu_s"] + 0.5
    config = (tmp_path / "out" / "ours.yaml").read_text()
    assert "timm/test_resnet" in config and "augment: false" in config and "schedule: cosine" in config
