"""What the machine refuses is one line, like the user's own mistakes (issue 23): a read-only run directory under
``--eval``, a disk that fills up while a comparison is written, a path component over 255 bytes in ``data.root``
or ``data.cache_dir``, run files that are not UTF-8 or hold text where a number belongs, and a SLURM result file
that names something to run.

Each is one line on stderr, ``error: <path>: <cause>`` (or a ``warning:`` where the call can go on), never a
traceback, and leaves no half-written file. The default tests simulate the refusal at the system call where
the system makes it (``os.open`` in a read-only folder, ``os.fsync`` on a full disk) for the file concerned;
the ``system`` tests get it from a real read-only mount and a real full tmpfs (root).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import shutil
import subprocess
import types
from pathlib import Path

import pytest

from core.files import TEMP_PREFIX
from fixtures import built_once, call_main, missing, png_size, run_fit, run_main, tiny_config, tiny_raw, write_mnist, \
    write_yaml

LONG = "x" * 300  # one path component over the 255 bytes file systems allow


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One finished 1-epoch run (its data beside it); tests copy it before changing anything."""
    def build(tmp):
        root = write_mnist(tmp / "data", n_train=64, n_test=32)
        return run_fit(tiny_config(root, tmp / "runs", epochs=1))[0]
    return built_once(tmp_path_factory, "one-line-run", build)


def copy_of(run: Path, tmp: Path, name: str = "run") -> Path:
    return Path(shutil.copytree(run, tmp / name))


def assert_one_line(p, code: int, *names: str, prefix: str = "error: ") -> str:
    assert p.returncode == code, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    (line,) = p.stderr.splitlines()
    assert line.startswith(prefix), line
    for name in names:
        assert name in line, (name, line)
    return line


def temporaries(folder: Path) -> list[Path]:
    return list(folder.rglob(f"{TEMP_PREFIX}*"))


