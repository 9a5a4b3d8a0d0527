"""What the console says while runs train: the epoch's bar, the ETAs, --quiet."""
import re

import pytest

import launch.run
from config.sweep import Point
from core.text import eta, format_duration
from fixtures import call_main, log_lines, read_metrics, tiny_config, tiny_raw, write_yaml
from launch.plan import Job, Outcome
from launch.run import Sequential
from train.fit import fit
from train.rundir import RunDir

ETA = re.compile(r"  ETA (\d+s|\d+m\d\ds|\d+h\d\dm)$")


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (41.6, "42s"), (192, "3m12s"), (3600, "1h00m"),
                                           (7530, "2h05m"), (-3, "0s")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_eta_is_the_mean_time_times_what_is_left():
    assert eta([10.0, 20.0], 3) == 45.0
    assert eta([10.0], 0) is None and eta([], 2) is None


def test_a_short_epochs_bar_stays_with_its_readout_and_the_epoch_line_has_the_runs_eta(
        fmnist_root, tmp_path, capsys):
    """8 steps an epoch, log_every 100: the readout comes from the epoch's last step."""
    cfg = tiny_config(fmnist_root, tmp_path, log_every=100)
    with log_lines() as lines:
        fit(cfg, RunDir(cfg.output.dir, cfg.run_name), progress=True)
    err = capsys.readouterr().err
    for n in (1, 2):  # each epoch's bar, finished and left on screen
        assert re.search(rf"epoch {n}/2: 100%\|.*\| 8/8 .*loss=\d\.\d{{4}}, acc=\d+\.\d\d, lr=.*, img/s=\d+\]\n", err)
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 2
    assert ETA.search(epochs[0]) and "ETA" not in epochs[1]  # nothing left after the last epoch


def test_a_sequential_sweep_says_how_many_runs_are_done_and_its_eta(fmnist_root, tmp_path, monkeypatch):
    cfg = tiny_config(fmnist_root, tmp_path)
    points = [Point(f"t-seed={i}", {"seed": i}, cfg, "x.yaml", "t") for i in range(3)]
    jobs = [Job(i, p, RunDir(tmp_path, p.name), cfg) for i, p in enumerate(points)]
    monkeypatch.setattr(launch.run, "run_one", lambda job, **kw: Outcome(job.point, "completed"))
    with log_lines() as lines:
        Sequential().run(jobs, 3)
    done = [line for line in lines if " runs done" in line]
    assert [d.split(",")[0] for d in done] == ["1 of 3 runs done", "2 of 3 runs done"]
    assert re.fullmatch(r"2 of 3 runs done, ETA \d+s for the other 1", done[1])


def test_quiet_keeps_the_model_table_off_the_console_only(fmnist_root, tmp_path, capsys):
    cfg = write_yaml(tmp_path / "t.yaml", tiny_raw(fmnist_root, tmp_path / "runs"))
    p = call_main(capsys, "--cfg", cfg, "--quiet")
    assert p.returncode == 0, p.stderr
    run_dir = next((tmp_path / "runs").iterdir())
    table = (run_dir / "summary.txt").read_text()
    assert "Total params" in table and "Total params" not in p.stdout
    first = next(line for line in p.stdout.splitlines() if line.startswith("epoch 1/2"))
    assert ETA.search(first)  # not a terminal: one plain line per epoch, with the run's ETA
    assert len(read_metrics(run_dir)) == 2 and any(run_dir.glob("events.out.tfevents.*"))
