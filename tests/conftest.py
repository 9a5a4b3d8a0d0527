"""What every test's numbers depend on, pinned before torch is imported, so the suite gives the same numbers on
any CPU (with AMX, with AVX512-BF16, without bf16 units) and any core count:

* one compute thread (``OMP_NUM_THREADS=1``, inherited by every subprocess a test starts: ``main.py``,
  torchrun's ranks, ``--jobs`` workers, SLURM jobs): a float sum's order, and so its last bits, depends on the
  thread count;
* the CPU precision branch of ``train.precision: auto`` (``VITLAB_CPU_BF16``): fp32 unless the caller sets it;
  ``.ci/run`` runs the ``numeric`` tests again down the other branch. A test about the bf16 path asks for
  ``precision: bf16`` itself.

Markers (pytest.ini): ``system`` = real process trees (signals, torchrun, ``--jobs``, SLURM, chromium, a tmpfs),
left out of the default run; ``numeric`` = numbers compared between runs or against a reference.
"""
import os
import sys

os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("VITLAB_CPU_BF16", "0")
# Bytecode caching on, for this process and the ones the tests start, whatever PYTHONDONTWRITEBYTECODE says (these
# machines set it): without it, every xdist worker recompiles the project and rewrites every test module's asserts
# before its first test, and every `python main.py` a test starts recompiles the project. Collecting the suite
# took 12.3 s with it set and 7.6 s with the files cached (`time python -m pytest --collect-only -n 0`, 2-core
# AMD EPYC). The files go where Python puts them, __pycache__/ (git ignores them).
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

import pytest  # noqa: E402


def pytest_sessionstart(session):
    """One torch thread in every process that runs tests, set before any test module is collected. Not in
    pytest-xdist's controller (the ``dsession`` plugin), which runs no test: it would spend seconds importing
    torch before it starts the workers."""
    if session.config.pluginmanager.has_plugin("dsession"):
        return
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def no_system_datasets(tmp_path_factory, monkeypatch):
    """Tests never find (or depend on) datasets installed on this machine (/usr/share/datasets)."""
    monkeypatch.setenv("VITLAB_SYSTEM_DATASETS", str(tmp_path_factory.mktemp("system-datasets")))


@pytest.fixture
def fmnist_root(tmp_path):
    from fixtures import write_mnist

    return write_mnist(tmp_path / "fmnist", n_train=256, n_test=128)


@pytest.fixture
def no_comparison(monkeypatch):
    """A multi-run call that ends with an index.md listing its runs instead of the comparison (figures, tables,
    latency): for tests about what the call trains and records, which read no page."""
    import launch.call

    def listed(run_dirs, out, **_):
        index = out / "index.md"
        index.write_text("".join(f"- {d}\n" for d in run_dirs))
        return index

    monkeypatch.setattr(launch.call, "compare", listed)


@pytest.fixture
def plain_comparisons(monkeypatch):
    """The comparison a multi-run call of ``main`` ends with, without attention and feature maps (drawn and
    checked in tests/test_maps.py and test_plots.py): for tests about runs' bookkeeping, where the maps are
    most of the comparison's time."""
    import functools

    import launch.call
    from evaluate.compare import compare

    monkeypatch.setattr(launch.call, "compare", functools.partial(compare, inspect_models=False))


@pytest.fixture
def unsaved_figures(monkeypatch):
    """Every figure is built (its axes, lines, legend: the plotting code runs) but not drawn: ``savefig`` writes
    a 1x1 PNG instead. For tests about a comparison's bookkeeping (tables, index, resumes) that read no figure;
    drawing is most of a comparison's time (plots.curves.save, dpi 120). The figures themselves are checked, as
    real PNGs, in tests/test_plots.py, test_maps.py, test_plots_tune.py and test_one_line.py."""
    import io

    import matplotlib.figure
    from PIL import Image

    blank = io.BytesIO()
    Image.new("RGB", (1, 1)).save(blank, format="PNG")

    def savefig(self, fname, **_):
        if hasattr(fname, "write"):
            fname.write(blank.getvalue())
        else:
            open(fname, "wb").write(blank.getvalue())

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
