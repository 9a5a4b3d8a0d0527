"""The results tables: one row per run (results.csv) and one per experiment, mean ± std over seeds
(summary.csv, and the Markdown/HTML table). Rows keep the sweep's order; each swept key has its own column."""
from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Optional

from plots.runs import Group, Run

# Per-experiment numbers over seeds: (results key, column title, digits).
STATS = [("best_val_acc", "best val acc (%)", 2), ("final_val_acc", "final val acc (%)", 2),
         ("time_per_epoch_s", "time/epoch (s)", 2)]
COSTS = ["params", "mult_adds", "flops_inference", "flops_training"]  # per image; the same for every seed
LATENCY = [("batch1", "latency b1 (ms)"), ("batched", "latency batched (ms/img)")]


def swept_keys(groups: list[Group]) -> list[str]:
    """Every key some sweep set (seed left out: it has its own column), in the order first seen."""
    keys: dict[str, None] = {}
    for g in groups:
        for r in g.runs:
            keys.update((k, None) for k in r.swept if k != "seed")
    return list(keys)


def param(value: Any) -> str:
    """A searched or swept value as a page writes it: ``0.0021``, ``3e-05``, ``4``, ``true``, ``gelu``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def params_text(params: dict[str, Any]) -> str:
    """``train.lr=0.0021, model.depth=4``."""
    return ", ".join(f"{k}={param(v)}" for k, v in params.items())


def tuned_text(g: Group) -> str:
    """The "tuned" column: the best values a search found and the group was trained with; "no" for the baseline
    at the config's own values."""
    if g.tuned is None:
        return "–"
    return (params_text(g.tuned_params) or "yes") if g.tuned else "no"


def cell(value: Any) -> Any:
    """A swept value as a CSV cell: lists and mappings as JSON, the rest as they are."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _latency_columns(g: Group) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for which, _ in LATENCY:
        lat = g.latency.get(which) or {}
        row[f"latency_ms_{which}"] = lat.get("ms")
        row[f"latency_{which}_spread"] = lat.get("spread")
        row[f"latency_{which}_repeats"] = lat.get("repeats")
        row[f"latency_{which}_flagged"] = lat.get("flagged")
        row[f"latency_{which}_ratio"] = lat.get("ratio")
        row[f"latency_{which}_ratio_ci"] = lat.get("ratio_ci")
        row[f"latency_{which}_ratio_flagged"] = lat.get("ratio_flagged")
    any_lat = next((g.latency[w] for w, _ in LATENCY if g.latency.get(w)), {})
    row["latency_batch_size"] = (g.latency.get("batched") or {}).get("batch")
    row["latency_threads"] = any_lat.get("threads")
    row["latency_reference"] = any_lat.get("reference")
    return row


LATENCY_COLUMNS = [f"latency_{k}" for which, _ in LATENCY
                   for k in (f"ms_{which}", f"{which}_spread", f"{which}_repeats", f"{which}_flagged",
                             f"{which}_ratio", f"{which}_ratio_ci", f"{which}_ratio_flagged")]
LATENCY_COLUMNS += ["latency_batch_size", "latency_threads", "latency_reference"]


def run_row(run: Run, g: Group, keys: list[str]) -> dict[str, Any]:
    r = run.results
    row = {"run": run.name, "experiment": g.label, **{k: cell(run.swept.get(k)) for k in keys},
           "model": run.model, "dataset": run.dataset, "seed": run.seed, "status": run.status,
           "reason": run.reason, "counted": run in g.counted, "epochs": len(run.metrics), "path": str(run.path)}
    for key in COSTS + ["best_epoch", "final_val_top5", "images_per_s", "device"]:
        row[key] = r.get(key)
    for key in ("best_val_acc", "final_val_acc", "time_per_epoch_s"):
        row[key] = run.value(key)
    return {**row, **_latency_columns(g)}  # latency is measured once per experiment, by the comparison


def run_columns(keys: list[str]) -> list[str]:
    return (["run", "experiment", *keys, "model", "dataset", "seed", "status", "reason", "counted", "epochs", *COSTS,
             "best_val_acc", "best_epoch", "final_val_acc", "final_val_top5", "time_per_epoch_s", "images_per_s"]
            + LATENCY_COLUMNS + ["device", "path"])


def csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """``rows`` as CSV with a header of ``columns``; None is an empty cell."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return buf.getvalue()


def runs_csv(groups: list[Group]) -> str:
    keys = swept_keys(groups)
    return csv_text([run_row(r, g, keys) for g in groups for r in g.runs], run_columns(keys))


def status_of(g: Group) -> str:
    """One word when every run agrees, else the counts: "2 completed, 1 interrupted"."""
    statuses = sorted({r.status for r in g.runs})
    if len(statuses) == 1:
        return statuses[0]
    return ", ".join(f"{sum(r.status == s for r in g.runs)} {s}" for s in statuses)


def summary_rows(groups: list[Group]) -> list[dict[str, Any]]:
    keys = swept_keys(groups)
    rows = []
    for g in groups:
        row: dict[str, Any] = {"experiment": g.label, **{k: cell(g.swept.get(k)) for k in keys},
                               "model": g.first.model, "dataset": g.first.dataset, "runs": len(g.runs),
                               "counted": len(g.counted), "seeds": " ".join(str(r.seed) for r in g.counted),
                               "completed": sum(r.finished for r in g.runs), "status": status_of(g),
                               **{k: g.cost(k) for k in COSTS}}
        for key, _, _ in STATS:
            row[f"{key}_mean"], row[f"{key}_std"] = g.stat(key)
        if g.tuned is not None:
            row["tuned_params"] = cell(g.tuned_params)
        rows.append({**row, **_latency_columns(g)})
    return rows


