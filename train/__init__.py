"""The shared training loop (``engine``), its setup (``setup``), the epoch loop (``fit``), the run directory
(``rundir``), sweeps (``sweep``) and measurements the loop and the tools share (``measure``)."""
