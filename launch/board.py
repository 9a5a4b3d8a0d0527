"""The console of a multi-run call that runs points elsewhere (``--jobs`` workers, SLURM jobs): one status line
per point, redrawn in place on a terminal, one plain line per change otherwise (logs, CI)."""
from __future__ import annotations

import shutil
import sys
from typing import Any, Optional, TextIO

from core.status import FINISHED
from launch.plan import Outcome


class StatusBoard:
    """One status line per point. On a terminal the lines are redrawn in place (notes such as "log in ..."
    print above them); otherwise each change is one plain line, ``point NAME: TEXT``, for logs and CI."""

    def __init__(self, names: list[str], out: Optional[TextIO] = None, live: Optional[bool] = None):
        out = sys.stdout if out is None else out  # looked up now: tests and tools replace sys.stdout
        self.names, self.out = names, out
        self.live = out.isatty() if live is None else live
        self.texts = ["queued"] * len(names)
        self.width = max(map(len, names), default=0)
        self.drawn = 0  # lines of the board on screen, below the cursor's line

    def update(self, i: int, text: str) -> None:
        if text == self.texts[i]:
            return
        self.texts[i] = text
        if self.live:
            self._redraw()
        else:
            self._write(f"point {self.names[i]}: {text}\n")

    def note(self, text: str) -> None:
        """A line that stays (above the board on a terminal)."""
        if self.live:
            self._clear()
            self._write(text + "\n")
            self._redraw()
        else:
            self._write(text + "\n")

    def close(self) -> None:
        self.drawn = 0  # the last board stays on screen

    def lines(self, rows: int) -> list[str]:
        lines = [(f"{n:<{self.width}}  {t}", t == "queued") for n, t in zip(self.names, self.texts)]
        if len(lines) <= rows:
            return [text for text, _ in lines]
        queued = sum(q for _, q in lines)
        shown = [text for text, q in lines if not q][-(rows - 1):]
        return shown + [f"... and {queued} more queued"]

    def _clear(self) -> None:
        if self.drawn:
            self._write(f"\x1b[{self.drawn}F\x1b[J")  # up to the board's first line, erase to the end
            self.drawn = 0

    def _redraw(self) -> None:
        size = shutil.get_terminal_size()
        lines = [line[:size.columns - 1] for line in self.lines(max(2, size.lines - 2))]  # no wrapping
        self._clear()
        self._write("".join(line + "\n" for line in lines))
        self.drawn = len(lines)

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


def status_text(event: dict[str, Any]) -> str:
    """A worker's event as its status line."""
    if event["event"] == "run_dir":
        done = event.get("epochs_done") or 0
        return f"epoch {done}/{event['epochs']}" + (" (resumed)" if done else "") + ", running"
    top5 = f" top-5 {event['val_top5']:.2f}%" if event.get("val_top5") is not None else ""
    return f"epoch {event['epoch']}/{event['epochs']}  val acc {event['val_acc']:.2f}%{top5}"


def outcome_text(o: Outcome) -> str:
    if o.status in FINISHED:
        r = o.results
        early = f", stopped early after epoch {r.get('stopped_epoch')}" if o.status == "stopped_early" else ""
        return (f"done  best val acc {r['best_val_acc']:.2f}% (epoch {r['best_epoch']}), "
                f"final {r['final_val_acc']:.2f}%{early}")
    if o.status == "interrupted":
        return f"interrupted: {(o.error or '').split('; ')[0]}"
    return f"{o.status}: {o.error}"
