"""TensorBoard event files (train/tb.py): what a run writes, read back as TensorBoard reads it."""
import json
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

import train.engine
import train.tb
from core.errors import RunFailed
from fixtures import read_metrics, run_fit, tiny_config
from train.fit import fit
from train.resume import open_for_resume
from train.rundir import RunDir


def events(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_a_run_writes_its_metrics_text_and_hparams(fmnist_root, tmp_path):
    cfg = tiny_config(fmnist_root, tmp_path, top5=True)  # 256 images / 32: 8 steps per epoch, log_every 2
    run_dir, results = run_fit(cfg, experiment="t", swept={"train.lr": 2.0e-3, "model.depth": [1]})
    rows, acc = read_metrics(run_dir), events(run_dir)
    for key in ("val_loss", "val_acc", "val_top5", "lr", "images_per_s", "train_loss", "train_acc"):
        assert scalars(acc, f"epoch/{key}") == [(8 * r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in rows]
    assert [s for s, _ in scalars(acc, "train/loss")] == [2, 4, 6, 8, 10, 12, 14, 16]
    assert scalars(acc, "train/loss")[3][1] == pytest.approx(rows[0]["train_loss"], rel=1e-6)  # the epoch's sum
    assert scalars(acc, "hparams/best_val_acc") == [(16, pytest.approx(results["best_val_acc"], rel=1e-6))]
    assert scalars(acc, "hparams/final_val_acc") == [(16, pytest.approx(results["final_val_acc"], rel=1e-6))]
    assert {"model/text_summary", "config/text_summary"} <= set(acc.Tags()["tensors"])

    content = acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    assert hparams_metadata.EXPERIMENT_TAG not in content  # TensorBoard unites the runs' own hparams
    hp = hparams_metadata.parse_session_start_info_plugin_data(
        content[hparams_metadata.SESSION_START_INFO_TAG]).hparams
    assert hp["train.lr"].number_value == pytest.approx(2.0e-3)
    assert json.loads(hp["model.depth"].string_value) == [1]  # a list: as its JSON text
    assert (hp["model"].string_value, hp["dataset"].string_value) == ("vit", "fashion_mnist")
    assert (hp["train.batch_size"].number_value, hp["seed"].number_value) == (32, 0)
    assert hparams_metadata.SESSION_END_INFO_TAG in content


def test_off_writes_no_event_files(fmnist_root, tmp_path):
    cfg = tiny_config(fmnist_root, tmp_path, epochs=1)
    cfg.output.tensorboard = False
    run_dir, _ = run_fit(cfg)
    assert not (run_dir / "tb").exists() and not list(run_dir.glob("events.out.tfevents.*"))


@pytest.mark.numeric
def test_a_resumed_run_drops_what_the_crashed_one_wrote_after_its_checkpoint(fmnist_root, tmp_path, monkeypatch):
    """Crash at global step 13 with a checkpoint at 11: steps 12 and 13 are trained (and logged) again."""
    from tensorboard.summary.writer import event_file_writer
    from tensorboard.summary.writer.event_file_writer import AtomicCounter

    # Both event files are made within one second by one process here, so their names differ only in
    # TensorBoard's per-process writer counter, read in name order: from '.9' to '.10' the resumed file would be
    # read first. (A real resume is a later process: its name's timestamp sorts after.) Count from 0 instead.
    monkeypatch.setattr(event_file_writer, "_global_uid", AtomicCounter(0))
    cfg = tiny_config(fmnist_root, tmp_path, epochs=2)
    cfg.output.checkpoint_every_steps = 11
    real, calls = train.engine.train_step, [0]

    def crash_at_13(*args):
        calls[0] += 1
        if calls[0] == 13:
            raise RuntimeError("simulated crash")
        return real(*args)

    monkeypatch.setattr(train.engine, "train_step", crash_at_13)
    run_dir = RunDir(cfg.output.dir, cfg.run_name)
    with pytest.raises(RunFailed):
        fit(cfg, run_dir, progress=False)
    assert [s for s, _ in scalars(events(run_dir.path), "train/loss")] == [2, 4, 6, 8, 10, 12]
    monkeypatch.setattr(train.engine, "train_step", real)
    r = open_for_resume(run_dir.path, [])
    fit(r.cfg, r.run_dir, resume=r.ckpt, progress=False)
    acc = events(run_dir.path)
    assert len(list(run_dir.path.glob("events.out.tfevents.*"))) == 2  # the resumed run's file beside the first
    assert [s for s, _ in scalars(acc, "train/loss")] == [2, 4, 6, 8, 10, 12, 14, 16]
    assert [s for s, _ in scalars(acc, "epoch/val_acc")] == [8, 16]
    assert [v for _, v in scalars(acc, "epoch/val_acc")] == \
        [pytest.approx(r["val_acc"], rel=1e-6) for r in read_metrics(run_dir.path)]


def test_without_the_package_a_run_warns_once_and_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    monkeypatch.setattr(train.tb, "_warned", False)
    boards = [train.tb.open_board(True, tmp_path) for _ in range(2)]
    assert all(b.writer is None for b in boards)
    boards[0].epoch({"val_acc": 1.0}, 1)  # writes nothing, raises nothing
    err = capsys.readouterr().err
    assert err.count("warning: no TensorBoard event files") == 1 and "output.tensorboard: false" in err
    assert not (tmp_path / "tb").exists() and not list(tmp_path.glob("events.out.tfevents.*"))


def test_tensorboard_lists_each_run_under_its_own_name(fmnist_root, tmp_path):
    """Issue 24: with the event files in RUN_DIR/tb, ``tensorboard --logdir runs/`` listed every run as
    ``<run>/tb``. Read back as TensorBoard's multiplexer reads a logdir: one run per run directory, named so."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    run_dir, _ = run_fit(tiny_config(fmnist_root, tmp_path / "runs", epochs=1))
    board = EventMultiplexer(size_guidance={"scalars": 0})
    board.AddRunsFromDirectory(str(tmp_path / "runs"))  # what tensorboard --logdir runs/ does
    board.Reload()
    assert list(board.Runs()) == [run_dir.name]
    assert "epoch/val_acc" in board.Runs()[run_dir.name]["scalars"]


def test_a_run_from_before_keeps_its_tb_folder_when_resumed(tmp_path):
    """A run that wrote RUN_DIR/tb before this layout appends there on --resume: its curves stay one run."""
    (tmp_path / "tb").mkdir()
    board = train.tb.open_board(True, tmp_path, purge_step=5)
    board.epoch({"val_acc": 50.0}, 8)
    board.close()
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1
    assert not list(tmp_path.glob("events.out.tfevents.*"))
