"""The one error path of every entry point: a ``UserError`` is one line on stderr and exit 2, no traceback."""
from __future__ import annotations

import sys
from typing import Callable, Optional

from core.errors import Interrupted, RunFailed, UserError, one_line

EXIT_RUN_FAILED = 1  # training diverged or failed, or some runs of a multi-run call did
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C (SIGTERM: 143, SIGHUP: 129)


def run_cli(main: Callable[[Optional[list[str]]], int], argv: Optional[list[str]] = None) -> int:
    """Call ``main(argv)``; a user mistake is ``error: ...`` and exit 2, a failed run ``error: ...`` and
    exit 1, a stop signal 128 + its number (Ctrl-C 130, SIGTERM 143). Anything else is a bug and keeps its
    traceback."""
    try:
        return main(argv)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RunFailed as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_RUN_FAILED
    except Interrupted as e:
        print(f"interrupted ({e.signame})", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
