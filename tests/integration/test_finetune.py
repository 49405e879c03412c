"""Fine-tuning: train.py --init-from (arch.weights) starts a new run from another run's weights; -r continues.
In-process through train.main (utils.errors.run_cli gives the exit status and the error lines the script prints;
train.py's exit status and stderr as a process are test_train_cli.py's)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import train
from conftest import ROOT, read_metrics, run_dir, tiny_config
from utils.errors import run_cli

pytestmark = [pytest.mark.slow,  # every test trains
              pytest.mark.usefixtures("restore_logging")]  # train.main sets up logging


@pytest.fixture(scope="module")
def base_run(restore_logging, tmp_path_factory):
    """A finished run of 2 epochs, the source of the weights."""
    tmp_path = tmp_path_factory.mktemp("base")
    config = tmp_path / "base.json"
    config.write_text(json.dumps(tiny_config(tmp_path / "saved")))
    assert run_cli(train.main, ["-c", str(config), "--run-id", "base"]) == 0
    return run_dir(tmp_path / "saved", "base")[0]


def finetune_config(tmp_path, **changes) -> str:
    config = tiny_config(tmp_path / "saved", epochs=1)
    config["optimizer"]["args"].update(changes)
    path = tmp_path / "finetune.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_init_from_a_run_directory_starts_a_new_run_from_its_best_weights(tmp_path, base_run, capsys):
    assert run_cli(train.main, ["-c", finetune_config(tmp_path, lr=0.0), "--init-from", str(base_run),
                                "--run-id", "tuned", "trainer.verbosity=1"]) == 0
    output = capsys.readouterr()
    assert f"Initial weights from {base_run / 'model_best.pth'}: 18 tensors loaded" in output.out + output.err
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "tuned")
    assert [r["epoch"] for r in read_metrics(log_dir)] == [1]  # epoch 1 of a new run, in a new directory
    tuned = torch.load(ckpt_dir / "checkpoint-epoch1.pth", weights_only=True)
    best = torch.load(base_run / "model_best.pth", weights_only=True)
    steps = tuned["global_step"]
    assert steps == len(read_metrics(log_dir)) * 10 and best["global_step"] == 2 * steps  # 10 batches an epoch
    assert {s["step"].item() for s in tuned["optimizer"]["state"].values()} == {steps}  # a fresh optimizer
    assert json.loads((ckpt_dir / "config.json").read_text())["arch"]["weights"] == str(base_run)
    for name, value in best["state_dict"].items():  # lr 0: the parameters are the source's exactly
        if "running" not in name and "num_batches" not in name:
            assert torch.equal(tuned["state_dict"][name], value), name


def test_a_fine_tuned_run_resumes_without_its_source(tmp_path, base_run):
    source = tmp_path / "source"
    shutil.copytree(base_run, source)
    config = finetune_config(tmp_path)
    assert run_cli(train.main, ["-c", config, "--init-from", str(source), "--run-id", "tuned"]) == 0
    shutil.rmtree(source)
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "tuned")
    # resumed from the checkpoint's weights, not the source's
    assert run_cli(train.main, ["-r", str(ckpt_dir), "trainer.epochs=2"]) == 0
    assert [r["epoch"] for r in read_metrics(log_dir)] == [1, 2]


def test_init_from_mistakes_are_one_error_line(tmp_path, base_run, capsys):
    assert run_cli(train.main, ["-r", str(base_run), "--init-from", str(base_run)]) == 2
    assert capsys.readouterr().err == \
        "error: --init-from starts a new run from weights; -r continues a run: give one of them\n"
    assert run_cli(train.main, ["-c", finetune_config(tmp_path), "--init-from", str(tmp_path / "nope.pth")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith(f"error: arch.weights: {tmp_path / 'nope.pth'} is not a file or a directory")
    assert not (tmp_path / "saved").exists()  # nothing was written


def test_the_shipped_finetune_config_keeps_the_frozen_features_as_loaded_then_trains_them(tmp_path, base_run,
                                                                                          capsys):
    """configs/finetune_digits.json from a run of config.json: features frozen in epoch 1 (bit-identical to the
    source, BatchNorm statistics included), a fresh last layer, everything trained from epoch 2."""
    assert run_cli(train.main, ["-c", str(ROOT / "configs" / "finetune_digits.json"), "--init-from", str(base_run),
                                f"trainer.save_dir={tmp_path / 'saved'}", "trainer.epochs=2",
                                "trainer.unfreeze_at_epoch=2", "trainer.save_period=1", "trainer.verbosity=1",
                                "+arch.args.channels=4", "--run-id", "tuned"]) == 0
    out = capsys.readouterr().out
    assert f"Initial weights from {base_run / 'model_best.pth'}: 16 tensors loaded\n" in out
    assert "unexpected    2 (not in the model; ignored): old_head.weight, old_head.bias" in out
    source = torch.load(base_run / "model_best.pth", weights_only=True)["state_dict"]
    ckpt_dir = tmp_path / "saved" / "models" / "Digits_finetune" / "tuned"
    epoch1, epoch2 = (torch.load(ckpt_dir / f"checkpoint-epoch{n}.pth", weights_only=True)["state_dict"]
                      for n in (1, 2))
    features = [name for name in source if name.startswith("features.") and "num_batches" not in name]
    assert len(features) == 12
    for name in features:
        assert torch.equal(epoch1[name], source[name]), name  # frozen: as loaded
        assert not torch.equal(epoch2[name], source[name]), name  # unfrozen at epoch 2
    assert not torch.equal(epoch1["head.2.weight"], source["head.2.weight"])  # loaded, then trained
    assert not torch.equal(epoch1["head.5.weight"], source["head.5.weight"])  # fresh
