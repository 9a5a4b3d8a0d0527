"""Where a training step's time goes: a ``torch.profiler`` table per model and precision, beside its FLOP shares.

    python -m bench.profile --models vit_mini_patch4_32,cnn_tr_medium --precision fp32,bf16 --device cpu
    python -m bench.profile --models vit_mini_patch4_32 --compile default --markdown profile.md

Per model and precision, the training loop's own setup (``prepare``: precision, channels_last, the CPU
dropout mask, compile if asked) trains ``--steps`` steps on synthetic images under the profiler, after
``--warmup`` untimed steps. Every profiled op's self time goes to one part of the step:

* **matmul**: linear layers (``mm``/``addmm``) forward and backward;
* **conv**: convolutions forward and backward;
* **attention**: what runs inside an attention module or ``scaled_dot_product_attention`` other than its
  input and output projections (the score and value products, softmax, attention dropout), and the backward
  of the products and softmax;
* **norm/act/dropout**: LayerNorm, BatchNorm, GELU, ReLU, dropout and stochastic depth forward, and the
  backward of the norms and activations;
* **other ops**: residual adds, reshapes and copies, the loss, and backward ops that autograd runs as a plain
  multiply (``MulBackward0``: dropout's and stochastic depth's backward, the attention scale's), which cannot
  be told apart by name;
* **optimizer**: ``Optimizer.step`` and ``zero_grad`` (and the schedule);
* **data**: taking the next batch from the loader (on-device augmentation included);
* **framework**: time the profiler saw in no op and outside every part: Python, the autograd engine, dispatch.

The innermost label wins: a linear layer inside an attention module is a matmul; Python time inside a
labelled module counts to its part. With ``--compile`` no module is labelled (the hooks would break the
compiled graph): fused kernels named by inductor count as "compiled kernels", the rest by op name.

Beside each part: its share of the step's training FLOPs (``models.measure.training_flops_by_op``:
``mm``/``addmm`` are matmul, ``bmm`` and the attention kernels attention, convolutions conv; the other parts
do no counted FLOPs) and the rate it runs at, against the device's peak measured in the same run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from typing import Iterator, Optional

import torch
import torch.nn as nn
from torch.autograd.profiler import record_function

from bench.common import (COMPILE_MODES, PRECISIONS, Take, bench_config, check_output, dataset_for, endless,
                          matmul_peak, model_names, synthetic_data)
from core.cli import run_cli
from core.errors import UserError
from core.files import atomic_write
from data import get_spec
from models import build_model
from models.measure import sync, training_flops_by_op
from train.engine import train_one_epoch
from train.setup import Precision, prepare, resolve_device, seed_everything

PARTS = ("matmul", "conv", "attention", "norm/act/dropout", "other ops", "optimizer", "data", "framework",
         "compiled kernels")
LABEL = "bench.part:"  # the prefix of the record_function labels the module hooks open

# Forward: a module's class -> its part (by isinstance; the innermost labelled module wins).
MODULE_PARTS = ((nn.Linear, "matmul"), (nn.modules.conv._ConvNd, "conv"),
                (nn.modules.normalization.LayerNorm, "norm/act/dropout"),
                (nn.modules.batchnorm._BatchNorm, "norm/act/dropout"), (nn.GroupNorm, "norm/act/dropout"),
                (nn.GELU, "norm/act/dropout"), (nn.ReLU, "norm/act/dropout"), (nn.SiLU, "norm/act/dropout"),
                (nn.Dropout, "norm/act/dropout"))

# Backward: the autograd node a backward op runs in (its name without the trailing number) -> its part.
NODE_PARTS = {
    "AddmmBackward": "matmul", "MmBackward": "matmul", "LinearBackward": "matmul",
    "ConvolutionBackward": "conv", "MkldnnConvolutionBackward": "conv",
    "BmmBackward": "attention", "SoftmaxBackward": "attention",
    "NativeLayerNormBackward": "norm/act/dropout", "NativeBatchNormBackward": "norm/act/dropout",
    "CudnnBatchNormBackward": "norm/act/dropout", "GeluBackward": "norm/act/dropout",
    "ReluBackward": "norm/act/dropout", "ThresholdBackward": "norm/act/dropout",
    "NativeDropoutBackward": "norm/act/dropout", "SiluBackward": "norm/act/dropout",
}

FLOP_PARTS = {"aten.mm": "matmul", "aten.addmm": "matmul", "aten.bmm": "attention",
              "aten.convolution": "conv", "aten.convolution_backward": "conv"}


def module_part(module: nn.Module) -> Optional[str]:
    if "attention" in type(module).__name__.lower():
        return "attention"
    if type(module).__name__ == "StochasticDepth":
        return "norm/act/dropout"
    return next((part for cls, part in MODULE_PARTS if isinstance(module, cls)), None)


def label_modules(model: nn.Module) -> list:
    """Forward hooks that open a ``record_function`` labelled with each module's part around its forward (an
    attention module's ``attn_drop`` is attention)."""
    handles = []
    for name, module in model.named_modules():
        part = "attention" if name.rsplit(".", 1)[-1] == "attn_drop" else module_part(module)
        if part is None:
            continue
        ctx: list = []

        def enter(_m, _args, part=part, ctx=ctx):
            rf = record_function(LABEL + part)
            rf.__enter__()
            ctx.append(rf)

        def leave(_m, _args, _out, ctx=ctx):
            ctx.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter),
                    module.register_forward_hook(leave, always_call=True)]  # closed even if forward raises
    return handles


