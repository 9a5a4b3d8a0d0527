"""The measuring tools run end to end and their numbers are consistent with each other (no timings asserted)."""
import json
from pathlib import Path

import pytest

from train import ab, bench, tta

ROOT = Path(__file__).resolve().parents[1]


def test_bench_one_model(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert bench.main(["--models", "simple_cnn", "--device", "cpu", "--batch-size", "16", "--eval-batch-size", "8",
                       "--steps", "2", "--rounds", "1", "--warmup", "1", "--latency-repeats", "3",
                       "--synthetic", "64", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    (r,) = data["results"]
    head = data["header"]
    assert r["model"] == "simple_cnn" and r["params"] == 431_594 and r["channels_last"] is True
    assert r["speedup"] == pytest.approx(r["ours_images_per_s"] / r["reference_images_per_s"])
    assert r["peak_share"] == pytest.approx(r["achieved_tflop_s"] / head["peak_tflop_s"])
    assert head["peak_tflop_s"] == pytest.approx(max(head["peak_start_tflop_s"], head["peak_end_tflop_s"]))
    assert r["achieved_tflop_s"] == pytest.approx(r["train_gflop_per_image"] * r["ours_images_per_s"] / 1e3)
    assert 0 <= r["outside_share"] < 1 and r["latency_ms_batch1"] > 0 and r["latency_ms_batched"] > 0
    assert "| simple_cnn | cifar10 | 431,594 |" in capsys.readouterr().out


def test_bench_unknown_model_is_one_line(capsys):
    assert bench.main(["--models", "simple_cnm"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'simple_cnm' (did you mean 'simple_cnn'?)" in err and err.count("\n") == 1


def test_time_to_target():
    history = [{"epoch": 1, "val_acc": 50.0, "epoch_time_s": 2.0}, {"epoch": 2, "val_acc": 93.0, "epoch_time_s": 3.0}]
    assert tta.time_to(history, 93) == (2, 5.0)
    assert tta.time_to(history, 99) == (None, None)


def test_tta_runs_both_loops_from_the_same_weights(fmnist_root, tmp_path, capsys):
    out = tmp_path / "t.json"
    assert tta.main(["--cfg", str(ROOT / "configs/fashion_mnist.yaml"), "--set", f"data.root={fmnist_root}",
                     "--set", "data.download=false", "--set", "data.cache=false", "--set", "train.epochs=2",
                     "--set", "train.batch_size=64", "--set", f"output.dir={tmp_path / 'runs'}",
                     "--target", "0", "--workers", "0", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["epoch"] for r in data["ours"]] == [1, 2]
    assert [r["epoch"] for r in data["reference"]] == [1]  # target 0 is reached at once: the reference stops
    # Same initial weights, data and recipe: the first epoch's training loss agrees closely.
    assert data["reference"][0]["train_loss"] == pytest.approx(data["ours"][0]["train_loss"], rel=0.1)
    assert "Time to 0%: ours" in capsys.readouterr().out


@pytest.mark.parametrize("setting", ["channels_last", "bf16"])
def test_ab_prints_a_row_per_model(capsys, setting):
    assert ab.main(["--setting", setting, "--models", "simple_cnn", "--device", "cpu", "--batch-size", "8",
                    "--steps", "1", "--rounds", "1"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    name, nchw, nhwc, ratio = (c.strip().replace(",", "") for c in row.strip("|").split("|"))
    assert name == "simple_cnn" and ratio.endswith("x")
    assert float(ratio[:-1]) == pytest.approx(float(nhwc) / float(nchw), rel=0.05)  # the cells are rounded