# ----------------------------------------------------------------------------- 1. --eval in a read-only run


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` as ``chmod -R a-w`` leaves it. Root writes through that, so for root the refusal everyone else
    gets (creating a file there: EACCES) is made at ``os.open``, for new files in ``folder`` only."""
    modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
    for p, mode in modes.items():
        p.chmod(mode & ~0o222)
    real = os.open

    def refuse(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and Path(os.fsdecode(path)).parent == folder:
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real(path, flags, *args, **kwargs)

    try:
        with pytest.MonkeyPatch.context() as mp:
            if os.access(folder, os.W_OK):  # root
                mp.setattr(os, "open", refuse)
            yield
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def test_eval_in_a_read_only_run_prints_its_numbers_then_one_line(run, tmp_path, capsys):
    mine = copy_of(run, tmp_path)
    before = sorted(mine.rglob("*"))
    with read_only(mine):
        p = call_main(capsys, "--eval", mine)
    assert "top-1 " in p.stdout and "the run recorded" in p.stdout  # the evaluation is not lost
    assert_one_line(p, 1, f"{mine / 'confusion_best.csv'}: cannot write (Permission denied)", "not saved")
    assert sorted(mine.rglob("*")) == before  # nothing written, no temporary file


@pytest.fixture
def mount_point(tmp_path):
    """A folder to mount on (root and mount: ``missing`` otherwise), unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def mount(*args: str) -> None:
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    if r.returncode != 0:
        missing("a mount", f"mount {' '.join(args)} failed ({(r.stderr or r.stdout).strip()})",
                "run the system tests as root")


@pytest.mark.system
def test_eval_on_a_read_only_mount(run, tmp_path, mount_point):
    mine = copy_of(run, tmp_path)
    mount("--bind", "-o", "ro", str(mine), str(mount_point))
    p = run_main("--eval", mount_point)
    assert "top-1 " in p.stdout
    assert_one_line(p, 1, f"{mount_point / 'confusion_best.csv'}: cannot write (Read-only file system)")
    assert sorted(q.name for q in mine.iterdir()) == sorted(q.name for q in run.iterdir())


# ----------------------------------------------------------------------------- 2. a full disk under a comparison


def full_while_writing(monkeypatch, name: str) -> None:
    """The disk is full when the file ``name`` is flushed to it: its ``os.fsync`` fails with ENOSPC, as a file
    system that allocates late reports it (other files are written as usual)."""
    real = os.fsync

    def fsync(fd):
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f"{TEMP_PREFIX}{name}."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def quick_compare(monkeypatch):
    """``main.py --compare`` with a latency budget of milliseconds and one image per attention map."""
    import functools

    import evaluate.cli
    from evaluate.compare import compare

    monkeypatch.setattr(evaluate.cli, "compare", functools.partial(compare, latency_budget_s=0.005, images=1))


@pytest.mark.parametrize("how, name", [
    ("plots", "results.md"),  # the results table
    ("plots", "val_accuracy.png"),  # a figure
    ("plots", "index.html"),
    ("evaluate.compare", "index.md"),
    ("main", "latency.json"),  # what main.py --compare measured
    ("main", "attention.png"),
])
def test_a_full_disk_while_writing_a_comparison_is_one_line(run, tmp_path, capsys, monkeypatch, how, name):
    out = tmp_path / "out"
    args = {"plots": [run, "--out", out], "evaluate.compare": [run, "--out", out, "--no-maps", "--no-latency"],
            "main": ["--compare", run, "--out", out]}[how]
    if how == "main":
        quick_compare(monkeypatch)
    full_while_writing(monkeypatch, name)
    p = call_main(capsys, *args, module=how)
    assert_one_line(p, 1, f"error: {out / name}: cannot write (No space left on device)")
    assert not (out / name).exists() and not temporaries(out)
    for png in out.glob("*.png"):  # what was written before is whole
        png_size(png)


@pytest.fixture
def small_disk(mount_point):
    mount("-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mount_point))
    return mount_point


@pytest.mark.system
@pytest.mark.parametrize("module", ["plots", "evaluate.compare"])
def test_a_comparison_on_a_real_full_disk(run, small_disk, module):
    out = small_disk / "out"
    p = run_main(run, "--out", out, *(["--no-maps", "--no-latency"] if module == "evaluate.compare" else []),
                 module=module)
    line = assert_one_line(p, 1, f"error: {out}/", ": cannot write (No space left on device)")
    assert not Path(line.split(": cannot write")[0].removeprefix("error: ")).exists()
    assert not temporaries(out)
    for png in out.glob("*.png"):
        png_size(png)


# ----------------------------------------------------------------------------- 3. a name over 255 bytes


@pytest.fixture
def config(tmp_path) -> Path:
    root = write_mnist(tmp_path / "data", n_train=32, n_test=16)
    return write_yaml(tmp_path / "c.yaml", tiny_raw(root, tmp_path / "runs", epochs=1, batch_size=16))


@pytest.mark.parametrize("dry", [False, True], ids=["train", "dry-run"])
def test_data_root_with_a_name_too_long_is_one_line(config, tmp_path, capsys, dry):
    root = tmp_path / LONG / "data"
    p = call_main(capsys, "--cfg", config, "--set", f"data.root={root}", *(["--dry-run"] if dry else []))
    assert_one_line(p, 2, f"error: data.root: {root}: File name too long", "300 bytes", "255")
    assert not (tmp_path / "runs").exists()


def test_cache_dir_with_a_name_too_long_warns_and_trains(config, tmp_path, capsys):
    cache = tmp_path / LONG
    p = call_main(capsys, "--cfg", config, "--set", "data.cache=true", "--set", f"data.cache_dir={cache}")
    assert_one_line(p, 0, f"data.cache_dir: {cache}: File name too long", "300 bytes", "continuing without a cache",
                    prefix="warning: ")
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "results.json").read_text())["status"] == "completed"


# ----------------------------------------------------------------------------- 4. run files a comparison cannot use


def rewrite_json(name: str, change, line: int = 0):
    """Damage ``name`` (results.json, or a metrics.jsonl row): ``change(obj)`` edits the parsed object."""
    def damage(run_dir: Path) -> Path:
        path = run_dir / name
        if name.endswith(".jsonl"):
            rows = [json.loads(text) for text in path.read_text().splitlines()]
            change(rows[line])
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            obj = json.loads(path.read_text())
            path.write_text(json.dumps(change(obj) or obj))
        return path
    return damage


def raw_bytes(name: str, data: bytes):
    def damage(run_dir: Path) -> Path:
        (run_dir / name).write_bytes(data)
        return run_dir / name
    return damage


BAD_FILES = [
    ("results.json: not UTF-8", raw_bytes("results.json", b'\xff\xfe{"status": "completed"}'),
     ["not UTF-8", "0xff"]),
    ("results.json: text where a number belongs", rewrite_json("results.json", lambda r: r.update(best_val_acc="high")),
     ["best_val_acc", "'high'", "a number"]),
    ("results.json: a number no float holds", rewrite_json("results.json", lambda r: r.update(params=10 ** 400)),
     ["params", "401-digit"]),
    ("results.json: a list", raw_bytes("results.json", b"[1, 2]"), ["a mapping", "list"]),
    ("results.json: swept is text", rewrite_json("results.json", lambda r: r.update(swept="depth=2")), ["swept"]),
    ("metrics.jsonl: text where a number belongs", rewrite_json("metrics.jsonl", lambda m: m.update(val_acc="high")),
     ["line 1", "val_acc", "'high'"]),
    ("metrics.jsonl: an epoch that is not an integer",
     rewrite_json("metrics.jsonl", lambda m: m.update(epoch="one")), ["line 1", "epoch", "an integer"]),
    ("metrics.jsonl: not UTF-8", raw_bytes("metrics.jsonl", b'{"epoch": 1, "val_acc": \xe9}\n'), ["not UTF-8"]),
    ("config.yaml: not UTF-8", raw_bytes("config.yaml", b"model: {name: vit}\n\xff\n"), ["not UTF-8"]),
    ("config.yaml: a !!bool that is not one", raw_bytes("config.yaml", b"model: {name: vit}\nseed: !!bool maybe\n"),
     ["cannot read", "!!bool 'maybe' is not a boolean"]),
    # Deeper than a config nests (core/yamltext.py: MAX_DEPTH): left out in one line that names where.
    ("config.yaml: nested 990 deep", raw_bytes("config.yaml", b"model: {name: vit, x: " + b"[" * 990 + b"]" * 990
                                               + b"}\n"), ["cannot read", "nested more than 100 levels deep",
                                                            "line 1"]),
    # Thirty anchors, each 50 brackets around the one before: a 3 KB text whose data nests 1,500 levels.
    ("config.yaml: aliases nested 1,500 deep",
     raw_bytes("config.yaml", b"model: {name: vit}\nx: &a0 1\n" + b"".join(
         b"x%d: &a%d " % (i, i) + b"[" * 50 + b"*a%d" % (i - 1) + b"]" * 50 + b"\n" for i in range(1, 31))),
     ["cannot read", "nested more than 100 levels deep"]),
    ("config.yaml: a list that holds itself", raw_bytes("config.yaml", b"model: {name: vit}\nx: &a [1, *a]\n"),
     ["cannot read", "contains itself"]),
    ("config.yaml: a date that is not one", raw_bytes("config.yaml", b"model: {name: vit}\nseed: 2020-13-45\n"),
     ["cannot read", "ValueError", "month"]),
]


@pytest.mark.parametrize("damage, names", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_a_run_file_the_comparison_cannot_use_is_one_line(run, tmp_path, capsys, damage, names):
    bad = damage(copy_of(run, tmp_path))
    p = call_main(capsys, bad.parent, "--out", tmp_path / "out", module="plots")
    assert_one_line(p, 2, f"error: {bad}: ", *names, "nothing left to compare")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module", ["plots", "evaluate.compare"])
def test_a_bad_run_among_good_ones_is_left_out_with_one_warning(run, tmp_path, capsys, module, unsaved_figures):
    folder = tmp_path / "runs"
    good = copy_of(run, folder, "a-good")
    bad = rewrite_json("results.json", lambda r: r.update(best_val_acc="high"))(copy_of(run, folder, "b-bad"))
    out = tmp_path / "out"
    p = call_main(capsys, folder, "--out", out, *(["--no-maps", "--no-latency"] if module != "plots" else []),
                  module=module)
    assert_one_line(p, 0, f"warning: {bad}: best_val_acc: ", "left out of the comparison", prefix="warning: ")
    index = (out / "index.md").read_text()
    assert "# Comparison of 1 run" in index and f"`{good}`" in index
    assert f"Left out (its files cannot be used): {bad}: best_val_acc" in index


# ----------------------------------------------------------------------------- 5. SLURM result files


class Touch:
    """Unpickling this runs ``touch PATH``: what a foreign result file could do to the submitting user."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def tracked(result: Path):
    """What ``launch.slurm._from_result`` reads of a job: its id, run directory and task 0's files."""
    paths = types.SimpleNamespace(result_pickle=result, stderr=result.with_name("42_0_log.err"))
    task = types.SimpleNamespace(paths=paths)
    return types.SimpleNamespace(job=types.SimpleNamespace(point=types.SimpleNamespace(name="p0")), job_id="42",
                                 run_dir=None, handle=types.SimpleNamespace(task=lambda i: task))


@pytest.mark.parametrize("payload", ["bare", "success", "error"])
def test_a_result_file_that_names_something_to_run_is_refused_not_run(tmp_path, payload):
    from launch.slurm import _from_result, read_result

    marker = tmp_path / "pwned"
    evil = Touch(marker)
    obj = {"bare": evil, "success": ("success", {"status": "completed", "x": evil}), "error": ("error", evil)}[payload]
    result = tmp_path / "42_0_result.pkl"
    result.write_bytes(pickle.dumps(obj))
    with pytest.raises(ValueError, match=r"refused: it names (posix|os)\.system"):
        read_result(result)
    outcome = _from_result(tracked(result))
    assert outcome.status == "failed" and "\n" not in outcome.error, outcome.error
    assert outcome.error.startswith(f"job 42: its result {result} was not read: refused: it names ")
    assert not marker.exists()


def test_results_submitit_writes_are_read(tmp_path):
    from submitit.core.utils import cloudpickle_dump

    from launch.plan import outcome_dict
    from launch.slurm import _from_result
    from train.ending import Ending

    result = tmp_path / "42_0_result.pkl"
    done = outcome_dict("p0", Ending("completed", None, None, None), tmp_path / "run",
                        {"best_val_acc": 91.5, "params": 3514, "swept": {"model.depth": [1, 2]}, "error": None})
    cloudpickle_dump(("success", done), result)  # what submitit's process_job writes
    outcome = _from_result(tracked(result))
    assert (outcome.status, outcome.run_dir, outcome.results) == ("completed", tmp_path / "run", done["results"])
    cloudpickle_dump(("error", "Traceback (most recent call last):\n  ...\nRuntimeError: a broken GPU\n"), result)
    outcome = _from_result(tracked(result))
    assert outcome.status == "failed" and "RuntimeError: a broken GPU" in outcome.error and outcome.traceback
    result.write_bytes(result.read_bytes()[:10])
    outcome = _from_result(tracked(result))
    assert outcome.status == "failed" and "was not read: damaged (" in outcome.error
