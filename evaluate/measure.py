"""What a comparison measures from runs' models rather than reads from their files: FLOPs for runs that predate
recording them, and inference latency on this machine's CPU (``latency.json``, which ``plots`` reads)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from config import from_dict
from core.errors import UserError, one_line
from core.log import get_logger
from core.machine import cpu_name
from data import get_spec
from evaluate.model import load_model
from models import build_model
from models.measure import flops_per_image, measure_latency
from plots.page import write
from plots.runs import LATENCY_FILE, Group

LATENCY_BATCH = 64  # the "batched" latency: per image, at this batch size
LATENCY_BUDGET_S = 3.0  # seconds of timing per model and batch size, at most (fewer once the spread is small)
log = get_logger(__name__)


def fill_flops(groups: list[Group]) -> list[str]:
    """FLOPs per image for runs that predate their recording (results.json ``flops_*``), counted here from the
    config (they do not depend on the weights); kept in memory only. Returns notes on what was not counted."""
    notes = []
    for g in groups:
        if all(r.results.get("flops_training") is not None for r in g.runs):
            continue
        try:
            cfg = from_dict(g.first.config)
            flops = flops_per_image(build_model(cfg, get_spec(cfg.data.name)), get_spec(cfg.data.name))
        except (UserError, RuntimeError, ValueError) as e:
            notes.append(f"{g.label}: FLOPs not counted ({type(e).__name__}: {e})")
            continue
        for r in g.runs:
            r.results.setdefault("flops_inference", flops.inference)
            r.results.setdefault("flops_training", flops.training)
        log.info(f"{g.label}: FLOPs counted from its config (its runs predate recording them)")
    return notes


def measure_latencies(groups: list[Group], out: Path, threads: int, budget_s: float) -> list[str]:
    """Inference latency of every experiment on this machine's CPU, at batch 1 and at ``LATENCY_BATCH``, with
    ``threads`` torch threads. The models of one dataset are timed side by side, in interleaved rounds
    (models.measure.measure_latency), so a change in the machine's load hits them alike. One model per
    experiment: its seeds share the architecture, and so the cost; the weights of its first checkpoint
    when there is one (the cost does not depend on them, so runs without checkpoints are timed too).
    Recorded on each group and in ``out/latency.json``; returns notes on what was not measured."""
    notes: list[str] = []
    models: dict[str, dict[str, Any]] = {}
    for g in groups:
        run = next((r for r in g.runs if r.checkpoint() is not None), g.first)
        try:
            model = load_model(run.path, None)[1] if run.checkpoint() is not None else \
                build_model(from_dict(run.config), get_spec(run.dataset))
            models.setdefault(run.dataset, {})[g.label] = model.eval()
        except (UserError, RuntimeError, ValueError) as e:
            notes.append(f"{g.label}: latency skipped ({type(e).__name__}: {e})")
    by_label = {g.label: g for g in groups}
    for dataset, chosen in models.items():
        spec = get_spec(dataset)
        for which, batch in (("batch1", 1), ("batched", LATENCY_BATCH)):
            log.info(f"latency on {dataset} at batch {batch}, {threads} thread(s): {len(chosen)} model(s) side by side")
            try:
                measured = measure_latency(chosen, spec, batch=batch, threads=threads, budget_s=budget_s * len(chosen))
            except (RuntimeError, MemoryError, ValueError) as e:  # e.g. out of memory at batch 64
                notes.append(f"{dataset}: latency at batch {batch} not measured ({one_line(e)})")
                log.info(f"warning: {notes[-1]}")
                continue
            for label, lat in measured.items():
                by_label[label].latency[which] = lat.to_dict()
    measured = {g.label: g.latency for g in groups if g.latency}
    if measured:
        write(out / LATENCY_FILE, json.dumps({
            "device": "cpu", "threads": threads, "machine": cpu_name(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "batched_size": LATENCY_BATCH, "experiments": measured}, indent=2) + "\n")
    return notes
