"""The bottom of the stack: the atomic write every file goes through, and the one CLI error path."""
import signal

import pytest

from core.cli import run_cli
from core.errors import Interrupted, RunFailed, UserError
from core.files import TEMP_PREFIX, atomic_write


def test_atomic_write_text_bytes_and_writer(tmp_path):
    atomic_write(tmp_path / "a.txt", "hello\n")
    atomic_write(tmp_path / "b.bin", b"\x00\x01")
    atomic_write(tmp_path / "c.bin", lambda f: f.write(b"from a writer"))
    assert (tmp_path / "a.txt").read_text() == "hello\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.bin").read_bytes() == b"from a writer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.bin"]


def test_written_files_get_the_usual_mode_not_mkstemps_0600(tmp_path):
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    atomic_write(tmp_path / "config.yaml", "a: 1\n")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open() gives: others can read a shared run directory
    assert stat.S_IMODE((tmp_path / "config.yaml").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) \
        == 0o666 & ~umask


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    atomic_write(target, "old")

    def half_then_fail(f):
        f.write(b"half of the new")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_temporary_names_are_unique_per_write(tmp_path, monkeypatch):
    """Two writers of one target (two processes of a sweep) never share a temporary file."""
    import os

    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    for _ in range(3):
        atomic_write(tmp_path / "x", "data")
    assert len(set(seen)) == 3 and all(name.startswith(TEMP_PREFIX + "x.") for name in seen)


def test_run_cli_turns_user_errors_and_ctrl_c_into_exit_codes(capsys):
    def bad(argv):
        raise UserError("train.lr: got 0.0; must be in (0, 100]")

    def interrupted(argv):
        raise KeyboardInterrupt

    assert run_cli(bad, []) == 2
    assert capsys.readouterr().err == "error: train.lr: got 0.0; must be in (0, 100]\n"
    assert run_cli(interrupted, []) == 130
    assert run_cli(lambda argv: 0, []) == 0

    def sigterm(argv):
        raise Interrupted(signal.SIGTERM)

    def failed_on_a_strange_path(argv):
        raise RunFailed("cannot write /tmp/a\nb/last.pt: No space left on device")

    capsys.readouterr()
    assert run_cli(sigterm, []) == 143 and capsys.readouterr().err == "interrupted (SIGTERM)\n"
    assert run_cli(failed_on_a_strange_path, []) == 1
    assert capsys.readouterr().err == "error: cannot write /tmp/a\\nb/last.pt: No space left on device\n"
    with pytest.raises(ZeroDivisionError):  # a bug is not a user error: its traceback stays
        run_cli(lambda argv: 1 / 0, [])
