"""train.py and test.py end to end, as a user runs them: in-process through main() (utils.errors.run_cli gives the
exit status and the error lines a script prints), and as subprocesses where the process is the point: the exit status
and stderr of a mistake, CUDA_VISIBLE_DEVICES set before CUDA starts, a scaffolded project run by its own scripts."""
from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys

import pytest
import torch

import test as test_script
import train
from conftest import BAD_CONFIG_PROBLEMS, ROOT, _bad_config, read_metrics, run_cli, run_dir, tiny_config, write
from fake_data import write_mnist
from utils.errors import run_cli as run_main
from utils.registry import OPTIMIZERS

pytestmark = pytest.mark.usefixtures("restore_logging")  # train.main sets up logging


@pytest.fixture(scope="module")
def tiny_run(restore_logging, tmp_path_factory):
    """(config file, save_dir) of run 't' of the tiny config (2 epochs), trained once for the tests that read it."""
    tmp = tmp_path_factory.mktemp("tiny_run")
    config = write(tmp, tiny_config(tmp / "saved"))
    train.main(["-c", str(config), "--run-id", "t"])
    return config, tmp / "saved"


@pytest.fixture(scope="module")
def fp32_run(restore_logging, tmp_path_factory):
    """(config file, save_dir) of run 'fp32' of the tiny config, 4 epochs at lr 0.01: the reference of the mixed
    precision runs."""
    tmp = tmp_path_factory.mktemp("fp32_run")
    config = write(tmp, tiny_config(tmp / "saved", epochs=4))
    train.main(["-c", str(config), "--run-id", "fp32", "optimizer.args.lr=0.01"])
    return config, tmp / "saved"


# ---- training and testing ----

@pytest.mark.slow
def test_default_config_trains_and_reaches_good_accuracy(tmp_path, capfd):
    """The shipped config.json as it is (only the save_dir moved): the Quick start promise. In-process (a scaffolded
    project's python train.py -c config.json runs as a process in test_new_project.py)."""
    save = tmp_path / "saved"
    status = run_main(train.main, ["-c", str(ROOT / "config.json"), f"trainer.save_dir={save}", "--run-id", "default"])
    err = capfd.readouterr().err
    assert status == 0, err[-2000:]
    ckpt_dir, log_dir = run_dir(save, "default")
    best = max(r["val_accuracy"] for r in read_metrics(log_dir))
    assert best >= 0.97
    assert torch.load(ckpt_dir / "model_best.pth", weights_only=True)["monitor_best"] == best
    assert "Traceback" not in err


@pytest.mark.slow
def test_run_id_overrides_and_run_directory_layout(tmp_path, write_config):
    train.main(["-c", str(write_config()), "--run-id", "r1", "trainer.epochs=3", "trainer.save_period=2",
                "optimizer.args.lr=0.01"])
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "r1")
    assert sorted(p.name for p in ckpt_dir.iterdir() if p.name != "run.patch") == [  # run.patch: a dirty checkout's
        "checkpoint-epoch2.pth", "checkpoint-epoch3.pth", "config.json", "config_sources.json", "latest",
        "model_best.pth", "run.json"]
    assert (ckpt_dir / "latest").read_text().strip() == "checkpoint-epoch3.pth"
    saved_config = json.loads((ckpt_dir / "config.json").read_text())
    assert saved_config["trainer"]["epochs"] == 3 and saved_config["optimizer"]["args"]["lr"] == 0.01
    assert saved_config["seed"] == 123
    assert (log_dir / "info.log").is_file() and [r["epoch"] for r in read_metrics(log_dir)] == [1, 2, 3]
    for path in ckpt_dir.glob("*.pth"):  # every checkpoint opens with weights_only=True
        ckpt = torch.load(path, weights_only=True, map_location="cpu")
        assert ckpt["config"] == saved_config and ckpt["arch"] == "DigitsModel"


@pytest.mark.slow
def test_timestamp_run_ids_are_unique_within_a_second(tmp_path, write_config):
    config = write_config()
    for _ in range(2):
        train.main(["-c", str(config), "trainer.epochs=1"])
    assert len(list((tmp_path / "saved" / "models" / "Digits_CNN").iterdir())) == 2


