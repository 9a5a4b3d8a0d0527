"""Train and compare CNNs, vision transformers and hybrids from a YAML config.

    python main.py --cfg configs/cnn_tr_medium.yaml
    python main.py --cfg configs/cnn_tr_medium.yaml --set train.epochs=5 --set data.name=fashion_mnist
    python main.py --cfg configs/cnn_tr_medium.yaml --dry-run
    python main.py --list-models
"""
from __future__ import annotations

import argparse
import sys

from errors import UserError

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="main.py",
        description="Train one model on one dataset as described by a YAML config; "
                    "each run writes config.yaml, summary.txt, metrics.jsonl, results.json and checkpoints "
                    "into a new directory under output.dir.",
        epilog="Example: python main.py --cfg configs/fashion_mnist.yaml --set train.epochs=2",
    )
    p.add_argument("--cfg", metavar="FILE", help="YAML config (see configs/ and the README's config reference)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override a config value, dotted key, value parsed as YAML "
                        "(repeatable), e.g. --set train.lr=3e-4 --set data.limit_train=5000")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config and the model summary, then exit without training")
    p.add_argument("--list-models", action="store_true",
                   help="list registered models with their parameter counts, then exit")
    args = p.parse_args(argv)
    if not args.list_models and args.cfg is None:
        p.error("--cfg FILE is required (or use --list-models)")
    return args


def list_models_table() -> str:
    from data import get_spec
    from models import MODELS, create_model

    rows = []
    for name in MODELS.names():
        spec = get_spec(MODELS.meta(name).get("default_dataset", "cifar10"))
        model = create_model(name, num_classes=spec.num_classes, in_chans=spec.in_chans, image_size=spec.image_size)
        params = sum(p.numel() for p in model.parameters())
        doc = (MODELS.get(name).__doc__ or "").strip().splitlines()
        rows.append((name, f"{params:,}", spec.name, doc[0] if doc else ""))
    widths = [max(len(r[i]) for r in rows + [("model", "params", "dataset", "")]) for i in range(3)]
    lines = [f"{'model':<{widths[0]}}  {'params':>{widths[1]}}  {'dataset':<{widths[2]}}  description"]
    lines += [f"{n:<{widths[0]}}  {p:>{widths[1]}}  {d:<{widths[2]}}  {doc}" for n, p, d, doc in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.list_models:
            print(list_models_table())
            return 0

        from config import dump_config, load_config
        from train.engine import NonFiniteLoss
        from train.run import build_model, describe, fit

        cfg = load_config(args.cfg, args.overrides)
        if args.dry_run:
            model = build_model(cfg)  # checks the model name, its arguments and the shapes
            from data import get_spec

            print(dump_config(cfg).rstrip())
            print(describe(model, get_spec(cfg.data.name)).summary)
            return 0
        try:
            run_dir, results = fit(cfg)
        except NonFiniteLoss as e:
            print(f"error: training stopped: {e}", file=sys.stderr)
            return EXIT_DIVERGED
        print(f"done: best val acc {results['best_val_acc']:.2f}% (epoch {results['best_epoch']}), "
              f"final {results['final_val_acc']:.2f}%, {results['train_time_s']:.1f}s training -> {run_dir}")
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
