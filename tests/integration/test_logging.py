"""Logging outputs of real runs: TensorBoard events, metrics.jsonl, info.log, progress bars."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import events, read_metrics, run_dir, tiny_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
from data_loader.data_loaders import DigitsDataLoader

pytestmark = pytest.mark.usefixtures("restore_logging")  # train.main reconfigures the root logger


# metrics.jsonl key -> (event directory, TensorBoard tag) on the epoch axis: train/ and valid/ share the tags
EPOCH_TAGS = {"loss": ("train", "loss"), "accuracy": ("train", "accuracy"), "top_k_acc": ("train", "top_k_acc"),
              "val_loss": ("valid", "loss"), "val_accuracy": ("valid", "accuracy"),
              "val_top_k_acc": ("valid", "top_k_acc"), "lr": ("train", "lr"),
              "samples_per_sec": ("train", "samples_per_sec")}
RECORD_KEYS = {"epoch", "loss", "accuracy", "top_k_acc", "val_loss", "val_accuracy", "val_top_k_acc", "lr",
               "epoch_time", "samples_per_sec"}


def train_run(save_dir: Path, run_id: str, *overrides: str, **trainer) -> Path:
    """Train tiny_config(save_dir, **trainer) in-process as run_id; return the run's log directory."""
    config = save_dir / f"{run_id}.json"
    save_dir.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(tiny_config(save_dir / "saved", **trainer)))
    train.main(["-c", str(config), "--run-id", run_id, "-d", "cpu", *overrides])
    return run_dir(save_dir / "saved", run_id)[1]


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
    boards = {phase: events(run3 / phase) for phase in ("train", "valid")}
    run = events(run3)  # the run's own directory: final/<key> for the HParams dashboard
    logged = read_metrics(run3)
    assert [r["epoch"] for r in logged] == [1, 2, 3]
    for key, (phase, tag) in EPOCH_TAGS.items():
        assert tag in boards[phase].Tags()["scalars"], f"{phase}/{tag} missing"
        for scalars in (boards[phase].Scalars(tag), run.Scalars(f"final/{key}")):
            assert [e.step for e in scalars] == [1, 2, 3], tag
            assert [e.value for e in scalars] == pytest.approx([r[key] for r in logged], rel=1e-6), tag
    best = [min(r["val_loss"] for r in logged[:n]) for n in (1, 2, 3)]  # monitor: min val_loss
    assert [e.value for e in run.Scalars("best/val_loss")] == pytest.approx(best, rel=1e-6)


def test_train_step_loss_every_log_step(run3):
    nb = batches_per_epoch(tiny_config(Path("unused")))
    assert nb > 2  # the expected steps below need more than one log_step per epoch
    assert steps(events(run3 / "train"), "loss_step") == list(range(2, 3 * nb + 1, 2))


def test_images_and_histograms_off_by_default(run3):
    for directory in (run3, run3 / "train", run3 / "valid"):
        tags = events(directory).Tags()
        assert tags["images"] == [] and tags["histograms"] == []


@pytest.mark.slow
def test_images_and_histograms_when_enabled(tmp_path):
    log_dir = train_run(tmp_path, "media", epochs=2, log_images=True, log_histograms=True)
    train_board, acc = events(log_dir / "train"), events(log_dir)
    assert train_board.Tags()["images"] == ["input"]
    assert [e.step for e in train_board.Images("input")] == [1, 2]
    histograms = acc.Tags()["histograms"]
    assert histograms and all(tag.endswith((".weight", ".bias")) for tag in histograms)
    assert [e.step for e in acc.Histograms(histograms[0])] == [1, 2]


@pytest.mark.slow
def test_tensorboard_false_writes_no_events(tmp_path):
    log_dir = train_run(tmp_path, "notb", epochs=1, tensorboard=False)
    assert (log_dir / "metrics.jsonl").is_file()
    assert not list(log_dir.rglob("*tfevents*"))


# ---------------------------------------------------------------- resume continues the same stream

@pytest.mark.slow
def test_resume_continues_tensorboard_and_metrics(tmp_path):
    log_dir = train_run(tmp_path, "res", epochs=2, log_step=2)
    checkpoint_dir = run_dir(tmp_path / "saved", "res")[0]
    train.main(["-r", str(checkpoint_dir), "-d", "cpu", "trainer.epochs=4"])
    assert [r["epoch"] for r in read_metrics(log_dir)] == [1, 2, 3, 4]
    acc = events(log_dir / "train")
    assert steps(acc, "loss") == [1, 2, 3, 4]
    assert steps(events(log_dir / "valid"), "loss") == [1, 2, 3, 4]
    assert steps(events(log_dir), "final/val_loss") == [1, 2, 3, 4]
    nb = batches_per_epoch(tiny_config(Path("unused")))
    assert steps(acc, "loss_step") == list(range(2, 4 * nb + 1, 2))


@pytest.mark.slow
def test_resume_from_earlier_checkpoint_truncates(tmp_path):
    log_dir = train_run(tmp_path, "early", epochs=3, log_step=2)
    before = read_metrics(log_dir)
    checkpoint = run_dir(tmp_path / "saved", "early")[0] / "checkpoint-epoch1.pth"
    train.main(["-r", str(checkpoint), "-d", "cpu", "trainer.epochs=2"])
    after = read_metrics(log_dir)
    assert [r["epoch"] for r in after] == [1, 2]  # epoch 3 of the first run is gone
    assert after[0] == before[0]
    acc = events(log_dir / "train")
    # the TensorBoard stream is cut the same way: each step once, none past the resumed run's end
    assert steps(acc, "loss") == [1, 2]
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx([r["loss"] for r in after], rel=1e-6)
    assert steps(events(log_dir / "valid"), "loss") == [1, 2]
    nb = batches_per_epoch(tiny_config(Path("unused")))
    assert steps(acc, "loss_step") == list(range(2, 2 * nb + 1, 2))


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


@pytest.mark.slow
def test_verbosity_0_shows_no_progress_bar(tmp_path, capfd):
    train_run(tmp_path, "quiet", epochs=1, verbosity=0)
    err = capfd.readouterr().err
    assert "Epoch 1" not in err and "%|" not in err


@pytest.mark.slow
def test_verbosity_1_shows_progress_bar(tmp_path, capfd):
    train_run(tmp_path, "bar", epochs=1, verbosity=1)
    err = capfd.readouterr().err
    assert "Epoch 1" in err and "%|" in err


@pytest.mark.slow
def test_verbosity_filters_the_console_but_info_log_keeps_the_run_record(tmp_path, capfd):
    log_dir = train_run(tmp_path, "silent", epochs=1, verbosity=0)
    out, err = capfd.readouterr()
    assert "val_loss" not in out + err  # nothing at info level on the console
    assert "val_loss" in (log_dir / "info.log").read_text()


@pytest.mark.slow
def test_a_second_run_in_one_process_does_not_write_into_the_first_runs_log(tmp_path):
    first = train_run(tmp_path, "first", epochs=1, verbosity=1)
    size = (first / "info.log").stat().st_size
    second = train_run(tmp_path, "second", "n_gpu=4", epochs=1, verbosity=1)  # warns before its log exists
    assert (first / "info.log").stat().st_size == size
    assert "Run directory" in (second / "info.log").read_text()
