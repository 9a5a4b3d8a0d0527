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


def test_logging_quiet_hides_only_the_summary_and_is_undone_after(capsys):
    from core.log import SUMMARY, get_logger, quiet

    log = get_logger("test")
    with quiet():
        log.log(SUMMARY, "table")
        log.info("epoch line")
    log.log(SUMMARY, "table again")
    assert capsys.readouterr().out == "epoch line\ntable again\n"


def test_logging_to_a_runs_file_holds_early_lines_and_shows_early_warnings(tmp_path, capsys):
    """A worker's train.log: lines before its directory exists are written first, after the header; warnings
    before then also reach stderr (the launcher shows them); the console is back afterwards."""
    from core.log import get_logger, only_rank0, to_file

    log = get_logger("test")
    with to_file("train.log") as f:
        log.info("loading")
        log.warning("warning: early")
        assert f.open(tmp_path, header="=== header") == tmp_path / "train.log"
        log.info("epoch 1")
        log.warning("warning: late")
        with only_rank0(False):
            log.info("rank 1 says this")
    log.info("back on the console")
    assert (tmp_path / "train.log").read_text() == "=== header\nloading\nwarning: early\nepoch 1\nwarning: late\n"
    out, err = capsys.readouterr()
    assert out == "back on the console\n" and err == "warning: early\n"
