"""Logging outputs of real runs: TensorBoard events, metrics.jsonl, info.log, progress bars, writers."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
from conftest import read_metrics, run_dir, tiny_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
from data_loader.data_loaders import DigitsDataLoader
from logger import MetricsFile, NullWriter, TensorboardWriter, make_writer, setup_logging

# metrics.jsonl key -> TensorBoard tag on the epoch axis
EPOCH_TAGS = {"loss": "loss/train", "accuracy": "accuracy/train", "top_k_acc": "top_k_acc/train",
              "val_loss": "loss/valid", "val_accuracy": "accuracy/valid", "val_top_k_acc": "top_k_acc/valid",
              "lr": "lr", "samples_per_sec": "samples_per_sec/train"}
RECORD_KEYS = {"epoch", "loss", "accuracy", "top_k_acc", "val_loss", "val_accuracy", "val_top_k_acc", "lr",
               "epoch_time", "samples_per_sec"}


@pytest.fixture(scope="module", autouse=True)
def restore_logging():
    """train.main reconfigures the root logger; give the other test modules theirs back."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        if handler not in saved:
            handler.close()
    for handler in saved:
        root.addHandler(handler)
    root.setLevel(level)


def train_run(save_dir: Path, run_id: str, *overrides: str, **trainer) -> Path:
    """Train tiny_config(save_dir, **trainer) in-process as run_id; return the run's log directory."""
    config = save_dir / f"{run_id}.json"
    save_dir.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(tiny_config(save_dir / "saved", **trainer)))
    train.main(["-c", str(config), "--run-id", run_id, "-d", "cpu", *overrides])
    return run_dir(save_dir / "saved", run_id)[1]