def part_of(event) -> Optional[str]:
    """The part an event's own (self) time belongs to, from its name and its ancestors' (innermost first)."""
    e = event
    while e is not None:
        name = e.name
        if name == "bench.data":
            return "data"
        if name.startswith(("Optimizer.step", "Optimizer.zero_grad")) or "lr_scheduler" in name:
            return "optimizer"
        if name.startswith(LABEL):
            return name[len(LABEL):]
        if "scaled_dot_product" in name or "ScaledDotProduct" in name:
            return "attention"
        node = name.removeprefix("autograd::engine::evaluate_function: ").rstrip("0123456789")
        if node in NODE_PARTS:
            return NODE_PARTS[node]
        if e is event and ("triton" in name or "cpp_fused" in name or "CompiledFunction" in name
                           or name.startswith("Torch-Compiled Region")):
            return "compiled kernels"
        e = e.cpu_parent
    return None


def split_time(events) -> dict[str, float]:
    """Self CPU time (seconds) per part; an unlabelled aten op is 'other ops', anything else unlabelled
    (Python, the autograd engine, dispatch) 'framework'."""
    parts: dict[str, float] = defaultdict(float)
    for e in events:
        if e.device_type != torch.autograd.DeviceType.CPU:
            continue
        self_s = e.self_cpu_time_total / 1e6
        if self_s <= 0:
            continue
        part = part_of(e)
        if part is None:
            part = "other ops" if e.name.startswith("aten::") else "framework"
        parts[part] += self_s
    return parts


def labelled(stream: Iterator) -> Iterator:
    while True:
        with record_function("bench.data"):
            batch = next(stream)
        yield batch


def profile_model(name: str, precision: str, args, device: torch.device, peak: float) -> dict:
    spec = get_spec(dataset_for(name, args.dataset))
    cfg = bench_config(name, spec.name, batch_size=args.batch_size, device=device.type, precision=precision,
                       compile=args.compile)
    seed_everything(cfg.seed)
    s = prepare(cfg, build_model(cfg, spec), synthetic_data(spec.name, 8 * args.batch_size).to(device), device)
    stream = labelled(endless(s.train_loader))
    if args.warmup:
        train_one_epoch(s, Take(stream, args.warmup), log_every=10 ** 9)
    # The step time without the profiler or its labels: median of rounds of --steps steps.
    plain = []
    for _ in range(3):
        sync(device)
        t0 = time.perf_counter()
        train_one_epoch(s, Take(stream, args.steps), log_every=10 ** 9)
        sync(device)
        plain.append((time.perf_counter() - t0) / args.steps)
    handles = label_modules(s.module) if args.compile == "off" else []
    try:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            sync(device)
            t0 = time.perf_counter()
            train_one_epoch(s, Take(stream, args.steps), log_every=10 ** 9)
            sync(device)
            profiled_s = time.perf_counter() - t0
    finally:
        for h in handles:
            h.remove()
    seconds = split_time(prof.events())
    total = sum(seconds.values())
    flops = defaultdict(float)
    for op, n in training_flops_by_op(s.module, spec).items():
        flops[FLOP_PARTS.get(op, "attention" if "attention" in op else "other ops")] += n * args.batch_size
    step_s = statistics.median(plain)
    step_flops = sum(flops.values())
    return {"model": name, "precision": str(s.precision), "setup": s.describe(), "batch_size": args.batch_size,
            "step_s": step_s, "profiled_step_s": profiled_s / args.steps, "step_gflop": step_flops / 1e9,
            "peak_share": step_flops / step_s / peak,
            "parts": {p: {"time_share": seconds.get(p, 0.0) / total if total else 0.0,
                          "flop_share": flops.get(p, 0.0) / step_flops if step_flops else 0.0,
                          # the part's rate: its FLOPs over its share of the unprofiled step
                          "tflop_s": (flops[p] / (step_s * seconds[p] / total) / 1e12
                                      if flops.get(p) and seconds.get(p) else None)}
                      for p in PARTS if seconds.get(p) or flops.get(p)}}


