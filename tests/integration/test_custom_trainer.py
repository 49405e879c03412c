"""A trainer of the user's own, chosen by trainer.type in a scaffolded project: validation and test.py both
evaluate through its eval_step, so they report the same numbers for the same samples and weights."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import train
from base import BaseDataLoader
from conftest import read_metrics, run_cli, run_dir
from parse_config import read_config
from utils.errors import run_cli as run_main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("restore_logging")]  # train.main sets up logging

CUSTOM_TRAINER = '''

class ShiftedEval(Trainer):
    """Evaluation that differs from training: the loss it reports is the training loss plus 100."""

    def eval_step(self, data, target):
        loss, output = self.train_step(data, target)
        return loss + 100.0, output
'''

# In the project, one process for what train.py --list trainer and train.py -c ... do (their main()s, their output
# and exit status): a process start saved. test.py, which must need nothing but the checkpoint, runs in a process of
# its own.
LIST_AND_TRAIN = """
import sys
import train
from utils.errors import run_cli
if run_cli(train.main, ["--list", "trainer"]) != 0:
    sys.exit("--list failed")
print("--- listed", flush=True)
sys.exit(run_cli(train.main, sys.argv[1:]))
"""


def write_arrays(directory, n=240, validation_split=0.25):
    """train.npz, and test.npz holding exactly the samples the validation part of train.npz gets, in its order."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    y = x[:, :4].argmax(1).astype(np.int64)
    split = BaseDataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), 32, True, validation_split, 0)
    valid = split.valid_sampler.indices.numpy()
    directory.mkdir(parents=True)
    np.savez(directory / "train.npz", x=x, y=y)
    np.savez(directory / "test.npz", x=x[valid], y=y[valid])
    return len(valid)


def test_a_custom_trainer_is_listed_chosen_and_evaluated_the_same_by_validation_and_test_py(tmp_path):
    project = tmp_path / "Project"
    assert run_cli("new_project.py", str(project)).returncode == 0
    with open(project / "trainer" / "trainer.py", "a") as f:
        f.write(CUSTOM_TRAINER)
    n_valid = write_arrays(project / "data" / "arrays")
    config = read_config(project / "configs" / "arrays.json")  # its _base_ files were copied too
    config["trainer"].update(type="ShiftedEval", epochs=2, save_dir=str(tmp_path / "saved"), verbosity=0,
                             tensorboard=False)
    config["data_loader"]["args"].update(validation_split=0.25, batch_size=16)
    (project / "custom.json").write_text(json.dumps(config))

    trained = subprocess.run([sys.executable, "-c", LIST_AND_TRAIN, "-c", "custom.json", "--run-id", "c"], cwd=project,
                             capture_output=True, text=True, timeout=300)
    listed, _, _ = trained.stdout.partition("--- listed\n")
    assert listed.split() == ["Trainer", "ShiftedEval"], trained.stderr[-3000:]
    assert trained.returncode == 0, trained.stderr[-3000:]
    checkpoint_dir, log_dir = run_dir(tmp_path / "saved", "c", name=config["name"])
    last = read_metrics(log_dir)[-1]
    tested = run_cli("test.py", "-r", str(checkpoint_dir / "checkpoint-epoch2.pth"), cwd=project, project=project)
    assert tested.returncode == 0, tested.stderr[-3000:]
    results = json.loads((checkpoint_dir / "test_results.json").read_text())

    assert last["loss"] < 100 < last["val_loss"]  # training used train_step, validation the custom eval_step
    assert results["n_samples"] == n_valid and results["epoch"] == 2
    assert results["loss"] == last["val_loss"] and results["accuracy"] == last["val_accuracy"]


def test_a_misspelled_trainer_type_names_the_nearest_and_how_to_list(write_config, capsys):
    assert run_main(train.main, ["-c", str(write_config()), "trainer.type=Trainr"]) == 2  # train.py's exit status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip() == ("error: trainer.type: unknown trainer 'Trainr'. Did you mean 'Trainer'? "
                           "List them all with: python train.py --list trainer")
