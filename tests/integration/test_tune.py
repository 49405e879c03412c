"""tune.py end to end: real SQLite studies whose trials are real train.py runs on tiny digits (in-process tune.main
where one process is enough; subprocesses, each in its own process group and killed at the end, where the test kills
or runs several)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from PIL import Image

import train
import tune
from conftest import ROOT, read_metrics, run_dir, tiny_config
from utils.errors import run_cli

pytestmark = pytest.mark.usefixtures("restore_logging")

SPACE = {"optimizer.args.lr": {"float": [1e-3, 3e-2], "log": True},
         "data_loader.args.batch_size": {"categorical": [64, 128]}}


def write_inputs(tmp_path: Path, space: dict = SPACE, **trainer) -> tuple[Path, Path, Path]:
    """(config file, space file, save_dir) of a tiny digits config. Its checkpoints are written on the training path
    (trainer.async_checkpoint false): hang_at stops a trial's training where it writes one."""
    save = tmp_path / "saved"
    config, space_file = tmp_path / "config.json", tmp_path / "space.json"
    config.write_text(json.dumps(tiny_config(save, **{"epochs": 1, "async_checkpoint": False, **trainer})))
    space_file.write_text(json.dumps(space))
    return config, space_file, save


def url(save: Path) -> str:
    return f"sqlite:///{save / 'studies.db'}"


def load(save: Path, study: str = "Digits_CNN") -> optuna.Study:
    return optuna.load_study(study_name=study, storage=url(save))


def overrides(params: dict) -> list[str]:
    return [f"{path}={json.dumps(value)}" for path, value in params.items()]


@pytest.fixture
def processes():
    """A list to put tune.py processes in (each started with start_new_session=True); their process groups, and the
    train.py processes their trials recorded, are killed at the end of the test."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def start_tune(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "tune.py"), *args], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})


# A sitecustomize module: a Python process started with its folder on PYTHONPATH (tune.py and the train.py of its
# trials inherit the variable) that opens a file whose name holds HANG_AT for writing creates HANG_MARKER (once: "x"),
# then waits there until it has received a SIGTERM (one that came earlier counts: every SIGTERM handler the process
# installs is wrapped to note it, then run); a SIGKILL ends it there. A worker held at a point the test chose,
# whatever the machine's speed, which goes on as it would once tune.py has told it to stop.
HANG = """
import os, signal, sys, time

received = []
install = signal.signal

def noting(signum, handler):
    if signum == signal.SIGTERM and callable(handler):
        def noted(signum, frame, handler=handler):
            received.append(signum)
            handler(signum, frame)
        return install(signum, noted)
    return install(signum, handler)

def hang(event, args):
    if event == "open" and isinstance(args[0], (str, os.PathLike)) and isinstance(args[1], str) \\
            and "w" in args[1] and os.environ["HANG_AT"] in os.path.basename(os.fspath(args[0])):
        with open(os.environ["HANG_MARKER"], "x"):
            pass
        while not received:
            time.sleep(0.05)

signal.signal = noting
sys.addaudithook(hang)

