"""The exceptions every entry point turns into one line and an exit code: the user's mistakes, failed runs."""


class UserError(Exception):
    """A problem in the user's input. Every entry point prints it as one line and exits 2 (``core.cli``)."""


class RunFailed(Exception):
    """A run that started and could not finish for a reason it can name (e.g. its loss diverged).
    Every entry point prints it as one line and exits 1 (``core.cli``); the run directory has the details."""


class Interrupted(KeyboardInterrupt):
    """A stop signal ended the run: Ctrl-C (SIGINT), SIGTERM or SIGHUP. A ``KeyboardInterrupt`` so that no
    ``except Exception`` swallows it; entry points exit with the shell's code for the signal, 128 + signum."""

    def __init__(self, signum: int, *, immediate: bool = False):
        import signal

        self.signum, self.immediate = signum, immediate
        self.signame = signal.Signals(signum).name
        super().__init__(self.signame)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def one_line(e: BaseException, limit: int = 0) -> str:
    """An error as one line: a ``UserError``'s or ``RunFailed``'s message (any newline it quotes escaped), any
    other exception as ``Type: the first line of its message`` (the traceback tells the rest), that first line
    cut at a word to about ``limit`` characters when ``limit`` is given (a library's message can be a page)."""
    if isinstance(e, (UserError, RunFailed)):
        return str(e).strip().replace("\r", "\\r").replace("\n", "\\n")
    first = (str(e).strip().splitlines() or [""])[0]
    if limit and len(first) > limit:
        first = first[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
