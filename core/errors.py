"""The one exception type for mistakes a user can fix (config, paths, data)."""


class UserError(Exception):
    """A problem in the user's input. Every entry point prints it as one line and exits 2 (``core.cli``)."""
