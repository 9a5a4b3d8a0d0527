"""Time to accuracy against timm's own ``train.py``: the same timm model, data and recipe, both tools as users run them.

    git clone --branch v$(python -c 'import timm; print(timm.__version__)') \\
        https://github.com/huggingface/pytorch-image-models /tmp/timm-repo   # the pinned timm's release
    python -m bench.vs_timm --timm-repo /tmp/timm-repo --model resnet10t \\
        --root /usr/share/datasets/fashion-mnist --epochs 4 --targets 88,90 --markdown vs_timm.md

Both tools run as subprocesses, one after the other, on Fashion-MNIST (60,000 training images; the
10,000 test images are the validation split of both):

* **timm**: ``python TIMM_REPO/train.py --dataset torch/fashion_mnist ...``. The script imports the
  ``timm`` package beside it, so ``train.py`` and the library are one version, whatever this project pins.
  It reads uncompressed idx files, which are written to ``--out``/data.
* **ours**: ``python main.py --cfg ...`` with ``model.name: timm/MODEL`` (the pinned ``timm``).

The recipe, the same on both sides: no augmentation, AdamW (``--lr``, ``--weight-decay``, no decay on
biases and norms in both), cosine to 0 stepped every update, no warm-up, ``--batch-size``, label smoothing
``--smoothing``, ``--epochs``, seed 0, on the CPU. timm keeps its own data pipeline (a ``DataLoader`` with
``--workers`` workers), precision (fp32 unless ``--timm-amp``) and checkpointing; ours its defaults
(``train.precision: auto``: bf16 autocast on a CPU with bf16 units, else fp32).

Per epoch, the moment each tool writes its validation accuracy (timm's ``summary.csv``, our
``metrics.jsonl``) is taken by polling every 0.2 s: wall time since the start and CPU time (user + sys)
of the tool's whole process tree, its DataLoader workers and compile workers included. Start-up (imports,
reading the data, building the model) is part of both. The totals at exit come from ``wait4``.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import importlib.metadata
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from bench.common import check_output
from core.cli import run_cli
from core.errors import UserError
from core.files import atomic_write
from data import get_spec

PROJECT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL_S = 0.2


# ----------------------------------------------------------------------------- process-tree CPU time

def _stat_fields(pid: int) -> Optional[list[str]]:
    """/proc/PID/stat's fields after the command name (field 3 onwards), or None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def tree_cpu_seconds(root: int) -> float:
    """User + sys seconds of ``root`` and every live descendant, plus what each has collected from its reaped
    children (cutime + cstime), so a DataLoader worker counts whether it is alive or already gone."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                stats[int(entry)] = fields
                children.setdefault(int(fields[1]), []).append(int(entry))  # field 4: ppid
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        fields = stats.get(pid)
        if fields is None:
            continue
        total += sum(int(x) for x in fields[11:15])  # fields 14-17: utime, stime, cutime, cstime
        todo += children.get(pid, [])
    return total / CLK_TCK


def run_tool(name: str, cmd: list[str], log: Path, epochs_so_far: Callable[[], list[tuple[int, float]]],
             cwd: Optional[Path] = None) -> dict:
    """Run ``cmd`` (output to ``log``); each time ``epochs_so_far()`` shows a new (epoch, val acc) row, note
    (and say on stderr) the wall and process-tree CPU seconds since the start. At the exit: the wall time and the
    CPU time of the tool and every descendant it reaped (``RUSAGE_CHILDREN``, as a difference)."""
    rows: list[dict] = []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        # its own process group: an interrupted benchmark kills the tool's workers too
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
        try:
            while True:
                done = proc.poll() is not None
                wall = time.perf_counter() - t0
                new = epochs_so_far()[len(rows):]
                # the process tree is read only when an epoch has ended (None after the exit: its total)
                cpu = tree_cpu_seconds(proc.pid) if new and not done else None
                rows += [{"epoch": epoch, "val_acc": acc, "wall_s": wall, "cpu_s": cpu} for epoch, acc in new]
                for epoch, acc in new:  # progress: an epoch takes minutes
                    print(f"{name}: epoch {epoch} val acc {acc:.2f}% at {wall:.0f} s", file=sys.stderr, flush=True)
                if done:
                    break
                time.sleep(POLL_S)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):  # the group may be gone already
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    for row in rows:
        if row["cpu_s"] is None:
            row["cpu_s"] = cpu
    return {"rows": rows, "returncode": proc.returncode, "wall_s": wall, "cpu_s": cpu}


# ----------------------------------------------------------------------------- the two tools

def idx_files(root: Path) -> dict[str, Path]:
    """The four Fashion-MNIST idx files in ``root``, found as the project's own loader finds them, by their
    uncompressed names."""
    spec = get_spec("fashion_mnist")
    files = spec.find(root)
    if files is None:
        raise UserError(f"--root {root}: expected {spec.expected(root)} (apt-get install dataset-fashion-mnist "
                        f"puts them in /usr/share/datasets/fashion-mnist)")
    return {f.name.removesuffix(".gz"): f for f in files}


def timm_data(root: Path, out: Path) -> Path:
    """``out/data/FashionMNIST/raw`` with the idx files uncompressed, as torchvision's ``FashionMNIST`` (which
    timm's ``torch/fashion_mnist`` dataset is) reads them without downloading."""
    raw = out / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, src in idx_files(root).items():
        if not (raw / name).is_file():
            tmp = raw / f"{name}.part"
            with (gzip.open(src) if src.suffix == ".gz" else open(src, "rb")) as f, open(tmp, "wb") as g:
                shutil.copyfileobj(f, g)
            tmp.replace(raw / name)
    return out / "data"


