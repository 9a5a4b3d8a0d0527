"""Time to accuracy: this project's loop vs. the conventional loop, same model, recipe and data.

    python -m train.tta --cfg configs/fashion_mnist.yaml --set data.root=/usr/share/datasets/fashion-mnist --target 93

* **ours**: ``main.py``'s own training (``train.run.fit``, which writes a normal run
  directory); time = the sum of its per-epoch times (training + evaluation) up to
  the first epoch whose validation accuracy reaches the target.
* **reference**: the same seeded initial weights, optimizer, schedule, batch size
  and epochs, trained the way seed 002's script does it: PIL transforms (the
  dataset's same augmentation) in a ``DataLoader`` with 2 workers, ``.item()``
  every step, and a ``DataLoader`` evaluation every epoch. Timed the same way.

Start-up (reading the dataset, building the model) is left out of both.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Optional

import torch
import torch.nn as nn

from config import load_config
from errors import UserError
from train.bench import reference_loader
from train.run import build_model, fit, load_data, resolve_device
from train.schedule import build_optimizer, build_scheduler


def reference_fit(cfg, device: torch.device, workers: int = 2, stop_at: Optional[float] = None,
                  log=print) -> list[dict]:
    data = load_data(cfg)
    spec = data.spec
    model = build_model(cfg, spec).to(device)  # build_model seeds: the same initial weights as ours
    augment = spec.augment if cfg.data.augment else "none"
    train_loader = reference_loader(data, cfg.train.batch_size, workers, augment=augment)
    val_loader = reference_loader(data, cfg.train.eval_batch_size, workers, train=False)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, len(train_loader))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    history = []
    for epoch in range(1, cfg.train.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        loss_sum, seen = 0.0, 0
        for images, labels in train_loader:
            images, labels = images.to(device), labels.to(device)
            loss = criterion(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(labels)
            seen += len(labels)
        model.eval()
        correct, total = 0, 0
        with torch.no_grad():
            for images, labels in val_loader:
                images, labels = images.to(device), labels.to(device)
                correct += (model(images).argmax(1) == labels).sum().item()
                total += len(labels)
        row = {"epoch": epoch, "train_loss": loss_sum / seen, "val_acc": 100.0 * correct / total,
               "epoch_time_s": time.perf_counter() - t0}
        log(f"reference epoch {epoch}/{cfg.train.epochs}  train loss {row['train_loss']:.4f}  "
            f"val acc {row['val_acc']:.2f}%  {row['epoch_time_s']:.1f}s")
        history.append(row)
        if stop_at is not None and row["val_acc"] >= stop_at:
            break  # the schedule is fixed by train.epochs, so later epochs cannot change the time to here
    return history


def time_to(history: list[dict], target: float) -> tuple[Optional[int], Optional[float]]:
    """(first epoch reaching ``target`` % validation accuracy, cumulative seconds to its end)."""
    elapsed = 0.0
    for row in history:
        elapsed += row["epoch_time_s"]
        if row["val_acc"] >= target:
            return row["epoch"], elapsed
    return None, None


def markdown(ours: list[dict], ref: list[dict], target: float, header: str) -> str:
    lines = [header, "", "| epoch | ours val acc | ours cumulative s | reference val acc | reference cumulative s |",
             "|---:|---:|---:|---:|---:|"]
    t_ours = t_ref = 0.0
    for i, a in enumerate(ours):
        t_ours += a["epoch_time_s"]
        ref_cells = "| – | – |"
        if i < len(ref):  # the reference stops at the target
            t_ref += ref[i]["epoch_time_s"]
            ref_cells = f"| {ref[i]['val_acc']:.2f}% | {t_ref:.1f} |"
        lines.append(f"| {a['epoch']} | {a['val_acc']:.2f}% | {t_ours:.1f} {ref_cells}")
    (e1, s1), (e2, s2) = time_to(ours, target), time_to(ref, target)
    say = lambda e, s: f"{s:.1f} s (epoch {e})" if e else "not reached"  # noqa: E731
    lines += ["", f"Time to {target:g}%: ours {say(e1, s1)}, reference {say(e2, s2)}"
              + (f", {s2 / s1:.2f}x faster." if e1 and e2 else ".")]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.tta", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", required=True, metavar="FILE")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides")
    p.add_argument("--target", type=float, default=93.0, help="validation accuracy to reach, in %% (default 93)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the reference loop")
    p.add_argument("--json", metavar="FILE", help="write both histories as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write the table as Markdown")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.cfg, args.overrides)
        device = resolve_device(cfg.train.device)
        run_dir, _ = fit(cfg, progress=False)
        ours = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        ref = reference_fit(cfg, device, args.workers, stop_at=args.target)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    header = (f"{cfg.model.name} on {cfg.data.name}, {cfg.train.epochs} epochs, batch {cfg.train.batch_size}, "
              f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; ours: {run_dir}")
    table = markdown(ours, ref, args.target, header)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "target": args.target, "ours": ours, "reference": ref}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
