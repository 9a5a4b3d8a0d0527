"""A run's statuses in results.json: written by train/ (train/ending.py decides which), read by launch/ and by
plots/, which imports no training code."""

STATUSES = ("running", "completed", "stopped_early", "diverged", "interrupted", "failed")

# Ended as its config says (all epochs, or early stopping): nothing left to train, a resumed multi-run call skips
# it, and a comparison counts it.
FINISHED = ("completed", "stopped_early")