def timm_repo_version(repo: Path) -> str:
    if not (repo / "train.py").is_file() or not (repo / "timm" / "version.py").is_file():
        raise UserError(f"--timm-repo {repo}: no train.py and timm/version.py; expected a checkout of "
                        f"https://github.com/huggingface/pytorch-image-models")
    match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", (repo / "timm" / "version.py").read_text())
    return match.group(1) if match else "unknown"


def timm_command(args, data_dir: Path, out: Path) -> list[str]:
    cmd = [sys.executable, str(args.timm_repo / "train.py"), "--dataset", "torch/fashion_mnist",
           "--data-dir", str(data_dir), "--model", args.model, "--num-classes", "10", "--in-chans", "1",
           "--input-size", "1", "28", "28", "--mean", "0.2860", "--std", "0.3530", "--crop-pct", "1.0",
           "--no-aug", "--opt", "adamw", "--lr", str(args.lr), "--weight-decay", str(args.weight_decay),
           "--sched", "cosine", "--sched-on-updates", "--warmup-epochs", "0", "--min-lr", "0",
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
           "--validation-batch-size", str(args.eval_batch_size), "--smoothing", str(args.smoothing),
           "--device", "cpu", "--workers", str(args.workers), "--seed", "0", "--log-interval", "100",
           "--output", str(out), "--experiment", "timm", "--checkpoint-hist", "1"]
    return cmd + (["--amp", "--amp-dtype", "bfloat16"] if args.timm_amp else [])


def timm_epochs(summary: Path) -> Callable[[], list[tuple[int, float]]]:
    def read() -> list[tuple[int, float]]:
        try:
            with open(summary, newline="") as f:
                rows = list(csv.DictReader(f))
        except (OSError, csv.Error):
            return []
        out = []
        for r in rows:
            try:
                out.append((int(r["epoch"]) + 1, float(r["eval_top1"])))
            except (KeyError, TypeError, ValueError):  # a row being written
                break
        return out
    return read


def our_config(args, out: Path) -> Path:
    import yaml
    cfg = {"name": f"timm_{args.model}", "seed": 0,
           "model": {"name": f"timm/{args.model}"},
           "data": {"name": "fashion_mnist", "root": str(args.root), "download": False, "augment": False},
           "train": {"epochs": args.epochs, "batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size,
                     "optimizer": "adamw", "lr": args.lr, "weight_decay": args.weight_decay,
                     "schedule": "cosine", "warmup_epochs": 0, "label_smoothing": args.smoothing, "device": "cpu"},
           "output": {"dir": str(out / "runs")}}
    path = out / "ours.yaml"
    atomic_write(path, yaml.safe_dump(cfg, sort_keys=False))
    return path


def our_epochs(runs: Path) -> Callable[[], list[tuple[int, float]]]:
    def read() -> list[tuple[int, float]]:
        files = sorted(runs.glob("*/metrics.jsonl"))
        if not files:
            return []
        out = []
        for line in files[0].read_text().splitlines():
            try:
                row = json.loads(line)
                out.append((int(row["epoch"]), float(row["val_acc"])))
            except (ValueError, KeyError, TypeError):  # a line being written
                break
        return out
    return read


# ----------------------------------------------------------------------------- report

def reached(rows: list[dict], target: float) -> Optional[dict]:
    return next((r for r in rows if r["val_acc"] >= target), None)


def time_to(name: str, result: dict, target: float) -> str:
    hit = reached(result["rows"], target)
    if hit:
        return f"{name} {hit['wall_s']:.0f} s wall, {hit['cpu_s']:.0f} CPU-s (epoch {hit['epoch']})"
    if result["returncode"] != 0:
        return f"{name} failed first (exit {result['returncode']}; see {name}.log)"
    return f"{name} not reached"


