"""What train.py checks at its start, before anything is written (issue 26): every metric and the loss against the
first batch's output, the test split's paths, the channel hint naming the model's own argument; and a run that
fails at its start leaves no run directory. Each mistake is one line and exit status 2, in-process on tiny data."""
from __future__ import annotations

import json

import pytest

import train
from conftest import run_dir, tiny_config, write
from fake_data import write_image_folder
from trainer.trainer import Trainer
from utils.errors import UserError
from utils.errors import run_cli as run_main

pytestmark = pytest.mark.usefixtures("restore_logging")  # train.main sets up logging

LOGITS_CNN = {"type": "CNN", "args": {"input": 1, "blocks": "cnf4 m", "num_classes": 10}}  # no log_softmax


def start(tmp_path, capsys, config: dict, *extra: str) -> tuple[int, list[str], str]:
    """(exit status, stderr lines, stdout) of train.py on config, run in tmp_path."""
    status = run_main(train.main, ["-c", str(write(tmp_path, config)), "--run-id", "r", *extra])
    out = capsys.readouterr()
    return status, out.err.strip().splitlines(), out.out


def image_config(tmp_path, **args) -> dict:
    """The tiny config on a folder of 12x12 RGB images of 3 classes (a CNN of 3 input channels, no test split)."""
    write_image_folder(tmp_path / "train", {"a": 6, "b": 5, "c": 5})
    config = tiny_config(tmp_path / "saved")
    config["arch"] = {"type": "CNN", "args": {"input": 3, "blocks": "cnf4 m", "num_classes": 3}}
    config["loss"], config["metrics"] = "cross_entropy", ["accuracy"]
    config["data_loader"] = {"type": "ImageFolderDataLoader",
                             "args": {"data_dir": str(tmp_path / "train"), "batch_size": 8, "validation_split": 0.25,
                                      **args}}
    return config


@pytest.mark.parametrize("extra", [["--dry-run"], [], ["--fast-dev-run"]], ids=["dry-run", "train", "fast-dev-run"])
def test_a_torchmetrics_metric_for_other_classes_is_one_line_before_anything_is_written(tmp_path, capsys, extra):
    config = tiny_config(tmp_path / "saved")
    config["metrics"].append({"type": "MulticlassAccuracy", "args": {"num_classes": 3}})
    status, err, _ = start(tmp_path, capsys, config, *extra)
    assert status == 2 and err == ["error: metrics.2 (MulticlassAccuracy) counts 3 classes but arch DigitsModel gives "
                                   "10 class scores; set metrics.2.args.num_classes to 10"]
    assert not (tmp_path / "saved").exists()


@pytest.mark.parametrize("extra", [["--dry-run"], ["--fast-dev-run"]], ids=["dry-run", "fast-dev-run"])
def test_nll_loss_on_a_model_that_returns_logits_is_an_error_naming_the_fix(tmp_path, capsys, extra):
    config = tiny_config(tmp_path / "saved")
    config["arch"] = LOGITS_CNN  # config.json's loss is nll_loss
    status, err, _ = start(tmp_path, capsys, config, *extra)
    assert status == 2 and len(err) == 1
    assert err[0].startswith("error: loss nll_loss takes log-probabilities, but arch CNN's outputs on the first batch "
                             "are scores with positive values")
    assert err[0].endswith("use \"loss\": \"cross_entropy\" (it takes logits), or end the model with log_softmax")
    config["loss"] = "cross_entropy"
    assert start(tmp_path, capsys, config, "--dry-run")[0] == 0


def test_cross_entropy_on_probabilities_warns_with_the_fix(tmp_path, capsys, monkeypatch):
    from model.model import DigitsModel

    monkeypatch.setattr(DigitsModel, "forward", lambda self, x: self.head(self.features(x)).softmax(dim=1))
    config = tiny_config(tmp_path / "saved")
    config["loss"] = "cross_entropy"
    status, err, out = start(tmp_path, capsys, config, "--dry-run")
    assert status == 0, err
    assert "loss cross_entropy takes logits and applies log_softmax itself, but arch DigitsModel's outputs on the " \
           "first batch are probabilities (each row sums to 1)" in out and "remove the model's final softmax" in out


def test_a_missing_test_split_path_is_found_at_the_start_not_by_test_py(tmp_path, capsys):
    config = image_config(tmp_path, test_dir=str(tmp_path / "tset"))
    for extra in (["--dry-run"], []):
        status, err, _ = start(tmp_path, capsys, config, *extra)
        assert status == 2 and err == [f"error: data_loader.args.test_dir: no file or folder {tmp_path / 'tset'} "
                                       "(relative paths are from the working directory); test.py evaluates the run "
                                       "on it: fix the path, or leave test_dir out (or null) for a run without a test "
                                       "split"]
    assert not (tmp_path / "saved").exists()
    del config["data_loader"]["args"]["test_dir"]  # no test split at all: fine
    assert start(tmp_path, capsys, config, "--dry-run")[0] == 0


