"""A run's statuses in results.json: written by train/ (train/ending.py decides which), read by launch/ and by
plots/, which imports no training code."""

STATUSES = ("running", "completed", "stopped_early", "pruned", "diverged", "interrupted", "failed")

# Ended as its config says (all epochs, or early stopping): nothing left to train, a resumed multi-run call skips
# it, and a comparison counts it.
FINISHED = ("completed", "stopped_early")

# A tune: trial its pruner stopped at an epoch boundary (launch/tune.py): ended as the search decided, with a
# checkpoint, never trained again; a comparison does not average it (it ran fewer epochs than its config says).
PRUNED = "pruned"
