"""Benchmark every model: this project's loop vs. the conventional loop, FLOP/s vs. the device's peak, latency.

    python -m bench.throughput                                   # every registered model, synthetic data
    python -m bench.throughput --models simple_cnn,resnet18 --dataset fashion_mnist --root /usr/share/datasets/fashion-mnist
    python -m bench.throughput --device cuda --batch-size 256 --compile reduce-overhead --markdown BENCH.md --json bench.json

Per model, in one process:

* **ours**: images/s of the project's own ``train_one_epoch`` on a ``prepare``d setup (the loader
  with on-device augmentation, autocast where it pays, channels_last, fused optimizer on CUDA, the
  CPU dropout mask; no host sync inside the epoch), timed over ``--steps`` steps per round, device
  synchronised at both ends; median over rounds.
* **reference**: the same model and recipe trained the conventional way (``bench.reference``: PIL
  transforms per item following the dataset's own augmentation, a ``DataLoader`` with ``--workers``
  workers, fp32, NCHW, eager, unfused optimizer, plain dropout, ``.item()`` every step). Median
  images/s; measured alternately with ours, in rounds, so machine noise hits both alike.
* **outside**: the share of our step time not spent in forward/backward/optimizer, i.e.
  1 - (the same steps on one fixed device-resident batch) / ours.
* **FLOP/s**: training FLOPs per image counted by ``torch.utils.flop_counter`` on a forward and
  backward (matmuls, convolutions and attention; ``models.measure.flops_per_image``), times ours' images/s; and its share of the
  device's peak, measured in the same run as a large matmul (fp32 on CPU, bf16 on CUDA).
* **latency**: inference, batch 1 and batched (``--eval-batch-size``), median over repeats after
  warm-up, device synchronised (``models.measure.latency_ms``).

Data: the dataset's real files with ``--root``, else synthetic uint8 images of the dataset's shape
(``--synthetic N``): throughput does not depend on the pixels.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Optional

import torch

from bench.common import (COMPILE_MODES, PRECISIONS, Take, bench_config, check_output, dataset_for, endless,
                          matmul_peak, model_names, parse_bool, synthetic_data, train_flops_per_image)
from bench.reference import build_reference, summary, time_steps
from core.cli import run_cli
from core.errors import UserError
from core.files import atomic_write
from data import get_spec, load_data
from models import build_model
from train.engine import train_one_epoch, train_step
from models.measure import latency_ms, sync
from train.setup import Precision, prepare, resolve_device, seed_everything


def bench_model(name: str, args, device: torch.device, peak: float) -> dict:
    """One model's row; ``peak_share`` is against ``peak`` until ``main`` re-measures it at the end."""
    spec = get_spec(dataset_for(name, args.dataset))
    train = {"batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size, "device": device.type,
             "compile": args.compile}
    if args.channels_last is not None:
        train["channels_last"] = args.channels_last
    train["precision"] = args.precision
    cfg = bench_config(name, spec.name, root=args.root, **train)
    # Enough images that our stream starts no new epoch inside a round, nor the reference's workers.
    data = load_data(cfg.data) if args.root else synthetic_data(
        spec.name, max(args.synthetic, (args.steps + args.warmup + 1) * args.batch_size))
    seed_everything(cfg.seed)
    s = prepare(cfg, build_model(cfg, spec), data.to(device), device)
    ref = build_reference(cfg, data, device, args.workers)

    ours_stream = endless(s.train_loader)

    def run_ours(n: int) -> float:
        return train_one_epoch(s, Take(ours_stream, n), log_every=10 ** 9)["images_per_s"]

    run_ours(args.warmup)
    time_steps(ref, args.warmup)
    ours, ref_times = [], []
    for _ in range(args.rounds):
        ours.append(run_ours(args.steps))
        ref_times += time_steps(ref, args.steps)
    ours_ips = statistics.median(ours)
    ref_ips = args.batch_size / statistics.median(ref_times)

    # The same steps on one fixed, device-resident batch: forward/backward/optimizer and nothing else.
    images, labels = next(ours_stream)
    compute = []
    for _ in range(args.rounds):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            train_step(s, images, labels)
        sync(device)
        compute.append((time.perf_counter() - t0) / args.steps)
    outside = max(0.0, 1 - statistics.median(compute) * ours_ips / args.batch_size)

    flops = train_flops_per_image(s.module, spec, device)
    return {
        "model": name, "dataset": spec.name, "params": sum(p.numel() for p in s.module.parameters()),
        "batch_size": args.batch_size, "precision": str(s.precision), "channels_last": s.channels_last,
        "compile": args.compile, "cpu_dropout": s.cpu_dropout, "setup": s.describe(),
        "ours_images_per_s": ours_ips, "reference_images_per_s": ref_ips, "speedup": ours_ips / ref_ips,
        "outside_share": outside, "train_gflop_per_image": flops / 1e9,
        "achieved_tflop_s": flops * ours_ips / 1e12, "peak_share": flops * ours_ips / peak,
        "latency_ms_batch1": latency_ms(s.model, spec, device, 1, channels_last=s.channels_last,
                                        autocast=s.precision.autocast, max_repeats=args.latency_repeats),
        "latency_ms_batched": latency_ms(s.model, spec, device, args.eval_batch_size, channels_last=s.channels_last,
                                         autocast=s.precision.autocast,
                                         max_repeats=max(3, args.latency_repeats // 10)),
    }


def markdown(results: list[dict], header: dict) -> str:
    lines = [f"Device: {header['device']} ({header['machine']}), torch {header['torch']}, "
             f"{header['threads']} threads. Peak: {header['peak_tflop_s']:.3g} TFLOP/s ({header['peak_op']}; "
             f"the higher of {header['peak_start_tflop_s']:.3g} before and {header['peak_end_tflop_s']:.3g} after "
             f"the models). Ours: {', '.join(sorted({r['setup'] for r in results if 'setup' in r}))}; "
             f"{header['reference']}. Batch {header['batch_size']}, {header['rounds']} rounds x "
             f"{header['steps']} steps, medians.", "",
             "| model | dataset | params | GFLOP/img (train) | ours img/s | reference img/s | ratio "
             "| outside fwd/bwd/opt | TFLOP/s | % of peak | latency b1 (ms) | latency batched (ms/img) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | – | – | – | – | – | – | – | – | – | – | error: {r['error']} |")
            continue
        lines.append(
            f"| {r['model']} | {r['dataset']} | {r['params']:,} | {r['train_gflop_per_image']:.3f} "
            f"| {r['ours_images_per_s']:,.0f} | {r['reference_images_per_s']:,.0f} | {r['speedup']:.2f}x "
            f"| {100 * r['outside_share']:.1f}% | {r['achieved_tflop_s']:.3g} | {100 * r['peak_share']:.1f}% "
            f"| {r['latency_ms_batch1']:.2f} | {r['latency_ms_batched']:.3f} |")
    return "\n".join(lines)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="all", help="comma-separated model names, or 'all' (default)")
    p.add_argument("--dataset", help="dataset shape to use (default: each model's own, CIFAR-10 for most)")
    p.add_argument("--root", help="read the dataset's real files from here; otherwise synthetic images")
    p.add_argument("--synthetic", type=int, default=2048, metavar="N", help="synthetic images per split")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eval-batch-size", type=int, default=256, help="batch for the batched latency")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of both loops")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--latency-repeats", type=int, default=30)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the reference loop")
    p.add_argument("--channels-last", type=parse_bool, default=None, metavar="BOOL",
                   help="force NHWC on or off (default: the training loop's own choice)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="train.precision of our loop (default auto: the loop's own choice for the device)")
    p.add_argument("--compile", nargs="?", const="default", default="off", choices=COMPILE_MODES,
                   help="torch.compile our model (not the reference's), optionally with a mode (default off)")
    p.add_argument("--peak-size", type=int, metavar="N",
                   help="side of the square matmul that measures the peak (default 2048 on CPU, 8192 on CUDA)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write the table as Markdown")
    return p.parse_args(argv)


def _main(argv: Optional[list[str]]) -> int:
    args = parse_args(argv)
    names = model_names(args.models, allow_all=True)
    if args.dataset:
        get_spec(args.dataset)
    for flag, value in (("--steps", args.steps), ("--rounds", args.rounds), ("--batch-size", args.batch_size),
                        ("--eval-batch-size", args.eval_batch_size), ("--threads", args.threads or 1)):
        if value < 1:
            raise UserError(f"{flag}: got {value}; must be >= 1")
    check_output("--json", args.json)
    check_output("--markdown", args.markdown)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    # On the CPU, the peak of the precision our loop trains in (fp32, or bf16 on CPUs with bf16 hardware).
    cpu_dtype = Precision.for_device(device, args.precision).dtype or torch.float32
    peak, peak_op = matmul_peak(device, cpu_dtype, args.peak_size)
    header = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads" if device.type == "cpu"
              else platform.node(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "peak_tflop_s": peak / 1e12, "peak_op": peak_op, "batch_size": args.batch_size,
              "steps": args.steps, "rounds": args.rounds, "reference": summary(args.workers)}
    results = []
    for name in names:
        try:
            r = bench_model(name, args, device, peak)
        except UserError as e:  # e.g. a model whose patch does not fit the chosen dataset
            r = {"model": name, "error": str(e)}
        results.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
    # The peak again after the models: the machine's clock can drift over a long run (shared hosts, turbo).
    # Shares use the higher of the two, so they never flatter the loop.
    peak_end, _ = matmul_peak(device, cpu_dtype, args.peak_size)
    header.update(peak_tflop_s=max(peak, peak_end) / 1e12, peak_start_tflop_s=peak / 1e12,
                  peak_end_tflop_s=peak_end / 1e12)
    for r in results:
        if "achieved_tflop_s" in r:
            r["peak_share"] = r["achieved_tflop_s"] * 1e12 / max(peak, peak_end)
    table = markdown(results, header)
    print(table)
    if args.markdown:
        atomic_write(args.markdown, table + "\n")
    if args.json:
        atomic_write(args.json, json.dumps({"header": header, "results": results}, indent=2) + "\n")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
