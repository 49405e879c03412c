"""Which checkpoint a command uses and what stays on disk (issue 26): test.py, predict.py and export.py -r RUN_DIR take
model_best.pth (--last: the newest) and say which; the default config keeps only the newest checkpoint and
model_best.pth; resuming a finished run says so and writes nothing. In-process, through utils.errors.run_cli."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import export
import predict
import test as test_script
import train
from conftest import ROOT, read_metrics, run_dir, tiny_config, write
from utils.errors import run_cli

pytestmark = pytest.mark.usefixtures("restore_logging")  # train.main sets up logging


def default_config(tmp: Path, **trainer) -> Path:
    """The tiny config with the shipped checkpoint defaults: no save_period, keep_last or save_top_k."""
    config = tiny_config(tmp / "saved", **trainer)
    del config["trainer"]["save_period"]
    assert not {"keep_last", "save_top_k"} & set(config["trainer"])
    return write(tmp, config)


@pytest.fixture(scope="module")
def best_run(restore_logging, tmp_path_factory) -> Path:
    """The run directory of 3 epochs monitored by 'max lr', which improves only at epoch 1 (StepLR keeps the rate for
    10 epochs): model_best.pth holds epoch 1, older than the newest checkpoint, epoch 3."""
    tmp = tmp_path_factory.mktemp("best_run")
    train.main(["-c", str(default_config(tmp, epochs=3, monitor="max lr")), "--run-id", "b"])
    return run_dir(tmp / "saved", "b")[0]


@pytest.fixture(scope="module")
def unmonitored_run(restore_logging, tmp_path_factory) -> Path:
    """The run directory of 2 epochs with trainer.monitor off: no model_best.pth."""
    tmp = tmp_path_factory.mktemp("unmonitored_run")
    train.main(["-c", str(default_config(tmp, monitor="off")), "--run-id", "u"])
    return run_dir(tmp / "saved", "u")[0]


def test_the_default_config_keeps_the_newest_checkpoint_and_model_best_only(best_run):
    kept = sorted(p.name for p in best_run.iterdir() if p.name not in ("run.json", "run.patch"))  # the manifest
    assert kept == ["checkpoint-epoch3.pth", "config.json", "config_sources.json", "latest", "model_best.pth"]
    assert (best_run / "latest").read_text().strip() == "checkpoint-epoch3.pth"
    assert torch.load(best_run / "model_best.pth", weights_only=True)["epoch"] == 1
    assert "save_period" not in json.loads((ROOT / "config.json").read_text())["trainer"]  # the shipped default


def test_test_py_on_a_run_directory_uses_model_best_and_says_so(best_run, tmp_path, capsys):
    out = tmp_path / "results.json"
    assert run_cli(test_script.main, ["-r", str(best_run), "--out", str(out)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (f"Evaluating {best_run / 'model_best.pth'} (epoch 1: the run's best by max lr (0.002); "
                     f"--last for the newest, checkpoint-epoch3.pth)")
    results = json.loads(out.read_text())
    assert results["checkpoint"] == str(best_run / "model_best.pth") and results["epoch"] == 1


def test_test_py_last_uses_the_newest(best_run, tmp_path, capsys):
    out = tmp_path / "results.json"
    assert run_cli(test_script.main, ["-r", str(best_run), "--last", "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (f"Evaluating {best_run / 'checkpoint-epoch3.pth'} (epoch 3: "
                                                       f"the newest, as --last asks)")
    assert json.loads(out.read_text())["checkpoint"] == str(best_run / "checkpoint-epoch3.pth")


def test_a_run_without_model_best_is_evaluated_at_its_newest_and_says_why(unmonitored_run, tmp_path, capsys):
    out = tmp_path / "results.json"
    assert run_cli(test_script.main, ["-r", str(unmonitored_run), "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"Evaluating {unmonitored_run / 'checkpoint-epoch2.pth'} (epoch 2: the newest; the run has no "
        f"model_best.pth (trainer.monitor was off))")
    assert json.loads(out.read_text())["epoch"] == 2


def test_last_with_a_checkpoint_file_is_an_error(best_run, capsys):
    assert run_cli(test_script.main, ["-r", str(best_run / "model_best.pth"), "--last"]) == 2
    assert "--last picks the newest checkpoint of a run directory" in capsys.readouterr().err


def test_messages_use_the_command_s_own_words(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for main, words in ((test_script.main, "nothing to evaluate"), (train.main, "nothing to resume from")):
        assert run_cli(main, ["-r", str(tmp_path / "empty")]) == 2
        err = capsys.readouterr().err
        assert words in err and (main is train.main or "resume" not in err)
    damaged = tmp_path / "run"
    damaged.mkdir()
    (damaged / "model_best.pth").write_bytes(b"not a checkpoint")
    assert run_cli(test_script.main, ["-r", str(damaged)]) == 2
    err = capsys.readouterr().err
    assert "evaluate the newest checkpoint instead with --last" in err and "resume" not in err


def test_predict_py_on_a_run_directory_uses_model_best_and_last_the_newest(best_run, tmp_path, capsys):
    common = ["--input", "test", "--out", str(tmp_path / "p.csv")]
    assert run_cli(predict.main, ["-r", str(best_run), *common]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith(f"Predicting with {best_run / 'model_best.pth'} "
                                                              f"(epoch 1: the run's best")
    assert run_cli(predict.main, ["-r", str(best_run), "--last", *common]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (f"Predicting with {best_run / 'checkpoint-epoch3.pth'} "
                                                       f"(epoch 3: the newest, as --last asks)")


def test_export_py_on_a_run_directory_uses_model_best(best_run, tmp_path, capsys):
    summary = export.main(["-r", str(best_run), "--format", "pt2", "--out", str(tmp_path / "m.pt2")])
    assert summary["checkpoint"] == str(best_run / "model_best.pth")
    assert capsys.readouterr().out.splitlines()[0].startswith(f"Exporting {best_run / 'model_best.pth'} (epoch 1")


def files_and_times(*directories: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for d in directories for p in sorted(d.rglob("*"))}


def test_resuming_a_finished_run_says_so_exits_0_and_writes_nothing(tmp_path, capsys):
    train.main(["-c", str(default_config(tmp_path)), "--run-id", "f"])
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "f")
    before = files_and_times(ckpt_dir, log_dir)
    capsys.readouterr()
    assert run_cli(train.main, ["-r", str(ckpt_dir)]) == 0
    assert capsys.readouterr().out == (f"Run {ckpt_dir} has finished its 2 epochs; nothing to train. To train "
                                       f"longer: python train.py -r {ckpt_dir} trainer.epochs=4\n")
    assert files_and_times(ckpt_dir, log_dir) == before
    assert run_cli(train.main, ["-r", str(ckpt_dir), "trainer.epochs=1"]) == 2  # below what it trained
    assert capsys.readouterr().err == (f"error: trainer.epochs=1, but run {ckpt_dir} has already trained 2 epochs; "
                                       f"give trainer.epochs above 2 to train longer\n")
    assert files_and_times(ckpt_dir, log_dir) == before
    assert run_cli(train.main, ["-r", str(ckpt_dir), "trainer.epochs=3"]) == 0  # going on as the message says
    assert [r["epoch"] for r in read_metrics(log_dir)] == [1, 2, 3]


def test_resuming_an_early_stopped_run_says_so(tmp_path, capsys):
    # 'max lr' improves only at epoch 1: early_stop 1 ends the run after epoch 2
    train.main(["-c", str(default_config(tmp_path, epochs=5, monitor="max lr", early_stop=1)), "--run-id", "e"])
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "e")
    before = files_and_times(ckpt_dir, log_dir)
    capsys.readouterr()
    assert run_cli(train.main, ["-r", str(ckpt_dir)]) == 0
    assert capsys.readouterr().out == (f"Run {ckpt_dir} stopped early at epoch 2: lr did not improve for 1 epoch "
                                       f"(trainer.early_stop=1); nothing to train. To train longer: python train.py "
                                       f"-r {ckpt_dir} trainer.early_stop=0\n")
    assert files_and_times(ckpt_dir, log_dir) == before