@pytest.mark.slow
def test_seed_null_is_drawn_and_recorded(tmp_path, write_config):
    train.main(["-c", str(write_config()), "--run-id", "s", "seed=null", "trainer.epochs=1"])
    seed = json.loads((run_dir(tmp_path / "saved", "s")[0] / "config.json").read_text())["seed"]
    assert isinstance(seed, int)


@pytest.mark.slow
def test_same_seed_gives_identical_weights(tiny_run):
    config, save = tiny_run
    train.main(["-c", str(config), "--run-id", "b"])  # the same config file as run t's
    a, b = (torch.load(run_dir(save, r)[0] / "checkpoint-epoch2.pth", weights_only=True) for r in "tb")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


@pytest.mark.slow
def test_a_config_without_an_lr_scheduler_section_trains(tmp_path, write_config):
    config = tiny_config(tmp_path / "saved", epochs=1)
    del config["lr_scheduler"]
    train.main(["-c", str(write_config(config)), "--run-id", "r"])
    checkpoint = torch.load(run_dir(tmp_path / "saved", "r")[0] / "checkpoint-epoch1.pth", weights_only=True)
    assert checkpoint["lr_scheduler"] is None and checkpoint["config"]["lr_scheduler"] is None


def test_dry_run_builds_everything_prints_the_summary_and_writes_nothing(tmp_path, write_config, capsys):
    train.main(["-c", str(write_config()), "--dry-run"])
    out = capsys.readouterr().out
    assert "Total parameters" in out and "DigitsModel: 2x1x8x8 -> 2x10" in out and "Share" in out
    assert not (tmp_path / "saved").exists()


@pytest.mark.slow
def test_device_cpu_flag(tmp_path, write_config):
    train.main(["-c", str(write_config()), "-d", "cpu", "--run-id", "cpu", "trainer.epochs=1"])
    assert (run_dir(tmp_path / "saved", "cpu")[0] / "checkpoint-epoch1.pth").is_file()


def test_test_script_evaluates_the_test_split_without_a_new_run_directory(tiny_run, tmp_path, capsys):
    _, save = tiny_run
    ckpt_dir, _ = run_dir(save, "t")
    before = sorted(p for p in save.rglob("*"))
    results = test_script.main(["-r", str(ckpt_dir / "model_best.pth")])
    assert results["n_samples"] == 360 and 0.0 <= results["accuracy"] <= 1.0
    assert {"loss", "accuracy", "top_k_acc", "epoch"} <= set(results)
    written = json.loads((ckpt_dir / "test_results.json").read_text())
    assert written["accuracy"] == results["accuracy"]
    assert sorted(p for p in save.rglob("*")) == sorted(before + [ckpt_dir / "test_results.json"])
    assert "accuracy" in capsys.readouterr().out
    out = tmp_path / "elsewhere.json"
    again = test_script.main(["-r", str(ckpt_dir), "--out", str(out)])  # a run directory: its model_best.pth
    assert again["checkpoint"] == str(ckpt_dir / "model_best.pth") and again["accuracy"] == results["accuracy"]
    newest = test_script.main(["-r", str(ckpt_dir), "--last", "--out", str(out)])
    assert json.loads(out.read_text())["epoch"] == 2 and newest["checkpoint"].endswith("checkpoint-epoch2.pth")