def markdown(rows: list[dict], header: str) -> str:
    out = [header, ""]
    for r in rows:
        out += [f"**{r['model']}**, {r['setup']}, batch {r['batch_size']}: {r['step_s'] * 1e3:.0f} ms per step "
                f"({r['profiled_step_s'] * 1e3:.0f} ms under the profiler), {r['step_gflop']:.2f} GFLOP per step, "
                f"{r['peak_share']:.1%} of peak", "",
                "| part | time | FLOPs | TFLOP/s | % of peak |", "|---|---:|---:|---:|---:|"]
        for part, v in sorted(r["parts"].items(), key=lambda kv: -kv[1]["time_share"]):
            rate = v["tflop_s"]
            tflops, share = ("–", "–") if rate is None else (f"{rate:.3g}", f"{rate * 1e12 / r['peak']:.0%}")
            out.append(f"| {part} | {v['time_share']:.1%} | {v['flop_share']:.1%} | {tflops} | {share} |")
        out.append("")
    return "\n".join(out)


def _main(argv: Optional[list[str]]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", required=True, help="comma-separated model names")
    p.add_argument("--precision", default="fp32",
                   help=f"comma-separated train.precision values: {', '.join(PRECISIONS)} (default fp32)")
    p.add_argument("--dataset", help="dataset shape (default: each model's own, CIFAR-10 for most)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--compile", default="off", choices=COMPILE_MODES)
    p.add_argument("--steps", type=int, default=5, help="profiled steps (and steps per unprofiled round)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--peak-size", type=int, metavar="N",
                   help="side of the square matmul the peak is measured with (default 2048 on CPU, 8192 on CUDA)")
    p.add_argument("--markdown", metavar="FILE", help="also write the tables as Markdown")
    args = p.parse_args(argv)
    names = model_names(args.models)
    precisions = [x.strip() for x in args.precision.split(",") if x.strip()]
    for x in precisions:
        if x not in PRECISIONS:
            raise UserError(f"--precision: got {x!r}; expected a comma-separated list of {', '.join(PRECISIONS)}")
    for flag, value, least in (("--steps", args.steps, 1), ("--batch-size", args.batch_size, 1),
                               ("--warmup", args.warmup, 0), ("--peak-size", args.peak_size, 1)):
        if value is not None and value < least:
            raise UserError(f"{flag}: got {value}; must be >= {least}")
    check_output("--markdown", args.markdown)
    device = resolve_device(args.device)
    rows = []
    for precision in precisions:
        # the peak in the dtype the loop computes in (auto: bf16 on a CPU with bf16 units)
        peak, op = matmul_peak(device, Precision.for_device(device, precision).dtype or torch.float32, args.peak_size)
        for name in names:
            row = profile_model(name, precision, args, device, peak)
            row["peak"], row["peak_op"] = peak, op
            rows.append(row)
            print(markdown([row], f"peak {peak / 1e12:.3g} TFLOP/s ({op})"), flush=True)
    header = (f"{device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} profiled steps "
              f"after {args.warmup} warm-up; compile {args.compile}")
    if args.markdown:
        atomic_write(args.markdown, markdown(rows, header) + "\n")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
