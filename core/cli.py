"""The one error path of every entry point: a ``UserError`` is one line on stderr and exit 2, no traceback."""
from __future__ import annotations

import sys
from typing import Callable, Optional

from core.errors import UserError

EXIT_OK = 0
EXIT_RUN_FAILED = 1  # training diverged or failed, or some runs of a multi-run call did
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


def run_cli(main: Callable[[Optional[list[str]]], int], argv: Optional[list[str]] = None) -> int:
    """Call ``main(argv)``; turn a user mistake into ``error: ...`` + exit 2 and Ctrl-C into exit 130."""
    try:
        return main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