def markdown(results: dict[str, dict], targets: list[float], header: str) -> str:
    lines = [header, "", "| epoch | " + " | ".join(f"{t} val acc | {t} wall s | {t} CPU s" for t in results) + " |",
             "|---:|" + "---:|---:|---:|" * len(results)]
    n = max((len(r["rows"]) for r in results.values()), default=0)
    for i in range(n):
        cells = []
        for r in results.values():
            row = r["rows"][i] if i < len(r["rows"]) else None
            cells.append("– | – | –" if row is None
                         else f"{row['val_acc']:.2f}% | {row['wall_s']:.0f} | {row['cpu_s']:.0f}")
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    lines.append("| exit | " + " | ".join(f"rc {r['returncode']} | {r['wall_s']:.0f} | {r['cpu_s']:.0f}"
                                         for r in results.values()) + " |")
    lines.append("")
    names = list(results)
    for target in targets:
        hits = {name: reached(r["rows"], target) for name, r in results.items()}
        said = [time_to(name, r, target) for name, r in results.items()]
        ratio = ""
        if len(names) == 2 and all(hits.values()):
            a, b = hits[names[0]], hits[names[1]]
            ratio = (f"; {names[0]} / {names[1]}: {a['wall_s'] / b['wall_s']:.2f}x wall, "
                     f"{a['cpu_s'] / b['cpu_s']:.2f}x CPU")
        lines.append(f"- Time to {target:g}%: " + ", ".join(said) + ratio + ".")
    return "\n".join(lines)


def _main(argv: Optional[list[str]]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.vs_timm", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timm-repo", required=True, type=Path, metavar="DIR",
                   help="a checkout of pytorch-image-models (its train.py and timm package)")
    p.add_argument("--model", default="resnet10t", help="a timm model name (default resnet10t)")
    p.add_argument("--root", type=Path, default=Path("/usr/share/datasets/fashion-mnist"),
                   help="folder with the four Fashion-MNIST idx files")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eval-batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--smoothing", type=float, default=0.0)
    p.add_argument("--workers", type=int, default=2, help="timm's DataLoader workers (default 2)")
    p.add_argument("--timm-amp", action="store_true", help="timm with --amp --amp-dtype bfloat16")
    p.add_argument("--targets", default="88,90", help="validation accuracies to time, in %% (default 88,90)")
    p.add_argument("--tools", default="timm,ours", help="which to run, in this order (default timm,ours)")
    p.add_argument("--out", type=Path, default=Path("runs/vs_timm"), help="working folder (default runs/vs_timm)")
    p.add_argument("--markdown", metavar="FILE")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    try:
        targets = [float(t) for t in args.targets.split(",") if t.strip()]
    except ValueError:
        targets = []
    if not targets or not all(0 < t <= 100 for t in targets):  # NaN fails this too
        raise UserError(f"--targets: got {args.targets!r}; expected comma-separated percentages in (0, 100], "
                        f"e.g. 88,90")
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if not tools or any(t not in ("timm", "ours") for t in tools):
        raise UserError(f"--tools: got {args.tools!r}; expected timm, ours or both, comma-separated")
    for flag, value, least in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
                               ("--eval-batch-size", args.eval_batch_size, 1), ("--workers", args.workers, 0)):
        if value < least:
            raise UserError(f"{flag}: got {value}; must be >= {least}")
    check_output("--markdown", args.markdown)
    check_output("--json", args.json)
    # Absolute: timm runs in --out, ours in the project folder.
    args.root, args.out, args.timm_repo = args.root.resolve(), args.out.resolve(), args.timm_repo.resolve()
    idx_files(args.root)
    timm_version = timm_repo_version(args.timm_repo) if "timm" in tools else None
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise UserError(f"--out {args.out}: exists and is not an empty folder; give a new folder")
    args.out.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict] = {}
    for tool in tools:
        print(f"{tool}: running (log in {args.out / (tool + '.log')})", file=sys.stderr, flush=True)
        if tool == "timm":
            data_dir = timm_data(args.root, args.out)
            # python DIR/train.py puts DIR first on the import path: its own timm, never the pinned one
            results["timm"] = run_tool("timm", timm_command(args, data_dir, args.out), args.out / "timm.log",
                                       timm_epochs(args.out / "timm" / "summary.csv"), cwd=args.out)
        else:
            cfg = our_config(args, args.out)
            results["ours"] = run_tool("ours", [sys.executable, str(PROJECT / "main.py"), "--cfg", str(cfg)],
                                       args.out / "ours.log", our_epochs(args.out / "runs"), cwd=PROJECT)
        r = results[tool]
        print(f"{tool}: exit {r['returncode']}, {r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} CPU-s, "
              f"val acc by epoch {[row['val_acc'] for row in r['rows']]}", file=sys.stderr, flush=True)
    ours_timm = importlib.metadata.version("timm")
    header = (f"{args.model} on Fashion-MNIST, {args.epochs} epochs, batch {args.batch_size}, AdamW lr {args.lr:g} "
              f"wd {args.weight_decay:g}, cosine per update, no augmentation, smoothing {args.smoothing:g}, CPU, "
              f"{os.cpu_count()} cores" + (f"; timm train.py {timm_version} ({args.workers} workers"
                                           f"{', bf16 AMP' if args.timm_amp else ', fp32'})" if timm_version else "")
              + f"; ours with timm {ours_timm}")
    table = markdown(results, targets, header)
    print(table)
    if args.markdown:
        atomic_write(args.markdown, table + "\n")
    if args.json:
        atomic_write(args.json, json.dumps({"header": header, "targets": targets, "results": results}, indent=2) + "\n")
    return 0 if all(r["returncode"] == 0 for r in results.values()) else 1


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
