"""models/measure.py: FLOPs against hand counts, a measurement that leaves model and run untouched, latency
that interleaves models, stops when steady and flags noise."""
import itertools
import json
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from config import from_dict
from data import get_spec
from fixtures import TINY_VIT, FakeClock, run_fit, tiny_config
from models import build_model
from models.measure import Flops, describe, flops_per_image, measure_latency

FMNIST = get_spec("fashion_mnist")  # 1 x 28 x 28, 10 classes


def conv(hw, c_in, c_out, k):
    """Per image: every output pixel of every output channel is c_in * k * k multiply-adds, 2 FLOPs each."""
    return 2 * hw * c_out * c_in * k * k


def linear(tokens, d_in, d_out):
    return 2 * tokens * d_in * d_out


def tiny_cnn_transformer(dropout):
    cfg = from_dict({"model": {"name": "cnn_transformer", "cnn_channels": 16, "num_layers": 2,
                               "dim_feedforward": 32, "dropout": dropout}, "data": {"name": "fashion_mnist"}})
    torch.manual_seed(0)
    return build_model(cfg, FMNIST)


# ----------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize("dropout, attn_backward", [(0.0, 5), (0.1, 4)])
def test_flops_of_a_cnn_transformer_match_a_hand_count(dropout, attn_backward):
    # The CNN (models/simple_cnn.py) with its last conv at 16 channels: 'same' padding, 2x2 pools after
    # the 1st and 4th conv, 28 -> 14 -> 7 px. (pixels, in, out, kernel) per conv:
    convs = [conv(28 * 28, 1, 16, 3), conv(14 * 14, 16, 32, 3), conv(14 * 14, 32, 64, 3), conv(14 * 14, 64, 32, 1),
             conv(7 * 7, 32, 64, 3), conv(7 * 7, 64, 128, 3), conv(7 * 7, 128, 256, 3), conv(7 * 7, 256, 16, 1)]
    n, d, ff, layers = 7 * 7, 16, 32, 2  # tokens, width, feed-forward, blocks
    per_block = linear(n, d, 3 * d) + linear(n, d, d) + linear(n, d, ff) + linear(n, ff, d)  # qkv, proj, ff
    linears = layers * per_block + linear(1, d, 10)  # + the head on the pooled map
    # softmax(Q K^T) V over 2 heads of d/2: each matmul is 2 * n * n * (d/2) per head, 2 * n * n * d in all.
    attn = 2 * n * n * d
    inference = sum(convs) + linears + layers * 2 * attn

    # Backward: a matmul or conv costs its forward once per gradient it produces: the weight's always, the
    # input's unless the input needs none (only the image, into the first conv). Attention's backward, in
    # matmuls of the forward's size: the math path (dropout > 0 on the CPU) differentiates Q K^T and P V,
    # 2 gradients each: 4; the fused kernel (no dropout) first recomputes Q K^T: 5.
    training = 3 * (sum(convs) + linears) - convs[0] + layers * (2 + attn_backward) * attn

    assert flops_per_image(tiny_cnn_transformer(dropout), FMNIST) == Flops(inference, training)


def test_grouped_conv_backward_is_not_counted_groups_times():
    """torch's own formula counts a depthwise conv's weight gradient 4x here (its groups)."""
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 4, 3, padding=1, groups=4),
                          nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    spec = SimpleNamespace(in_chans=4, image_size=8)
    dw, fc = conv(8 * 8, 1, 4, 3), linear(1, 4 * 8 * 8, 10)  # a depthwise conv: one input channel per output
    assert flops_per_image(model, spec) == Flops(2 * dw + fc, 2 * dw + 3 * dw + 3 * fc)


