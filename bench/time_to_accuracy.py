"""Time to accuracy: this project's loop vs. the conventional loop, same model, seed, recipe and data.

    python -m bench.time_to_accuracy --cfg configs/fashion_mnist.yaml --set data.root=/usr/share/datasets/fashion-mnist --target 93
    python -m bench.time_to_accuracy --cfg configs/convmixer_vs_vit/vit_imagenette.yaml --target 80 --workers 2

* **ours**: ``main.py``'s own training (``train.fit.fit``, which writes a normal run directory);
  time = the sum of its per-epoch times (training + evaluation, from its metrics.jsonl) up to the
  first epoch whose validation accuracy reaches the target.
* **reference**: ``bench.reference``: the same seeded initial weights, optimizer, schedule,
  batch size, epochs, label smoothing, gradient clipping, MixUp/CutMix and augmentation (the
  dataset's own, as PIL transforms per item, plus TrivialAugmentWide / RandomErasing when the
  config asks), in a ``DataLoader`` with ``--workers`` workers, ``.item()`` every step, and a
  ``DataLoader`` evaluation every epoch; always fp32, NCHW, eager, unfused optimizer, plain dropout
  (our speed-ups, which are what is measured). Timed the same way; it stops at the target.

Start-up (reading the dataset, building the model) is left out of both.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

import torch

from bench.common import check_output
from bench.reference import build_reference, reference_fit, summary
from config import load_config
from core.cli import run_cli
from core.files import atomic_write
from core.log import all_to_stderr
from data import load_data
from train.fit import fit
from train.rundir import RunDir
from train.setup import resolve_device


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

    def say(e, s):
        return f"{s:.1f} s (epoch {e})" if e else "not reached"

    faster = f", {s2 / s1:.2f}x faster." if e1 and e2 and s1 > 0 else "."
    lines += ["", f"Time to {target:g}%: ours {say(e1, s1)}, reference {say(e2, s2)}{faster}"]
    return "\n".join(lines)


def _main(argv: Optional[list[str]]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.time_to_accuracy", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", required=True, metavar="FILE")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override a config value, as in main.py (repeatable)")
    p.add_argument("--target", type=float, default=93.0, help="validation accuracy to reach, in %% (default 93)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the reference loop")
    p.add_argument("--json", metavar="FILE", help="write both histories as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write the table as Markdown")
    args = p.parse_args(argv)
    check_output("--json", args.json)
    check_output("--markdown", args.markdown)
    cfg = load_config(args.cfg, args.overrides)
    device = resolve_device(cfg.train.device)

    def log(line: str) -> None:  # progress on stderr; the table is stdout
        print(line, file=sys.stderr, flush=True)

    run_dir = RunDir(cfg.output.dir, cfg.run_name)
    with all_to_stderr():  # progress on stderr; the table is stdout
        results = fit(cfg, run_dir, progress=False)  # diverged: one line and exit 1 (core.cli)
    ours = [json.loads(line) for line in (run_dir.path / "metrics.jsonl").read_text().splitlines()]
    data = load_data(cfg.data)  # on the host: the reference's workers read it item by item
    ref = reference_fit(cfg, build_reference(cfg, data, device, args.workers), stop_at=args.target, log=log)

    header = (f"{cfg.model.name} on {cfg.data.name}, {cfg.train.epochs} epochs, batch {cfg.train.batch_size}, "
              f"seed {cfg.seed}, device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
              f"ours: {results['precision']}, {run_dir.path}; {summary(args.workers)}")
    table = markdown(ours, ref, args.target, header)
    print(table)
    if args.markdown:
        atomic_write(args.markdown, table + "\n")
    if args.json:
        atomic_write(args.json, json.dumps({"header": header, "target": args.target, "ours": ours,
                                            "reference": ref}, indent=2) + "\n")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
