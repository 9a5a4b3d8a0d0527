"""The results table: one row per run (CSV) and one per experiment, mean ± std over seeds (CSV, Markdown)."""
from __future__ import annotations

import csv
import io
from typing import Any, Optional

from plots.runs import Group, Run

# (column, results.json key or derived value, format) for the per-run CSV.
RUN_COLUMNS = ["run", "experiment", "model", "dataset", "seed", "status", "epochs", "params", "mult_adds",
               "best_val_acc", "best_epoch", "final_val_acc", "final_val_top5", "time_per_epoch_s",
               "images_per_s", "latency_ms_batch1", "latency_ms_batched", "latency_batch_size", "device", "path"]

# Per-experiment numbers: (results key, column title in Markdown, digits).
STATS = [("best_val_acc", "best val acc (%)", 2), ("final_val_acc", "final val acc (%)", 2),
         ("time_per_epoch_s", "time/epoch (s)", 2), ("latency_ms_batch1", "latency b1 (ms)", 2),
         ("latency_ms_batched", "latency batched (ms/img)", 3)]


def run_row(run: Run, experiment: str) -> dict[str, Any]:
    r = run.results
    row = {"run": run.name, "experiment": experiment, "model": run.model, "dataset": run.dataset,
           "seed": run.seed, "status": run.status, "epochs": len(run.metrics), "path": str(run.path)}
    for key in ("params", "mult_adds", "best_epoch", "final_val_top5", "images_per_s", "latency_ms_batch1",
                "latency_ms_batched", "latency_batch_size", "device"):
        row[key] = r.get(key)
    for key in ("best_val_acc", "final_val_acc", "time_per_epoch_s"):
        row[key] = run.value(key)
    return row


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return buf.getvalue()


def runs_csv(groups: list[Group]) -> str:
    return _csv([run_row(r, g.label) for g in groups for r in g.runs], RUN_COLUMNS)


def summary_rows(groups: list[Group]) -> list[dict[str, Any]]:
    rows = []
    for g in groups:
        first = g.first.results
        row: dict[str, Any] = {"experiment": g.label, "model": g.first.model, "dataset": g.first.dataset,
                               "runs": len(g.runs), "seeds": " ".join(str(r.seed) for r in g.runs),
                               "completed": sum(r.status == "completed" for r in g.runs),
                               "params": first.get("params"), "mult_adds": first.get("mult_adds")}
        for key, _, _ in STATS:
            row[f"{key}_mean"], row[f"{key}_std"] = g.stat(key)
        rows.append(row)
    return rows


def summary_csv(groups: list[Group]) -> str:
    rows = summary_rows(groups)
    columns = ["experiment", "model", "dataset", "runs", "seeds", "completed", "params", "mult_adds"]
    columns += [f"{key}_{s}" for key, _, _ in STATS for s in ("mean", "std")]
    return _csv(rows, columns)


def _num(mean: Optional[float], std: Optional[float], digits: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _count(n: Optional[int], scale: float, unit: str) -> str:
    return "–" if n is None else f"{n / scale:,.2f}{unit}"


def summary_table(groups: list[Group]) -> tuple[list[str], list[bool], list[list[tuple[str, Optional[float]]]]]:
    """The per-experiment table: column titles, which columns are numbers, and rows of (text, number).

    The number is what the cell sorts by (the mean of "mean ± std"; None for text and for "–").
    """
    head = ["experiment", "model", "dataset", "runs", "params", "mult-adds"] + [t for _, t, _ in STATS] + ["status"]
    numeric = [False] * 3 + [True] * (len(head) - 4) + [False]
    rows = []
    for g, row in zip(groups, summary_rows(groups)):
        statuses = sorted({r.status for r in g.runs})
        status = statuses[0] if len(statuses) == 1 else ", ".join(
            f"{sum(r.status == s for r in g.runs)} {s}" for s in statuses)
        cells = [(g.label, None), (row["model"], None), (row["dataset"], None), (str(row["runs"]), row["runs"]),
                 (_count(row["params"], 1e6, " M"), row["params"]),
                 (_count(row["mult_adds"], 1e6, " M"), row["mult_adds"])]
        cells += [(_num(row[f"{k}_mean"], row[f"{k}_std"], d), row[f"{k}_mean"]) for k, _, d in STATS]
        rows.append(cells + [(status, None)])
    return head, numeric, rows


def markdown(groups: list[Group]) -> str:
    """One row per experiment; values over several seeds read mean ± sample std."""
    head, numeric, rows = summary_table(groups)
    lines = ["| " + " | ".join(head) + " |", "|" + "".join("---:|" if n else "---|" for n in numeric)]
    lines += ["| " + " | ".join(text for text, _ in cells) + " |" for cells in rows]
    return "\n".join(lines)