@pytest.mark.parametrize("train", [True, False])
def test_counting_leaves_the_model_and_the_random_stream_alone(train):
    model = tiny_cnn_transformer(0.1).train(train)  # BatchNorm statistics and dropout
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    flops_per_image(model, FMNIST)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.training == train and all(m.training == train for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_new_run_records_its_flops(fmnist_root, tmp_path):
    cfg = tiny_config(fmnist_root, tmp_path, model=TINY_VIT, epochs=1)
    path, _ = run_fit(cfg)
    saved = json.loads((path / "results.json").read_text())
    flops = flops_per_image(build_model(cfg, FMNIST), FMNIST)
    assert (saved["flops_inference"], saved["flops_training"]) == (flops.inference, flops.training)


def test_a_count_that_fails_does_not_stop_the_run(fmnist_root, tmp_path, monkeypatch):
    import train.fit

    def unknown_op(model, spec):
        raise NotImplementedError("no formula for aten::mystery")
    monkeypatch.setattr(train.fit, "flops_per_image", unknown_op)
    monkeypatch.setattr(train.fit, "_FLOPS", {})  # not an earlier test's count of the same model
    path, _ = run_fit(tiny_config(fmnist_root, tmp_path, model=TINY_VIT, epochs=1))
    saved = json.loads((path / "results.json").read_text())
    assert saved["status"] == "completed" and "flops_training" not in saved and saved["params"] > 0


def test_summary_names_its_units():
    summary = describe(tiny_cnn_transformer(0.0), FMNIST).summary
    assert "Units." not in summary and "Total mult-adds (M): " in summary


# ----------------------------------------------------------------------------- latency


@pytest.fixture
def clock(monkeypatch):
    return FakeClock(monkeypatch)


class Sleeper(nn.Module):
    """A forward that lasts ``pick()`` seconds on the fake clock and notes its name, mode and thread count."""

    def __init__(self, name, pick, log, clock):
        super().__init__()
        self.name, self.pick, self.log, self.clock = name, pick, log, clock

    def forward(self, x):
        self.log.append((self.name, self.training, torch.get_num_threads()))
        self.clock.sleep(self.pick())
        return x


def test_a_steady_model_stops_early_with_a_small_spread(clock):
    log = []
    model = Sleeper("steady", lambda: 0.0025, log, clock)
    r = measure_latency({"steady": model}, FMNIST, batch=2, budget_s=30, target_spread=0.25)["steady"]
    assert r.repeats == 7 and r.spread < 1e-9 and not r.flagged  # settled at the fewest repeats, long before 30 s
    assert len(log) == 3 + 7  # three warm-ups, then one call a sample (2.5 ms is past MIN_SAMPLE_S)
    assert [r.p25_ms, r.ms, r.p75_ms] == pytest.approx([2.5 / 2] * 3) and r.batch == 2  # per image


def test_models_are_interleaved_the_noisy_one_is_flagged_threads_are_set_and_restored(clock):
    log, bimodal = [], itertools.cycle([0.002, 0.016])  # half the calls fast, half slow: no luck of a seed
    models = {"steady": Sleeper("steady", lambda: 0.0025, log, clock),
              "bimodal": Sleeper("bimodal", bimodal.__next__, log, clock)}
    models["steady"].train(), models["bimodal"].eval()
    before = torch.get_num_threads()
    want = 2 if before == 1 else 1
    out = measure_latency(models, FMNIST, batch=1, threads=want, budget_s=0.6)
    assert torch.get_num_threads() == before and {r.threads for r in out.values()} == {want}
    assert {threads for _, _, threads in log} == {want} and not any(training for _, training, _ in log)
    assert models["steady"].training and not models["bimodal"].training  # each keeps its mode

    steady, bimodal = out["steady"], out["bimodal"]
    assert bimodal.flagged and bimodal.spread > 0.10 and bimodal.repeats > 7  # ran until the budget was spent
    assert steady.repeats == bimodal.repeats
    # Every sample is one call here (each lasts >= 2 ms): after the warm-ups, each round calls both models.
    timed = [name for name, _, _ in log][-2 * steady.repeats:]
    assert all({timed[i], timed[i + 1]} == {"steady", "bimodal"} for i in range(0, len(timed), 2))


def test_ratios_to_the_fastest_stay_steady_when_the_machine_is_not(clock):
    """Load that comes and goes (here: 30 ms of none, then 90 ms of all calls 3x slower: as many rounds of
    each) spreads the milliseconds, but the models of one round see the same load: the ratio of their times
    stays put."""
    def load():
        return 1.0 if clock.now * 1000 % 120 < 30 else 3.0

    log = []
    models = {"fast": Sleeper("fast", lambda: 0.002 * load(), log, clock),
              "slow": Sleeper("slow", lambda: 0.004 * load(), log, clock)}
    out = measure_latency(models, FMNIST, batch=1, budget_s=1.5, target_spread=0.0)  # all the budget
    fast, slow = out["fast"], out["slow"]
    assert fast.reference == slow.reference == "fast" and fast.ratio == 1.0 and fast.ratio_ci == 0.0
    assert fast.spread > 0.3 and fast.flagged  # the milliseconds: load 1x in some rounds, 3x in others
    assert slow.ratio == pytest.approx(2.0, rel=0.15) and slow.ratio_ci < 0.03 * slow.ratio
    assert not slow.ratio_flagged and slow.ratio_spread < slow.spread


def test_runs_of_one_architecture_count_its_flops_once(fmnist_root, tmp_path, monkeypatch):
    """A sweep over seeds trains one architecture: its FLOPs are counted by the first run and reused (a model
    section or dataset that differs is counted anew)."""
    import train.fit

    counted = []

    def counting(model, spec):
        counted.append(spec.name)
        return flops_per_image(model, spec)
    monkeypatch.setattr(train.fit, "flops_per_image", counting)
    monkeypatch.setattr(train.fit, "_FLOPS", {})
    saved = []
    for seed, depth in ((0, 1), (1, 1), (0, 2)):
        path, _ = run_fit(tiny_config(fmnist_root, tmp_path, model={**TINY_VIT, "depth": depth}, seed=seed, epochs=1))
        saved.append(json.loads((path / "results.json").read_text())["flops_training"])
    assert counted == ["fashion_mnist", "fashion_mnist"]  # depth 1 once for seeds 0 and 1, then depth 2
    assert saved[0] == saved[1] < saved[2]


def test_the_reference_is_the_model_faster_in_most_rounds_not_the_lower_median(clock):
    """Load that moves between rounds can give the faster model the higher median of milliseconds (issue 24:
    a reference at 1× beside a model at 0.73×): "a" is faster than "b" in 4 rounds of 5, yet its median is
    10 ms against b's 4. The reference is a, and every ratio is at least 1."""
    log = []
    a, b = itertools.cycle([0.003, 0.003, 0.010, 0.010, 0.010]), itertools.cycle([0.004, 0.004, 0.011, 0.011, 0.001])
    models = {"a": Sleeper("a", a.__next__, log, clock), "b": Sleeper("b", b.__next__, log, clock)}
    out = measure_latency(models, FMNIST, batch=1, budget_s=30, target_spread=0.0, max_repeats=50)
    assert out["a"].ms > out["b"].ms  # what picked the reference before
    assert out["a"].reference == out["b"].reference == "a"
    assert out["a"].ratio == 1.0 and out["b"].ratio == pytest.approx(1.1, rel=0.01)


def test_a_ratio_flag_says_whether_rounds_or_their_spread_were_too_few(clock):
    """"too few rounds" was shown for a model timed 550 times, flagged for its ratio's wide interval."""
    log = []
    noisy = itertools.cycle([0.002, 0.002, 0.004, 0.006])
    models = {"fast": Sleeper("fast", lambda: 0.002, log, clock), "noisy": Sleeper("noisy", noisy.__next__, log, clock)}
    many = measure_latency(models, FMNIST, batch=1, budget_s=30, target_spread=0.0, max_repeats=40)["noisy"]
    assert many.ratio_flagged and many.repeats == 40
    assert re.fullmatch(r"interval ±\d+% > ±3% over 40 rounds", many.ratio_why), many.ratio_why
    few = measure_latency(models, FMNIST, batch=1, budget_s=30, target_spread=0.0, max_repeats=4)["noisy"]
    assert few.ratio_flagged and few.ratio_why == "4 rounds < 7"