def test_the_channel_hint_names_the_torchvision_models_in_channels(tmp_path, capsys):
    config = image_config(tmp_path)
    config["arch"] = {"type": "resnet18", "args": {"in_channels": 1, "num_classes": 3}}
    status, err, _ = start(tmp_path, capsys, config, "--dry-run")
    assert status == 2 and len(err) == 1
    assert err[0].endswith("give the data 1 channels (data_loader.args.mode=\"L\" for image files) or the model 3 "
                           "input channels (arch.args.in_channels=3)")


# ---- a failed start leaves no run directory; a later failure keeps every file


def _failing_at(step: int, monkeypatch) -> list[int]:
    """Make the training step (not the first-batch check, which runs in eval mode) raise a UserError at step."""
    calls = []
    original = Trainer.train_step

    def train_step(self, data, target):
        if self.model.training:
            calls.append(1)
            if len(calls) == step:
                raise UserError(f"failing at step {step}")
        return original(self, data, target)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    return calls


def test_a_run_that_fails_at_its_first_step_leaves_no_run_directory(tmp_path, capsys, monkeypatch):
    _failing_at(1, monkeypatch)
    status, err, _ = start(tmp_path, capsys, tiny_config(tmp_path / "saved"))
    assert status == 2 and err == ["error: failing at step 1"]
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "r")
    assert not ckpt_dir.exists() and not log_dir.exists()


def test_a_resume_auto_start_that_fails_at_once_leaves_no_directory_and_keeps_an_earlier_starts(tmp_path, capsys,
                                                                                                  monkeypatch):
    _failing_at(1, monkeypatch)
    config = tiny_config(tmp_path / "saved")
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "r")
    status, err, _ = start(tmp_path, capsys, config, "--resume", "auto")
    assert status == 2 and err == ["error: failing at step 1"]
    assert not ckpt_dir.exists() and not log_dir.exists()  # the first start: nothing of it stays
    log_dir.mkdir(parents=True)  # an earlier start that wrote no checkpoint (killed before its first one)
    ckpt_dir.mkdir(parents=True)
    (log_dir / "info.log").write_text("the earlier start's log\n")
    _failing_at(1, monkeypatch)  # this start's first step
    status, err, _ = start(tmp_path, capsys, config, "--resume", "auto")
    assert status == 2 and err == ["error: failing at step 1"]
    assert (log_dir / "info.log").read_text().startswith("the earlier start's log\n")
    assert (ckpt_dir / "config.json").is_file()


@pytest.mark.parametrize("step", [3, 13], ids=["third-step", "after-a-checkpoint"])
def test_a_run_that_fails_later_keeps_every_file(tmp_path, capsys, monkeypatch, step):
    _failing_at(step, monkeypatch)  # the tiny config has 10 training batches an epoch, and saves every epoch
    status, err, _ = start(tmp_path, capsys, tiny_config(tmp_path / "saved"))
    assert status == 2 and err == [f"error: failing at step {step}"]
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "r")
    assert (ckpt_dir / "config.json").is_file() and (log_dir / "info.log").is_file()
    saved = [] if step == 3 else ["checkpoint-epoch1.pth", "model_best.pth"]
    assert sorted(p.name for p in ckpt_dir.glob("*.pth")) == saved
    json.loads((ckpt_dir / "config.json").read_text())


# ---- unreadable training files: found at the start, all at once, or skipped and counted


def test_unreadable_training_files_are_found_at_the_start_or_skipped_and_counted_in_the_log(tmp_path, capsys):
    import io

    from PIL import Image

    config = image_config(tmp_path)
    images = {}
    for image_format in ("PNG", "JPEG"):
        buffer = io.BytesIO()
        Image.effect_noise((24, 24), 64).convert("RGB").save(buffer, format=image_format)
        images[image_format] = buffer.getvalue()
    broken = {"a/empty.png": b"", "a/cut.png": images["PNG"][:-30], "b/cut.jpg": images["JPEG"][:-30],
              "c/notes.jpg": b"a text file"}
    for name, data in broken.items():
        (tmp_path / "train" / name).write_bytes(data)
    status, err, _ = start(tmp_path, capsys, config)
    assert status == 2 and err == [f"error: data_loader.args.data_dir: 4 of the 20 image files cannot be read: "
                                   "a/cut.png (truncated: no PNG end chunk (IEND)), a/empty.png (empty file), "
                                   "b/cut.jpg (truncated: no JPEG end marker), c/notes.jpg (not an image); replace or "
                                   "remove them, or set data_loader.args.skip_unreadable=true to train without them"]
    assert not (tmp_path / "saved").exists()
    config["data_loader"]["args"]["skip_unreadable"] = True
    status, err, _ = start(tmp_path, capsys, config)
    assert status == 0, err
    _, log_dir = run_dir(tmp_path / "saved", "r")
    assert "leaving out 4 of the 20 image files, which cannot be read" in (log_dir / "info.log").read_text()
    assert [row["epoch"] for row in map(json.loads, (log_dir / "metrics.jsonl").read_text().splitlines())] == [1, 2]
