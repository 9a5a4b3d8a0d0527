"""The bottom of the stack: the user-error type, the name registry, atomic file writes, the CLI error path.

Everything else may import ``core``; ``core`` imports nothing of the project.
"""