# a sitecustomize of the installation's that this one hides still runs
import importlib.machinery, importlib.util
here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.machinery.PathFinder.find_spec("sitecustomize", [p for p in sys.path if os.path.abspath(p) != here])
if spec is not None:
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
"""


def hang_at(tmp_path: Path, name: str) -> tuple[dict[str, str], Path]:
    """(environment, marker): a process started with the environment, when it opens a file named like name for
    writing, creates the marker file and waits until it has received a SIGTERM."""
    folder, marker = tmp_path / "hang", tmp_path / "hanging"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(HANG)
    path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "HANG_AT": name, "HANG_MARKER": str(marker)}, marker


def kill_trial_processes(study: optuna.Study) -> None:
    """SIGKILL to every running trial's train.py (their own process groups), by the pid each trial recorded."""
    for trial in study.get_trials(states=(TrialState.RUNNING,)):
        pid = int(trial.user_attrs.get("worker", ":0").rsplit(":", 1)[1])
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.slow
def test_a_study_runs_reports_continues_and_prunes(tmp_path, capsys, monkeypatch):
    config, space, save = write_inputs(tmp_path, epochs=3)
    assert run_cli(tune.main, ["-c", str(config), "--space", str(space), "--trials", "3"]) == 0
    out = capsys.readouterr().out
    study = load(save)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:  # every trial is a normal run with the sampled values in its config
        ckpt_dir, log_dir = run_dir(save, f"Digits_CNN-trial-{t.number}")
        assert t.user_attrs["run_dir"] == str(ckpt_dir) and t.user_attrs["log_dir"] == str(log_dir)
        run_config = json.loads((ckpt_dir / "config.json").read_text())
        assert run_config["optimizer"]["args"]["lr"] == t.params["optimizer.args.lr"]
        assert run_config["data_loader"]["args"]["batch_size"] == t.params["data_loader.args.batch_size"]
        assert (ckpt_dir / "model_best.pth").is_file() and list(log_dir.glob("events.out.tfevents.*"))
        assert t.value == min(r["val_loss"] for r in read_metrics(log_dir))
    # the table, best first
    table = out[out.index("trial  state"):].splitlines()
    ranked = sorted(trials, key=lambda t: t.value)
    assert [line.split()[0] for line in table[1:4]] == [str(t.number) for t in ranked]
    assert table[1].endswith(ranked[0].user_attrs["run_dir"])
    folder = save / "studies" / "Digits_CNN"
    best_config = folder / "best_config.json"
    assert json.loads(best_config.read_text()) == json.loads((Path(ranked[0].user_attrs["run_dir"]) /
                                                             "config.json").read_text())
    for plot in ("optimization_history.png", "param_importances.png"):
        with Image.open(folder / plot) as image:
            assert image.size[0] > 100
    assert run_cli(train.main, ["-c", str(best_config), "--fast-dev-run"]) == 0  # ready for train.py -c

    # the same command with --trials 4 continues the study: exactly one more trial. It is given a learning rate that
    # learns nothing (on the same initial weights as the others: the seed is the config's), so a median pruner that
    # starts after one trial prunes it after its first epoch. Its train.py waits, once it has written epoch 1's
    # metrics row, as it starts writing epoch 1's checkpoint, for the SIGTERM that stops a pruned trial: it cannot
    # train on before the pruner decides, however fast the machine.
    env, waited = hang_at(tmp_path, "checkpoint-epoch1")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    study.enqueue_trial({"optimizer.args.lr": 1e-7, "data_loader.args.batch_size": 128})
    assert run_cli(tune.main, ["-c", str(config), "--space", str(space), "--trials", "4",
                               "--pruner", "median:n_startup_trials=1"]) == 0
    assert "trial 3: PRUNED at step 1" in capsys.readouterr().out
    trials = load(save).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED]
    assert waited.is_file() and [r["epoch"] for r in read_metrics(trials[3].user_attrs["log_dir"])] == [1]
    kept = Path(trials[3].user_attrs["run_dir"])
    # it stopped and saved on its way out: epoch 1's checkpoint (then, unless the signal came before that epoch's end
    # was settled, the state after the one step of epoch 2 it took)
    assert (kept / "config.json").is_file() and (kept / "checkpoint-epoch1.pth").is_file()
    assert "Stopped by SIGTERM after global step" in (save / "studies" / "Digits_CNN" / "trial-3.log").read_text()

    # --report, without -c: the table of all four, the files written again
    best_config.unlink()
    assert run_cli(tune.main, ["--study", "Digits_CNN", "--storage", url(save), "--report"]) == 0
    report = capsys.readouterr().out
    assert sum(" COMPLETE " in line for line in report.splitlines()) == 3 and " PRUNED " in report
    assert best_config.is_file()


@pytest.mark.slow
def test_a_trial_whose_worker_was_killed_is_retried_by_resuming_its_run(tmp_path, processes, capsys):
    config, space, save = write_inputs(tmp_path, epochs=4)
    command = ["-c", str(config), "--space", str(space), "--trials", "1", "--heartbeat", "1"]
    # The trial's train.py waits as it starts writing epoch 2's checkpoint (epoch 1's checkpoint and both epochs'
    # metrics rows written): it is killed there, however fast the machine, before its run could finish.
    env, hanging = hang_at(tmp_path, "checkpoint-epoch2")
    processes.append(first := start_tune(*command, env=env))
    ckpt_dir, log_dir = run_dir(save, "Digits_CNN-trial-0")
    deadline = time.monotonic() + 120
    while not hanging.is_file():
        assert first.poll() is None and time.monotonic() < deadline, first.stdout.read() if first.poll() else "timeout"
        time.sleep(0.1)
    kill_trial_processes(load(save))  # a lost node: the trial's train.py and tune.py die at once, nothing saved
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert sorted(p.name for p in ckpt_dir.glob("checkpoint-*.pth")) == ["checkpoint-epoch1.pth"]
    assert [r["epoch"] for r in read_metrics(log_dir)] == [1, 2]  # epoch 2's row: dropped when the run resumes

    assert run_cli(tune.main, command) == 0  # the same command (here in-process)
    out = capsys.readouterr().out
    failed, retry = load(save).get_trials()
    assert (failed.state, retry.state) == (TrialState.FAIL, TrialState.COMPLETE)
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 0 and retry.params == failed.params
    assert retry.user_attrs["run_dir"] == str(ckpt_dir) and f"trial 1: {tune.format_params(retry.params)}; " \
        f"resuming {ckpt_dir}" in out
    assert not run_dir(save, "Digits_CNN-trial-1")[0].exists()
    assert run_cli(train.main, ["-c", str(config), "--run-id", "straight", "trainer.epochs=4",
                                *overrides(retry.params)]) == 0
    assert read_metrics(log_dir, timing=False) == read_metrics(run_dir(save, "straight")[1], timing=False)