def summary_csv(groups: list[Group]) -> str:
    keys = swept_keys(groups)
    columns = ["experiment", *keys, *(["tuned_params"] if "tuned" in keys else []), "model", "dataset", "runs",
               "counted", "seeds", "completed", "status", *COSTS]
    columns += [f"{key}_{s}" for key, _, _ in STATS for s in ("mean", "std")] + LATENCY_COLUMNS
    return csv_text(summary_rows(groups), columns)


def _num(mean: Optional[float], std: Optional[float], digits: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def count(n: Optional[float], unit: str = "") -> str:
    """1234567 -> "1.23 M"; "–" for none."""
    if n is None:
        return "–"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:,.2f} {prefix}{unit}"
    return f"{n:,.0f} {unit}".rstrip()


def latency_text(lat: Optional[dict[str, Any]]) -> str:
    """``2.31 (IQR 3%)``: the median and its spread, the interquartile range over the median; a number too
    noisy to trust is marked, with what flagged it, rather than printed as a clean number."""
    if not lat or lat.get("ms") is None:
        return "–"
    ms = lat["ms"]
    # 2 decimals from 1 ms up, else at least 3 significant digits (a tiny model's 0.0395 ms is not 0.039).
    digits = 2 if ms >= 1 else 3 if ms <= 0 else max(3, 2 - math.floor(math.log10(ms)))
    text = f"{ms:.{digits}f} (IQR {100 * lat['spread']:.0f}%)"
    return f"{text} ⚠ {lat.get('why') or 'unsteady'}" if lat.get("flagged") else text


def ratio_why(lat: dict[str, Any]) -> str:
    """Why a ratio is flagged, in words: too few rounds, or an interval too wide after many (latency.json's
    ``ratio_why``; files written before it recorded one get the numbers)."""
    if lat.get("ratio_why"):
        return str(lat["ratio_why"])
    ratio, ci, rounds = lat.get("ratio") or 1.0, lat.get("ratio_ci") or 0.0, lat.get("repeats")
    return f"interval ±{100 * ci / ratio:.0f}% over {rounds} rounds" if rounds is not None else "interval too wide"


def ratio_text(lat: Optional[dict[str, Any]]) -> str:
    """``1.37× ±0.01``: latency as a multiple of the fastest model's, timed in the same rounds, with its ~95%
    interval; marked, with the reason, when too few rounds or too wide an interval cannot rank it."""
    if not lat or lat.get("ratio") is None:
        return "–"
    text = f"{lat['ratio']:.2f}× ±{lat['ratio_ci']:.2f}"
    return f"{text} ⚠ {ratio_why(lat)}" if lat.get("ratio_flagged") else text


def summary_table(groups: list[Group]) -> tuple[list[str], list[bool], list[list[tuple[str, Optional[float]]]]]:
    """The per-experiment table: column titles, which columns are numbers, and rows of (text, number).

    The number is what the cell sorts by (the mean of "mean ± std"; None for text and for "–").
    """
    # Narrower than the CSVs, to fit a page: a swept model.name is the model column, and one dataset is
    # named in the page's header.
    keys = [k for k in swept_keys(groups) if k != "model.name"]
    datasets = len({g.first.dataset for g in groups}) > 1
    head = (["experiment", *keys, "model"] + ["dataset"] * datasets + ["runs", "params", "FLOPs/img inference",
            "FLOPs/img training"] + [t for _, t, _ in STATS] + [t for _, t in LATENCY] + ["latency b1 ÷ fastest"]
            + ["status"])
    numeric = [False] * (1 + len(keys) + 1 + datasets) + [True] * (len(head) - len(keys) - 3 - datasets) + [False]
    for i, k in enumerate(keys, 1):
        numeric[i] = all(isinstance(g.swept.get(k), (int, float)) and not isinstance(g.swept.get(k), bool)
                         for g in groups)
    rows = []
    for g, row in zip(groups, summary_rows(groups)):
        runs = str(len(g.runs)) if len(g.counted) == len(g.runs) else f"{len(g.counted)} of {len(g.runs)}"
        cells = [(g.label, None)]
        cells += [(tuned_text(g) if k == "tuned" else str(row[k]) if row[k] is not None else "–",
                   row[k] if numeric[i] else None) for i, k in enumerate(keys, 1)]
        cells += [(row["model"], None)] + [(row["dataset"], None)] * datasets + [(runs, len(g.counted)),
                  (count(row["params"]), row["params"]), (count(row["flops_inference"]), row["flops_inference"]),
                  (count(row["flops_training"]), row["flops_training"])]
        cells += [(_num(row[f"{k}_mean"], row[f"{k}_std"], d), row[f"{k}_mean"]) for k, _, d in STATS]
        cells += [(latency_text(g.latency.get(w)), (g.latency.get(w) or {}).get("ms")) for w, _ in LATENCY]
        cells += [(ratio_text(g.latency.get("batch1")), (g.latency.get("batch1") or {}).get("ratio"))]
        rows.append(cells + [(row["status"], None)])
    return head, numeric, rows


def markdown(groups: list[Group]) -> str:
    """One row per experiment; values over several seeds read mean ± sample std."""
    head, numeric, rows = summary_table(groups)
    lines = ["| " + " | ".join(head) + " |", "|" + "".join("---:|" if n else "---|" for n in numeric)]
    lines += ["| " + " | ".join(text.replace("|", "\\|") for text, _ in cells) + " |" for cells in rows]
    return "\n".join(lines)
