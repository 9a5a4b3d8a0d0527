"""What a model costs, measured the same way by training, the comparison and the benchmarks:
torchinfo summary, FLOPs per image, inference latency, and the one device sync they all time with."""
from __future__ import annotations

import contextlib
import copy
import math
import re
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, ContextManager, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a host clock brackets it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class ModelInfo:
    params: int
    mult_adds: int  # per image, as torchinfo counts them: convolutions, and linears as if on one token; no attention
    summary: str


def describe(model: nn.Module, spec, depth: int = 4) -> ModelInfo:
    """torchinfo summary for one image of the dataset's shape."""
    import torchinfo
    from torchinfo.enums import Units

    device = next(model.parameters()).device
    stats = torchinfo.summary(model, input_size=(1, spec.in_chans, spec.image_size, spec.image_size),
                              col_names=("output_size", "num_params", "mult_adds"), depth=depth,
                              device=device, mode="eval", verbose=0)
    # torchinfo formats its unit enum itself on Python >= 3.11: "Total mult-adds (Units.MEGABYTES)" for a count.
    summary = re.sub(r"\(Units\.(\w+)\)",
                     lambda m: f"({Units[m[1]].value})" if m[1] in Units.__members__ else m[0], str(stats))
    return ModelInfo(stats.total_params, int(stats.total_mult_adds), summary)


# ----------------------------------------------------------------------------- FLOPs


@dataclass(frozen=True)
class Flops:
    """FLOPs per image as ``torch.utils.flop_counter`` counts them: 2 per multiply-add of matmuls,
    convolutions and attention; elementwise work (norms, activations, softmax) is not counted."""
    inference: int  # one forward, eval mode
    training: int  # forward + backward of the loss, train mode; the optimizer step is not counted