@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path, processes):
    """... and one MLflow store (a new SQLite file, which both workers and their trials start on at once): a run for
    the study, each trial's nested under it."""
    config, space, save = write_inputs(tmp_path)
    config.write_text(json.dumps({**json.loads(config.read_text()), "loggers": ["mlflow"]}))
    command = ["-c", str(config), "--space", str(space), "--trials", "4"]
    processes.append(other := start_tune(*command))
    assert run_cli(tune.main, command) == 0  # this process is the second worker
    out, _ = other.communicate(timeout=300)
    assert other.returncode == 0, out
    trials = load(save).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4 and {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.WAITING}
    run_dirs = {t.user_attrs["run_dir"] for t in complete}
    assert len(run_dirs) == 4 and all((Path(d) / "model_best.pth").is_file() for d in run_dirs)
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{save / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("Digits_CNN").experiment_id])
    [study] = [run for run in runs if run.data.tags.get("tune.study") == "Digits_CNN"]
    assert study.info.status == "FINISHED" and study.data.metrics["best_val_loss"] == load(save).best_value
    trial_runs = {run.info.run_name: run for run in runs if run is not study}
    assert set(trial_runs) == {Path(d).name for d in run_dirs}
    assert all(run.data.tags["mlflow.parentRunId"] == study.info.run_id and run.info.status == "FINISHED"
               for run in trial_runs.values())


def test_the_space_is_checked_against_the_config_before_anything_runs(tmp_path, capsys):
    space = {"optimizer.args.lrr": {"float": [1e-4, 1e-1], "log": True},
             "data_loader.args.batch_size": {"categorical": [0, 64]},
             "arch.args.channels": {"int": [16, 64], "stepp": 16},
             "trainer.epochs": {"float": [1, 3]}}
    config, space_file, save = write_inputs(tmp_path, space)
    assert run_cli(tune.main, ["-c", str(config), "--space", str(space_file), "--trials", "2"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "error: space.json: override optimizer.args.lrr: no key 'optimizer.args.lrr' in the config. Did you mean "
        "'optimizer.args.lr'? Write +optimizer.args.lrr=... to add a new key",
        "error: space.json: data_loader.args.batch_size=0: data_loader.args.batch_size must be at least 1, got 0",
        "error: space.json: arch.args.channels: unknown key 'stepp'. Did you mean 'step'? Write " + tune.EXAMPLES,
        "error: space.json: override trainer.epochs=1.764: expected an integer like the current value 1",
    ]
    assert not save.exists()  # nothing opened or written


def test_a_search_needs_a_monitored_value(tmp_path, capsys):
    config, space, _ = write_inputs(tmp_path, monitor="off")
    assert run_cli(tune.main, ["-c", str(config), "--space", str(space), "--trials", "2"]) == 2
    assert capsys.readouterr().err.startswith("error: trainer.monitor is 'off' in ")


@pytest.mark.slow
def test_a_trial_can_be_a_torchrun_job(tmp_path):
    """--launcher: each trial runs under torchrun (2 processes, gloo), one run directory written by rank 0."""
    config, space, save = write_inputs(tmp_path)
    launcher = f"{sys.executable} -m torch.distributed.run --standalone --nproc_per_node=2"
    assert run_cli(tune.main, ["-c", str(config), "--space", str(space), "--trials", "1", "--launcher", launcher]) == 0
    trial, = load(save).get_trials()
    assert trial.state == TrialState.COMPLETE
    ckpt_dir, log_dir = run_dir(save, "Digits_CNN-trial-0")
    assert (ckpt_dir / "checkpoint-epoch1.pth").is_file() and len(read_metrics(log_dir)) == 1
    assert trial.value == read_metrics(log_dir)[0]["val_loss"]
