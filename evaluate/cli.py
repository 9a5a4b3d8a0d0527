"""What ``main.py --eval``, ``--predict`` and ``--compare`` do."""
from __future__ import annotations

import sys

from core.errors import RunFailed
from core.log import get_logger
from evaluate.compare import compare
from evaluate.inference import evaluate_run, format_eval, format_predictions, predict_images
from plots.confusion import write_confusion

log = get_logger(__name__)


def eval_run(path: str, which: str) -> int:
    r = evaluate_run(path, which, progress=sys.stderr.isatty())
    log.info(format_eval(r))
    try:
        csv, png = write_confusion(r.confusion, r.classes, r.run_dir, f"confusion_{which}", top1=r.top1,
                                   title=f"{r.model} on {r.dataset}, {which}.pt")
    except RunFailed as e:  # a read-only or full run directory: the numbers are on screen, the files are not
        raise RunFailed(f"{e}; the evaluation above is complete, its confusion matrix is not saved") from None
    log.info(f"confusion matrix: {csv}, {png}")
    return 0


def predict(path: str, images: list[str], which: str, top: int) -> int:
    log.info(format_predictions(predict_images(path, images, which, top)))
    return 0


def compare_runs(run_dirs: list[str], out: str, command: str) -> int:
    index = compare(run_dirs, out, latency=True, command=command)
    log.info(f"comparison: {index}")
    return 0