@pytest.mark.slow
def test_test_script_uses_only_the_checkpoint(tmp_path, write_config):
    """Moving the checkpoint away from its run directory and config changes nothing."""
    train.main(["-c", str(write_config()), "--run-id", "m", "trainer.epochs=1"])
    ckpt_dir, _ = run_dir(tmp_path / "saved", "m")
    lone = tmp_path / "lone.pth"
    (ckpt_dir / "checkpoint-epoch1.pth").rename(lone)
    (ckpt_dir / "config.json").unlink()
    assert test_script.main(["-r", str(lone)])["n_samples"] == 360
    assert (tmp_path / "test_results.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_on_the_cpu_trains_to_the_same_accuracy_band(fp32_run, amp):
    config, save = fp32_run  # the same config file as the fp32 run's, trained once for both
    train.main(["-c", str(config), "--run-id", amp, f"trainer.amp={amp}", "optimizer.args.lr=0.01"])
    full, mixed = (read_metrics(run_dir(save, r)[1])[-1]["val_accuracy"] for r in ("fp32", amp))
    assert mixed > 0.8 and abs(mixed - full) < 0.05
    state = torch.load(run_dir(save, amp)[0] / "checkpoint-epoch4.pth", weights_only=True)
    assert (state["scaler"] is not None) == (amp == "fp16")  # the GradScaler's state is checkpointed


# ---- the command line itself ----

def test_help_lists_every_option():
    out = run_cli("train.py", "--help").stdout
    for flag in ("-c", "--resume", "--device", "--lr", "--bs", "--run-id", "--dry-run", "--list", "key.path=value"):
        assert flag in out
    assert "--out" in run_cli("test.py", "--help").stdout


def test_list_optimizer_cli(capsys):
    assert run_main(train.main, ["--list", "optimizer"]) == 0
    names = capsys.readouterr().out.split()
    assert "Adam" in names and "AdaBelief" in names and "SGD" in names
    assert names == OPTIMIZERS.names()


@pytest.mark.slow
def test_device_flag_selects_gpus_through_cuda_visible_devices():
    """-d 0,1 sets CUDA_VISIBLE_DEVICES before anything touches CUDA (in a subprocess: CUDA reads it once)."""
    code = "import os, train; train.main(['-d', '2,3', '--list', 'arch']); print(os.environ['CUDA_VISIBLE_DEVICES'])"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "2,3" and "DigitsModel" in result.stdout


# ---- mistakes: status 2, one line each, no traceback (in-process: what run_cli prints and returns, which the
# script exits with; test_cli_reports_every_problem_on_its_own_line_with_status_2 runs train.py as a process) ----

def test_cli_errors_exit_2_with_one_line_and_no_traceback(tmp_path, write_config, capsys):
    config = tiny_config(tmp_path / "saved")
    config["arch"]["type"] = "DigitModel"
    config["optimizer"]["args"]["lrr"] = 0.1
    bad = write_config(config, name="bad.json")
    assert run_main(train.main, ["-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert "arch.type: unknown arch 'DigitModel'. Did you mean 'DigitsModel'" in err
    assert "optimizer.args.lrr: Adam has no argument 'lrr'. Did you mean 'lr'?" in err
    assert not (tmp_path / "saved").exists()
    for args, message in [(["-r", str(tmp_path / "nope.pth")], "checkpoint .*nope.pth not found"),
                          (["-c", str(bad), "trainer.epoch=3"], "did you mean 'trainer.epochs'")]:
        assert run_main(train.main, args) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert re.search(message, err, re.I), err


@pytest.mark.slow
def test_cli_reports_every_problem_on_its_own_line_with_status_2(tmp_path):
    """As a process: the exit status, stderr and stdout of python train.py with a config full of mistakes."""
    path = write(tmp_path, _bad_config(tmp_path), "bad.json")
    result = run_cli("train.py", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == len(BAD_CONFIG_PROBLEMS) and all(line.startswith("error: ") for line in lines), lines
    for expected in BAD_CONFIG_PROBLEMS:
        assert sum(expected in line for line in lines) == 1, expected
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


def test_cli_missing_and_invalid_config_files(tmp_path, capsys):
    assert run_main(train.main, ["-c", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: config file {tmp_path / 'missing.json'} not found; give an existing file with -c\n"
    bad = tmp_path / "invalid.json"
    bad.write_text('{"name": "x",\n "trainer": {"epochs": 2\n}')
    assert run_main(train.main, ["-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(rf"error: config file {re.escape(str(bad))} is not valid JSON: .* at line 3 column \d+\n", err)


def test_a_bad_transform_in_a_config_stops_train_py_with_status_2(tmp_path, write_config, capsys):
    from conftest import tiny_config
    from utils.errors import run_cli

    write_mnist(tmp_path / "data")
    config = tiny_config(tmp_path / "saved")
    config["arch"] = {"type": "MnistModel", "args": {}}
    config["data_loader"] = {"type": "MnistDataLoader", "args": {"data_dir": str(tmp_path / "data"), "batch_size": 8,
                                                                 "download": False, "transforms": ["RandomFlip"]}}
    config["optimizer"]["args"]["lr"] = "fast"  # reported together, before anything is built
    assert run_cli(train.main, ["-c", str(write_config(config))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "data_loader.args.transforms[0].type: no transform 'RandomFlip'" in err
    assert "optimizer.args.lr" in err
    assert not (tmp_path / "saved").exists()


@pytest.mark.slow
def test_corrupt_and_malicious_checkpoints_are_refused(tmp_path, capsys):
    truncated = tmp_path / "truncated.pth"
    buffer = tmp_path / "full.pth"
    torch.save({"state_dict": {}, "config": {}, "epoch": 1, "big": torch.zeros(10000)}, buffer)
    truncated.write_bytes(buffer.read_bytes()[:2000])
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (__import__("os").system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "config": {}, "epoch": 1, "x": Exploit()}, evil, pickle_module=pickle)
    for main in (train.main, test_script.main):
        for path, message in ((truncated, "truncated or corrupt"), (evil, "refused")):
            assert run_main(main, ["-r", str(path)]) == 2
            err = capsys.readouterr().err
            assert message in err and "Traceback" not in err
    result = run_cli("test.py", "-r", str(evil))  # and test.py as a process: its exit status and stderr
    assert result.returncode == 2 and "refused" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


# ---- a project in the original template's format ----

@pytest.mark.slow
def test_a_project_in_the_original_templates_format_runs_unchanged(tmp_path):
    """Scaffold a project, add the user's own model/loss/metric the original way, train and test it."""
    project = tmp_path / "MyProject"
    assert run_cli("new_project.py", str(project)).returncode == 0
    with open(project / "model" / "model.py", "a") as f:
        f.write("\n\nclass TinyNet(BaseModel):\n    def __init__(self, num_classes=10):\n        super().__init__()\n"
                "        self.fc = nn.Linear(784, num_classes)\n\n    def forward(self, x):\n"
                "        return F.log_softmax(self.fc(x.view(-1, 784)), dim=1)\n")
    with open(project / "model" / "loss.py", "a") as f:
        f.write("\n\ndef my_nll(output, target):\n    return F.nll_loss(output, target)\n")
    with open(project / "model" / "metric.py", "a") as f:  # old style: Python floats through .item()
        f.write("\n\ndef my_acc(output, target):\n    with torch.no_grad():\n        pred = torch.argmax(output, dim=1)\n"
                "        correct = torch.sum(pred == target).item()\n    return correct / len(target)\n")
    write_mnist(project / "data", n_train=40, n_test=20)
    original = {
        "name": "Mnist_LeNet", "n_gpu": 1,
        "arch": {"type": "TinyNet", "args": {}},
        "data_loader": {"type": "MnistDataLoader", "args": {"data_dir": "data/", "batch_size": 128, "shuffle": True,
                                                             "validation_split": 0.1, "num_workers": 2}},
        "optimizer": {"type": "Adam", "args": {"lr": 0.001, "weight_decay": 0, "amsgrad": True}},
        "loss": "my_nll", "metrics": ["my_acc", "top_k_acc"],
        "lr_scheduler": {"type": "StepLR", "args": {"step_size": 50, "gamma": 0.1}},
        "trainer": {"epochs": 2, "save_dir": "saved/", "save_period": 1, "verbosity": 2,
                    "monitor": "min val_loss", "early_stop": 10, "tensorboard": True},
    }
    (project / "config.json").write_text(json.dumps(original, indent=4))
    result = run_cli("train.py", "-c", "config.json", "--run-id", "orig", cwd=project, project=project)
    assert result.returncode == 0, result.stderr[-2000:]
    ckpt_dir = project / "saved" / "models" / "Mnist_LeNet" / "orig"
    log = read_metrics(project / "saved" / "log" / "Mnist_LeNet" / "orig")
    assert {"my_acc", "val_my_acc", "top_k_acc"} <= set(log[-1])
    result = run_cli("test.py", "-r", str(ckpt_dir / "checkpoint-epoch2.pth"), cwd=project, project=project)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((ckpt_dir / "test_results.json").read_text())["n_samples"] == 20
