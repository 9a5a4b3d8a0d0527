"""The exceptions every entry point turns into one line and an exit code: the user's mistakes, failed runs."""


class UserError(Exception):
    """A problem in the user's input. Every entry point prints it as one line and exits 2 (``core.cli``)."""


class RunFailed(Exception):
    """A run that started and could not finish for a reason it can name (e.g. its loss diverged).
    Every entry point prints it as one line and exits 1 (``core.cli``); the run directory has the details."""
