"""Benchmark every model: this project's loop vs. a conventional loop, FLOP/s vs. the device's peak, latency.

    python -m train.bench                                   # every registered model, synthetic data
    python -m train.bench --models simple_cnn,resnet18 --dataset fashion_mnist --root /usr/share/datasets/fashion-mnist
    python -m train.bench --device cuda --batch-size 256 --markdown BENCH.md --json bench.json

Per model, in one process:

* **ours**: images/s of the project's own ``train_one_epoch`` (the loader with
  on-device augmentation, autocast, channels_last, fused optimizer; no host
  sync inside the epoch), timed over ``--steps`` steps per round, device
  synchronised at both ends; median over rounds.
* **reference**: the same model trained the way seed 002's script does it: a
  torchvision-style dataset (array -> PIL per item), PIL RandomCrop(pad 4) +
  flip + ToTensor + Normalize, a ``DataLoader`` with 2 workers, fp32, ``.item()``
  every step. Median images/s; measured alternately with ours, in rounds, so
  machine noise hits both alike.
* **outside**: the share of our step time not spent in forward/backward/
  optimizer, i.e. 1 - (the same steps on one fixed device-resident batch) / ours.
* **FLOP/s**: training FLOPs per image counted by ``torch.utils.flop_counter``
  on one forward + backward (matmuls, convolutions and attention; about 3x the
  forward), times ours' images/s; and its share of the device's peak, measured in
  the same run as a large matmul (fp32 on CPU, bf16 on CUDA).
* **latency**: inference, batch 1 and batched (``--eval-batch-size``), median
  over repeats after warm-up, device synchronised.

Data: the dataset's real files with ``--root``, else synthetic uint8 images of
the dataset's shape (``--synthetic N``): throughput does not depend on the pixels.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from typing import Iterator, Optional

import torch
import torch.nn as nn

from config import from_dict
from data import ImageData, get_spec
from errors import UserError
from models import MODELS, list_models
from train.engine import Precision, latency_ms, train_one_epoch, train_step
from train.run import build_model, load_data, prepare, resolve_device
from train.schedule import build_optimizer


class PILDataset(torch.utils.data.Dataset):
    """What torchvision's CIFAR/MNIST datasets do per item: array -> PIL image -> transform."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform):
        self.x, self.y, self.transform = x.numpy(), y.tolist(), transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        from PIL import Image

        img = self.x[i]
        img = Image.fromarray(img[0], mode="L") if img.shape[0] == 1 else Image.fromarray(img.transpose(1, 2, 0))
        return self.transform(img), self.y[i]