def _sdpa_flop(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _sdpa_backward_flop(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out, query, key, value)


def _conv_backward_flop(grad_out, x, weight, _bias, _stride, _padding, _dilation, transposed, _output_padding,
                        _groups, output_mask, out_shape=None, **kwargs) -> int:
    """Each gradient of a convolution costs what its forward costs. torch's own formula counts the weight
    gradient of a grouped conv as if every input channel met every output channel: ``groups`` times too
    much, 256x for ConvMixer's depthwise convs."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(x, weight, grad_out, transposed)
    return forward * (bool(output_mask[0]) + bool(output_mask[1]))


def _extra_formulas() -> dict:
    """Formulas for a ``FlopCounterMode``'s ``custom_mapping``: the CPU attention kernels, which torch's
    counter does not know (attention on the CPU would count zero), and grouped conv backward.

    A per-counter mapping rather than ``register_flop_formula``: registering is global and raises on a
    duplicate, so a later torch that registers the CPU kernels itself would fail on its own import.
    """
    from torch.utils.flop_counter import flop_registry

    aten = torch.ops.aten
    formulas = {aten.convolution_backward: _conv_backward_flop}
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", _sdpa_flop),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", _sdpa_backward_flop)):
        op = getattr(aten, name, None)
        if op is not None and op not in flop_registry:
            formulas[op] = formula
    return formulas


def _count(model: nn.Module, spec, *, training: bool, batch: int = 2):
    """A ``FlopCounterMode`` that counted one forward (eval mode, no grad) or one training forward and
    backward of a cross-entropy loss (no optimizer step) on ``batch`` random images of the dataset's shape.
    It runs on a deep copy, inside a forked RNG, so the model (weights, BatchNorm statistics, mode) and the
    run's random stream (dropout draws, the inputs) are untouched."""
    from torch.utils.flop_counter import FlopCounterMode

    m = copy.deepcopy(model).cpu()
    with torch.random.fork_rng(devices=[]):
        x = torch.randn(batch, spec.in_chans, spec.image_size, spec.image_size)
        with FlopCounterMode(display=False, custom_mapping=_extra_formulas()) as counter:
            if training:
                with torch.enable_grad():
                    F.cross_entropy(m.train()(x), torch.zeros(batch, dtype=torch.long)).backward()
            else:
                with torch.no_grad():
                    m.eval()(x)
    return counter


def flops_per_image(model: nn.Module, spec) -> Flops:
    """Inference and training FLOPs per image of the dataset's shape, counted on the CPU.

    Inference: one forward in eval mode without grad. Training: forward in train mode and backward of a
    cross-entropy loss (no optimizer step). Each on a batch of 2, halved: BatchNorm1d in train mode
    refuses a batch of 1.
    """
    return Flops(_count(model, spec, training=False).get_total_flops() // 2,
                 _count(model, spec, training=True).get_total_flops() // 2)


def training_flops_by_op(model: nn.Module, spec) -> dict[str, int]:
    """Training FLOPs per image (as ``flops_per_image`` counts them) split by aten op: ``{"aten.mm": n, ...}``."""
    counts = _count(model, spec, training=True).get_flop_counts().get("Global", {})
    return {str(op).removesuffix(".default"): n // 2 for op, n in counts.items() if n}


# ----------------------------------------------------------------------------- latency

MIN_SAMPLE_S = 0.002  # one timed sample lasts at least this: far above the clock's resolution and overhead
FLOOR_REPEATS = 3  # the fewest samples a median and quartiles are taken from, even past the budget
# A latency ratio whose ~95% interval is wider than this share of it cannot rank neighbouring sizes (cnn_tr_small,
# _medium and _large differ by about 10% at batch 1).
RATIO_CI_MAX = 0.03


@dataclass
class Latency:
    """Inference latency of one model, per image, from ``measure_latency``'s interleaved rounds."""
    ms: float  # median milliseconds per image (at batch 1, per call)
    p25_ms: float
    p75_ms: float
    spread: float  # (p75 - p25) / median: the relative interquartile range of the samples
    repeats: int  # timed samples
    threads: int  # torch's intra-op threads during the measurement
    batch: int
    flagged: bool  # too noisy to print as a clean number: spread > max_spread, or fewer than min_repeats samples
    why: str = ""  # what flagged it, in words: "spread 38% > 10%", "3 samples < 7 (budget spent)"
    # Against the fastest model of the same measurement, round by round: load that drifts between rounds hits
    # both sides of each ratio alike, so a ratio stays steady on a machine too busy for steady milliseconds.
    reference: str = ""  # the fastest model (its ratio is 1)
    ratio: float = 1.0  # median over rounds of this model's time / the reference's
    ratio_spread: float = 0.0  # relative interquartile range of those ratios
    ratio_ci: float = 0.0  # half-width of the ratio's ~95% interval: 1.57 IQR / sqrt(rounds) (McGill et al. 1978)
    ratio_flagged: bool = False  # fewer than min_repeats rounds, or that interval wider than RATIO_CI_MAX of the ratio
    ratio_why: str = ""  # which, in words: "3 rounds < 7", "interval ±15% > ±3% over 550 rounds"

    def to_dict(self) -> dict:
        return asdict(self)


def _quartiles(samples: list[float]) -> tuple[float, float, float]:
    """(p25, median, p75), interpolated between samples; a single sample is all three."""
    return tuple(statistics.quantiles(samples, n=4, method="inclusive")) if len(samples) > 1 else (samples[0],) * 3


def _spread(samples: list[float]) -> float:
    p25, median, p75 = _quartiles(samples)
    return (p75 - p25) / median


@torch.inference_mode()
def measure_latency(models: dict[str, nn.Module], spec, *, batch: int, threads: int = 1,
                    device: torch.device = torch.device("cpu"), budget_s: float = 10.0,
                    target_spread: float = 0.05, max_spread: float = 0.10, min_repeats: int = 7,
                    max_repeats: Optional[int] = None, channels_last: bool = False,
                    autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> dict[str, Latency]:
    """Inference latency of each model at this batch size, measured side by side.

    With ``threads`` intra-op threads (the previous count is restored afterwards). Each model gets up to
    three warm-up passes (fewer once the models' warm-ups take a quarter of ``budget_s``), which also set
    how many calls one sample loops over so that it lasts ``MIN_SAMPLE_S``. Then rounds, each timing every
    model once, in an order that rotates: a change in the machine's load hits all models alike, and every
    model gets the same number of samples. The rounds stop, checked between them, once every model has
    ``min_repeats`` samples with a spread (relative IQR) within ``target_spread``, after ``max_repeats``, or
    once ``budget_s`` is spent (but not before ``FLOOR_REPEATS``). A spread above ``max_spread`` is
    ``flagged``: at 10% the noise is as large as the gap between neighbouring sizes (cnn_tr_small, _medium
    and _large differ by about 10% at batch 1), so such a number cannot rank them.
    ``autocast``: e.g. a run's ``Precision.autocast``. Each model keeps its train/eval mode.
    """
    x = torch.randn(batch, spec.in_chans, spec.image_size, spec.image_size,
                    generator=torch.Generator().manual_seed(0)).to(device)  # not the run's random stream
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def timer(model: nn.Module) -> Callable[[int], float]:
        def timed(calls: int) -> float:
            sync(device)
            t0 = time.perf_counter()
            with autocast():
                for _ in range(calls):
                    model(x)
            sync(device)
            return time.perf_counter() - t0
        return timed

    names = list(models)
    modes = {name: m.training for name, m in models.items()}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        used = torch.get_num_threads()
        start = time.perf_counter()
        timers, calls = {}, {}
        for name in names:
            timers[name] = timer(models[name].eval())
            warm: list[float] = []
            while len(warm) < 3 and (not warm or time.perf_counter() - start < budget_s / 4):
                warm.append(timers[name](1))  # kernel selection (cudnn.benchmark), allocator and caches
            calls[name] = max(1, math.ceil(MIN_SAMPLE_S / min(warm)))
        samples: dict[str, list[float]] = {name: [] for name in names}
        rounds = 0
        while True:
            for name in names[rounds % len(names):] + names[:rounds % len(names)]:
                samples[name].append(timers[name](calls[name]) / calls[name])
            rounds += 1
            settled = rounds >= min_repeats and all(_spread(s) <= target_spread for s in samples.values())
            spent = rounds >= FLOOR_REPEATS and time.perf_counter() - start > budget_s
            if settled or spent or (max_repeats is not None and rounds >= max_repeats):
                break
    finally:
        torch.set_num_threads(previous)
        for name, m in models.items():
            m.train(modes[name])

    def median_ratio(name: str, ref: str) -> float:  # sample i of every model is from round i
        return statistics.median(t / r for t, r in zip(samples[name], samples[ref]))

    # The fastest by medians of milliseconds, unless another model is faster in most rounds: on a busy machine
    # the load between rounds moves medians of milliseconds, and a ratio below 1 would sit beside "the fastest".
    reference = min(names, key=lambda name: statistics.median(samples[name]))
    for _ in names:
        faster = min(names, key=lambda name: median_ratio(name, reference))
        if median_ratio(faster, reference) >= 1:
            break
        reference = faster
    out = {}
    for name, s in samples.items():
        p25, median, p75 = _quartiles([1000 * t / batch for t in s])
        spread = (p75 - p25) / median
        why = "; ".join(([f"spread {100 * spread:.0f}% > {100 * max_spread:.0f}%"] if spread > max_spread else [])
                        + ([f"{len(s)} samples < {min_repeats} (budget spent)"] if len(s) < min_repeats else []))
        ratios = [t / r for t, r in zip(s, samples[reference])]
        q25, ratio, q75 = _quartiles(ratios)
        ci = 1.57 * (q75 - q25) / math.sqrt(len(ratios))
        ratio_why = (f"{len(ratios)} rounds < {min_repeats}" if len(ratios) < min_repeats else
                     f"interval ±{100 * ci / ratio:.0f}% > ±{100 * RATIO_CI_MAX:.0f}% over {len(ratios)} rounds"
                     if ci > RATIO_CI_MAX * ratio else "")
        out[name] = Latency(median, p25, p75, spread, len(s), used, batch, flagged=bool(why), why=why,
                            reference=reference, ratio=ratio, ratio_spread=(q75 - q25) / ratio, ratio_ci=ci,
                            ratio_flagged=bool(ratio_why), ratio_why=ratio_why)
    return out


def latency_ms(model: nn.Module, spec, device: torch.device, batch: int, *, channels_last: bool = False,
               autocast: Callable[[], ContextManager] = contextlib.nullcontext, max_repeats: int = 30,
               budget_s: float = 1.0) -> float:
    """Median milliseconds per image of one model with the threads already set: ``measure_latency``'s
    number alone, for callers that print one figure (at least 3, at most ``max_repeats`` samples)."""
    return measure_latency({"model": model}, spec, batch=batch, threads=torch.get_num_threads(), device=device,
                           budget_s=budget_s, min_repeats=min(7, max_repeats), max_repeats=max_repeats,
                           channels_last=channels_last, autocast=autocast)["model"].ms