def events(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    acc.Reload()
    return acc


def steps(acc: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


def batches_per_epoch(config: dict) -> int:
    args = config["data_loader"]["args"]
    n_train = DigitsDataLoader(batch_size=args["batch_size"], validation_split=args["validation_split"]).n_samples
    return math.ceil(n_train / args["batch_size"])


@pytest.fixture(scope="module")
def run3(tmp_path_factory) -> Path:
    """Log directory of a 3-epoch run with log_step=2 and verbosity 1 (images and histograms off)."""
    return train_run(tmp_path_factory.mktemp("run3"), "run3", epochs=3, log_step=2, verbosity=1)


# ---------------------------------------------------------------- TensorBoard from real runs

def test_epoch_scalars_match_metrics_jsonl(run3):
    acc = events(run3)
    logged = read_metrics(run3)
    assert [r["epoch"] for r in logged] == [1, 2, 3]
    for key, tag in EPOCH_TAGS.items():
        assert tag in acc.Tags()["scalars"], f"{tag} missing"
        scalars = acc.Scalars(tag)
        assert [e.step for e in scalars] == [1, 2, 3], tag
        assert [e.value for e in scalars] == pytest.approx([r[key] for r in logged], rel=1e-6), tag


def test_train_step_loss_every_log_step(run3):
    nb = batches_per_epoch(tiny_config(Path("unused")))
    assert nb > 2  # the expected steps below need more than one log_step per epoch
    assert steps(events(run3), "loss/train_step") == list(range(2, 3 * nb + 1, 2))


def test_images_and_histograms_off_by_default(run3):
    tags = events(run3).Tags()
    assert tags["images"] == [] and tags["histograms"] == []


def test_images_and_histograms_when_enabled(tmp_path):
    log_dir = train_run(tmp_path, "media", epochs=2, log_images=True, log_histograms=True)
    acc = events(log_dir)
    assert acc.Tags()["images"] == ["input/train"]
    assert [e.step for e in acc.Images("input/train")] == [1, 2]
    histograms = acc.Tags()["histograms"]
    assert histograms and all(tag.endswith((".weight", ".bias")) for tag in histograms)
    assert [e.step for e in acc.Histograms(histograms[0])] == [1, 2]


def test_tensorboard_false_writes_no_events(tmp_path):
    log_dir = train_run(tmp_path, "notb", epochs=1, tensorboard=False)
    assert (log_dir / "metrics.jsonl").is_file()
    assert not list(log_dir.glob("*tfevents*"))


# ---------------------------------------------------------------- resume continues the same stream

def test_resume_continues_tensorboard_and_metrics(tmp_path):
    log_dir = train_run(tmp_path, "res", epochs=2, log_step=2)
    checkpoint_dir = run_dir(tmp_path / "saved", "res")[0]
    train.main(["-r", str(checkpoint_dir), "-d", "cpu", "trainer.epochs=4"])
    assert [r["epoch"] for r in read_metrics(log_dir)] == [1, 2, 3, 4]
    acc = events(log_dir)
    assert steps(acc, "loss/train") == [1, 2, 3, 4]
    assert steps(acc, "loss/valid") == [1, 2, 3, 4]
    nb = batches_per_epoch(tiny_config(Path("unused")))
    assert steps(acc, "loss/train_step") == list(range(2, 4 * nb + 1, 2))


def test_resume_from_earlier_checkpoint_truncates(tmp_path):
    log_dir = train_run(tmp_path, "early", epochs=3, log_step=2)
    before = read_metrics(log_dir)
    checkpoint = run_dir(tmp_path / "saved", "early")[0] / "checkpoint-epoch1.pth"
    train.main(["-r", str(checkpoint), "-d", "cpu", "trainer.epochs=2"])
    after = read_metrics(log_dir)
    assert [r["epoch"] for r in after] == [1, 2]  # epoch 3 of the first run is gone
    assert after[0] == before[0]
    acc = events(log_dir)
    # the TensorBoard stream is cut the same way: each step once, none past the resumed run's end
    assert steps(acc, "loss/train") == [1, 2]
    assert [e.value for e in acc.Scalars("loss/train")] == pytest.approx([r["loss"] for r in after], rel=1e-6)
    nb = batches_per_epoch(tiny_config(Path("unused")))
    assert steps(acc, "loss/train_step") == list(range(2, 2 * nb + 1, 2))


# ---------------------------------------------------------------- metrics.jsonl and info.log

def test_metrics_jsonl_one_record_per_epoch(run3):
    lines = (run3 / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    for epoch, line in enumerate(lines, 1):
        record = json.loads(line)
        assert set(record) == RECORD_KEYS
        assert record["epoch"] == epoch
        assert all(isinstance(record[k], (int, float)) for k in RECORD_KEYS)
        assert record["epoch_time"] > 0 and record["samples_per_sec"] > 0


def test_info_log_has_epoch_summaries(run3):
    text = (run3 / "info.log").read_text()
    assert sum("val_loss" in line for line in text.splitlines()) == 3
    assert " - INFO - " in text  # the file's datetime format


def test_verbosity_0_shows_no_progress_bar(tmp_path, capfd):
    train_run(tmp_path, "quiet", epochs=1, verbosity=0)
    err = capfd.readouterr().err
    assert "Epoch 1" not in err and "%|" not in err


def test_verbosity_1_shows_progress_bar(tmp_path, capfd):
    train_run(tmp_path, "bar", epochs=1, verbosity=1)
    err = capfd.readouterr().err
    assert "Epoch 1" in err and "%|" in err


# ---------------------------------------------------------------- writers

def public_methods(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_") and callable(getattr(cls, name))}


def test_null_writer_has_the_tensorboard_writers_methods():
    assert public_methods(NullWriter) == public_methods(TensorboardWriter)
    # each one overridden: a method left to the NullWriter base would drop data silently
    assert all(name in vars(TensorboardWriter) for name in public_methods(NullWriter))


def test_make_writer_null_when_disabled_or_no_dir(tmp_path):
    assert type(make_writer(None, True)) is NullWriter
    assert type(make_writer(tmp_path, False)) is NullWriter
    assert list(tmp_path.iterdir()) == []
    writer = make_writer(tmp_path, True)
    writer.close()
    assert type(writer) is TensorboardWriter


def test_tensorboard_writer_scalar_reads_back(tmp_path):
    writer = TensorboardWriter(tmp_path)
    writer.add_scalar("x/train", 1.5, 3)
    writer.close()
    assert [(e.step, e.value) for e in events(tmp_path).Scalars("x/train")] == [(3, 1.5)]


def test_tensorboard_writer_supersedes_later_steps_of_earlier_files(tmp_path):
    first = TensorboardWriter(tmp_path)
    for step in (1, 2, 3):
        first.add_scalar("epoch_axis", step, step)
        first.add_scalar("step_axis", step, 10 * step)
    first.add_scalar("untouched", 7.0, 5)
    first.close()
    second = TensorboardWriter(tmp_path)  # a resume from epoch 1: per tag, its first step supersedes the rest
    second.add_scalar("epoch_axis", 20.0, 2)
    second.add_scalar("step_axis", 200.0, 20)
    second.flush()
    acc = events(tmp_path)
    assert [(e.step, e.value) for e in acc.Scalars("epoch_axis")] == [(1, 1.0), (2, 20.0)]
    assert [(e.step, e.value) for e in acc.Scalars("step_axis")] == [(10, 1.0), (20, 200.0)]
    assert [(e.step, e.value) for e in acc.Scalars("untouched")] == [(5, 7.0)]
    second.add_scalar("epoch_axis", 30.0, 3)
    second.close()
    assert [(e.step, e.value) for e in events(tmp_path).Scalars("epoch_axis")] == [(1, 1.0), (2, 20.0), (3, 30.0)]


# ---------------------------------------------------------------- setup_logging

def file_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]


def test_setup_logging_without_dir_is_console_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    setup_logging(None)
    logging.getLogger("test_logging").warning("console only")
    assert file_handlers() == []
    assert [type(h) for h in logging.getLogger().handlers] == [logging.StreamHandler]
    assert not list(tmp_path.rglob("info.log"))


def test_setup_logging_twice_does_not_leak_handlers(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    logger = logging.getLogger("test_logging")
    setup_logging(first)
    logger.warning("line of the first run")
    setup_logging(second)
    logger.warning("line of the second run")
    assert [h.baseFilename for h in file_handlers()] == [str(second / "info.log")]
    first_text, second_text = (first / "info.log").read_text(), (second / "info.log").read_text()
    assert "line of the first run" in first_text and "second run" not in first_text
    assert "line of the second run" in second_text and "first run" not in second_text


# ---------------------------------------------------------------- MetricsFile

def test_metrics_file_append_and_truncate_after(tmp_path):
    metrics = MetricsFile(tmp_path / "metrics.jsonl")
    metrics.truncate_after(1)  # no file yet: nothing to do
    for epoch in (1, 2, 3):
        metrics.append({"epoch": epoch, "loss": 1.0 / epoch})
    assert [json.loads(line) for line in metrics.path.read_text().splitlines()] == [
        {"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}, {"epoch": 3, "loss": 1 / 3}]
    metrics.truncate_after(3)
    assert len(metrics.path.read_text().splitlines()) == 3
    metrics.truncate_after(1)
    metrics.append({"epoch": 2, "loss": 0.25})
    assert [json.loads(line)["epoch"] for line in metrics.path.read_text().splitlines()] == [1, 2]
    assert not list(tmp_path.glob("*.tmp"))


def test_metrics_file_truncate_drops_a_half_written_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "loss": 1.0}\n{"epoch": 2, "lo')  # a crash while appending epoch 2
    metrics = MetricsFile(path)
    metrics.truncate_after(1)
    metrics.append({"epoch": 2, "loss": 0.5})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}]


def test_metrics_file_none_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metrics = MetricsFile(None)
    metrics.append({"epoch": 1})
    metrics.truncate_after(0)
    assert list(tmp_path.iterdir()) == []


def test_verbosity_filters_the_console_but_info_log_keeps_the_run_record(tmp_path, capfd):
    log_dir = train_run(tmp_path, "silent", epochs=1, verbosity=0)
    out, err = capfd.readouterr()
    assert "val_loss" not in out + err  # nothing at info level on the console
    assert "val_loss" in (log_dir / "info.log").read_text()


def test_a_second_run_in_one_process_does_not_write_into_the_first_runs_log(tmp_path):
    first = train_run(tmp_path, "first", epochs=1, verbosity=1)
    size = (first / "info.log").stat().st_size
    second = train_run(tmp_path, "second", "n_gpu=4", epochs=1, verbosity=1)  # warns before its log exists
    assert (first / "info.log").stat().st_size == size
    assert "Run directory" in (second / "info.log").read_text()