def reference_loader(data: ImageData, batch_size: int, workers: int, *, train: bool = True,
                     augment: str = "crop_flip"):
    """torchvision's way: PIL transforms per item in ``workers`` processes. ``augment`` as in
    ``data.augment.train_transform`` (the bench uses seed 002's crop + flip for every dataset)."""
    from torchvision import transforms as T

    spec = data.spec
    tail = [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    aug = {"crop_flip": [T.RandomCrop(spec.image_size, padding=4), T.RandomHorizontalFlip()],
           "flip": [T.RandomHorizontalFlip()], "none": []}[augment] if train else []
    x, y = data.train if train else data.val
    return torch.utils.data.DataLoader(PILDataset(x, y, T.Compose(aug + tail)), batch_size=batch_size,
                                       shuffle=train, num_workers=workers, drop_last=train)


def reference_steps(model, loader, optimizer, criterion, device, steps: int) -> list[float]:
    """Seconds per step of the conventional loop: host batch -> device, fp32, ``.item()`` every step.

    The loader's workers start with the round and are shut down after it, so they never compete
    with the other loop for the CPU; the median per-step time leaves their start-up out.
    """
    times = []
    model.train()
    batches = endless(loader)
    for _ in range(steps):
        t0 = time.perf_counter()
        images, labels = next(batches)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # syncs
        times.append(time.perf_counter() - t0)
    batches.close()  # shuts the workers down
    return times


class Take:
    """The first ``n`` batches of an endless stream, as a loader ``train_one_epoch`` can run."""

    def __init__(self, stream: Iterator, n: int):
        self.stream, self.n = stream, n

    def __len__(self):
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            yield next(self.stream)


def endless(loader) -> Iterator:
    while True:
        yield from loader


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_data(name: str, n: int, seed: int = 0) -> ImageData:
    spec = get_spec(name)
    g = torch.Generator().manual_seed(seed)
    shape = (n, spec.in_chans, spec.image_size, spec.image_size)
    split = lambda: (torch.randint(0, 256, shape, generator=g, dtype=torch.uint8),  # noqa: E731
                     torch.randint(0, spec.num_classes, (n,), generator=g))
    return ImageData(spec, split(), split())


def matmul_peak(device: torch.device, cpu_dtype: torch.dtype = torch.float32) -> tuple[float, str]:
    """FLOP/s of a large square matmul: on CPU in the loop's precision, bf16 on CUDA (the fastest repeat)."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, cpu_dtype)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for i in range(13 if device.type == "cuda" else 11):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        if i >= (3 if device.type == "cuda" else 1):
            times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times), f"{n}x{n} {str(dtype).removeprefix('torch.')} matmul, best of repeats"


def train_flops_per_image(model: nn.Module, spec, device) -> float:
    """3x the forward FLOPs counted by ``torch.utils.flop_counter`` (matmuls, convolutions, attention).

    The backward is taken as 2x the forward (the usual 6 FLOPs per mult-add for training) rather than
    counted, because the counter overcounts ``convolution_backward`` of grouped (depthwise) convs by
    the group count.
    """
    from torch.utils.flop_counter import FlopCounterMode

    m = copy.deepcopy(model).train()  # eval would send nn.TransformerEncoder down its uncounted fused path
    x = torch.randn(2, spec.in_chans, spec.image_size, spec.image_size, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        m(x)
    return 3 * counter.get_total_flops() / 2


def bench_model(name: str, args, device: torch.device, peak: float) -> dict:
    """One model's row; ``peak_share`` is against ``peak`` until ``main`` re-measures it at the end."""
    spec = get_spec(args.dataset or MODELS.meta(name).get("default_dataset", "cifar10"))
    train = {"batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size, "device": str(device),
             "epochs": 1, "log_every": 10 ** 9, "compile": args.compile is not None,
             "compile_mode": args.compile or "default"}
    if args.channels_last is not None:
        train["channels_last"] = args.channels_last
    if args.amp is not None:
        train["amp"] = args.amp
    cfg = from_dict({"model": {"name": name},
                     "data": {"name": spec.name, "root": args.root or "./datasets", "download": False},
                     "train": train})
    # Enough images that neither loop starts a new epoch (and new workers) inside a round.
    data = load_data(cfg) if args.root else synthetic_data(
        spec.name, max(args.synthetic, (args.steps + args.warmup + 1) * args.batch_size))
    s = prepare(cfg, build_model(cfg, spec), data.to(device), device)
    ref_model = build_model(cfg, spec).to(device)
    ref_opt, ref_crit = build_optimizer(ref_model, cfg.train), nn.CrossEntropyLoss()

    ours_stream = endless(s.train_loader)
    ref_loader = reference_loader(data, args.batch_size, args.workers)
    run_ours = lambda n: train_one_epoch(  # noqa: E731
        s.model, Take(ours_stream, n), s.optimizer, s.scheduler, s.criterion, device=device,
        precision=s.precision, scaler=s.scaler, log_every=10 ** 9)["images_per_s"]
    run_ours(args.warmup)
    reference_steps(ref_model, ref_loader, ref_opt, ref_crit, device, args.warmup)
    ours, ref = [], []
    for _ in range(args.rounds):
        ours.append(run_ours(args.steps))
        ref += reference_steps(ref_model, ref_loader, ref_opt, ref_crit, device, args.steps)
    ours_ips = statistics.median(ours)
    ref_ips = args.batch_size / statistics.median(ref)

    # The same steps on one fixed, device-resident batch: forward/backward/optimizer and nothing else.
    images, labels = next(ours_stream)
    compute = []
    for _ in range(args.rounds):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            train_step(s.model, images, labels, s.optimizer, s.scheduler, s.criterion, precision=s.precision,
                       scaler=s.scaler)
        sync(device)
        compute.append((time.perf_counter() - t0) / args.steps)
    outside = max(0.0, 1 - statistics.median(compute) * ours_ips / args.batch_size)

    flops = train_flops_per_image(getattr(s.model, "_orig_mod", s.model), spec, device)
    params = sum(p.numel() for p in s.model.parameters())
    return {
        "model": name, "dataset": spec.name, "params": params, "batch_size": args.batch_size,
        "precision": str(s.precision), "channels_last": s.channels_last, "compile": args.compile,
        "ours_images_per_s": ours_ips, "reference_images_per_s": ref_ips, "speedup": ours_ips / ref_ips,
        "outside_share": outside, "train_gflop_per_image": flops / 1e9,
        "achieved_tflop_s": flops * ours_ips / 1e12, "peak_share": flops * ours_ips / peak,
        "latency_ms_batch1": latency_ms(s.model, spec, device, s.precision, 1, s.channels_last,
                                        max_repeats=args.latency_repeats),
        "latency_ms_batched": latency_ms(s.model, spec, device, s.precision, args.eval_batch_size,
                                         s.channels_last, max_repeats=max(3, args.latency_repeats // 10)),
    }


def markdown(results: list[dict], header: dict) -> str:
    lines = [f"Device: {header['device']} ({header['machine']}), torch {header['torch']}, "
             f"{header['threads']} threads. Peak: {header['peak_tflop_s']:.3g} TFLOP/s ({header['peak_op']}; "
             f"the higher of {header['peak_start_tflop_s']:.3g} before and {header['peak_end_tflop_s']:.3g} after "
             f"the models). Ours: {', '.join(sorted({r['precision'] for r in results if 'precision' in r}))}. "
             f"Batch {header['batch_size']}, {header['rounds']} rounds x {header['steps']} steps, medians.", "",
             "| model | dataset | params | GFLOP/img (train) | ours img/s | reference img/s | ratio | outside fwd/bwd/opt "
             "| TFLOP/s | % of peak | latency b1 (ms) | latency batched (ms/img) |",
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


def parse_args(argv: Optional[list[str]]):
    p = argparse.ArgumentParser(prog="python -m train.bench", description=__doc__.split("\n\n")[0],
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
    p.add_argument("--channels-last", type=lambda v: v.lower() in ("1", "true", "yes"), default=None,
                   metavar="BOOL", help="force NHWC on or off (default: the training loop's own choice)")
    p.add_argument("--amp", type=lambda v: v.lower() in ("1", "true", "yes"), default=None, metavar="BOOL",
                   help="force mixed precision on or off (default: the loop's own choice; false = fp32)")
    p.add_argument("--compile", nargs="?", const="default", choices=["default", "reduce-overhead", "max-autotune"],
                   help="torch.compile the model (ours only), optionally with a mode")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write the table as Markdown")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        names = list_models() if args.models == "all" else [n.strip() for n in args.models.split(",") if n.strip()]
        for n in names:
            MODELS.get(n)  # unknown names: one line, with the choices
        if args.dataset:
            get_spec(args.dataset)
        device = resolve_device(args.device)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    # On the CPU, the peak of the precision our loop trains in (fp32, or bf16 on CPUs with bf16 hardware).
    cpu_dtype = Precision.for_device(device, args.amp is not False).dtype or torch.float32
    peak, peak_op = matmul_peak(device, cpu_dtype)
    header = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads" if device.type == "cpu"
              else platform.node(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "peak_tflop_s": peak / 1e12, "peak_op": peak_op, "batch_size": args.batch_size,
              "steps": args.steps, "rounds": args.rounds}
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
    peak_end, _ = matmul_peak(device, cpu_dtype)
    header.update(peak_tflop_s=max(peak, peak_end) / 1e12, peak_start_tflop_s=peak / 1e12,
                  peak_end_tflop_s=peak_end / 1e12)
    for r in results:
        if "achieved_tflop_s" in r:
            r["peak_share"] = r["achieved_tflop_s"] * 1e12 / max(peak, peak_end)
    table = markdown(results, header)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
