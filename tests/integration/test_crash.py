"""Real processes stopped at random moments (SIGTERM, kill -9), then resumed from the run directory.

The moments are random; the assertions hold whatever the moment: the resumed run ends bit-identical
to a straight run, and the run directory always holds a valid checkpoint to resume from. A moment is drawn within
the training still to come, as long as the straight run's took on this machine: a fixed span of seconds let most
signals land after the run had ended on a fast machine (nothing then to resume).

The process stopped is the point; the straight runs and the resumes run in this process (train.main: their
bit-identity is what is tested, not their status), with as many threads as the processes stopped.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable, NamedTuple

import pytest
import torch

import train
from conftest import ROOT, TIMING, read_metrics, run_cli, run_dir, tiny_config
from utils import errors

# every test starts train.py or another Python process; train.main sets up logging
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("restore_logging")]

DELAYS = random.Random(2026)  # fixed per run of the suite; the assertions do not depend on them


def config_file(tmp_path: Path, save_dir: Path | None = None, **trainer) -> Path:
    config = tiny_config(save_dir or tmp_path / "saved", epochs=3, **trainer)
    config["data_loader"]["args"]["batch_size"] = 16  # 77 steps per epoch: signals land mid-epoch
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def same_threads() -> dict:
    """The environment of a process to stop: as many threads as this process's training uses (the straight runs and
    the resumes run here; bit-identity needs the same number)."""
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}


def start(config: Path, run_id: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), "-c", str(config), "--run-id", run_id],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=same_threads())


class Straight(NamedTuple):
    """An uninterrupted run: its final state, its metrics records without their timing, and how long each epoch's
    training took (the span the random moments are drawn in)."""
    state: dict
    rows: list[dict]
    epoch_times: list[float]


def straight_run(ckpt_dir: Path, log_dir: Path, final: Callable[[Path], dict]) -> Straight:
    rows = read_metrics(log_dir)
    return Straight(final(ckpt_dir), [{k: v for k, v in r.items() if k not in TIMING} for r in rows],
                    [r["epoch_time"] for r in rows])


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        if time.monotonic() > deadline:
            process.kill()  # never left running after the test
            process.communicate()
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.02)


def final_state(ckpt_dir: Path) -> dict:
    return torch.load(ckpt_dir / "checkpoint-epoch3.pth", weights_only=True)


def assert_identical(a: dict, b: dict) -> None:
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for i, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][i][name]), (i, name)
    assert a["lr_scheduler"] == b["lr_scheduler"] and a["monitor"] == b["monitor"]
    assert a["global_step"] == b["global_step"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run every interrupted one is compared with."""
    tmp_path = tmp_path_factory.mktemp("straight")
    train.main(["-c", str(config_file(tmp_path)), "--run-id", "straight"])
    return straight_run(*run_dir(tmp_path / "saved", "straight"), final_state)




@pytest.mark.parametrize("round_", [1, 2])
def test_sigterm_at_a_random_moment_then_resume_is_bit_identical(tmp_path, straight, round_):
    config = config_file(tmp_path)
    process = start(config, "run")
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "run")
    wait_for(log_dir / "metrics.jsonl", process)  # epoch 1 is done: training is under way
    time.sleep(DELAYS.uniform(0.0, sum(straight.epoch_times[1:])))  # within epochs 2 and 3
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    if process.returncode == 0:  # it finished before the signal arrived: nothing to resume
        pytest.skip("the run finished before the signal")
    assert process.returncode == 128 + signal.SIGTERM, err
    assert f"python train.py -r {ckpt_dir}" in out + err
    stopped = json.loads((ckpt_dir / "run.json").read_text())  # run.json says how the process ended
    assert (stopped["status"], stopped["exit_code"], stopped["starts"][0]["reason"]) == ("stopped", 143, "SIGTERM")
    train.main(["-r", str(ckpt_dir)])
    assert_identical(straight.state, final_state(ckpt_dir))
    assert read_metrics(log_dir, timing=False) == straight.rows
    starts = json.loads((ckpt_dir / "run.json").read_text())["starts"]
    assert [s["outcome"] for s in starts] == ["stopped", "finished"] and starts[1]["from_step"] == starts[0]["step"]


# train.py run with one more exit handler, registered first so that it runs last: the process signals itself
# after train.py's work is done, while it exits (the moment at which the signal used to kill it).
SIGNAL_WHILE_EXITING = """
import atexit, os, runpy, signal, sys
atexit.register(lambda: os.kill(os.getpid(), signal.SIGTERM))
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


def test_sigterm_while_a_finished_run_exits_leaves_its_status_0(tmp_path):
    config = config_file(tmp_path)
    result = subprocess.run([sys.executable, "-c", SIGNAL_WHILE_EXITING, "-c", str(config), "--run-id", "run",
                             "trainer.epochs=1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    ckpt_dir, _ = run_dir(tmp_path / "saved", "run")
    assert (ckpt_dir / "checkpoint-epoch1.pth").is_file()


@pytest.mark.parametrize("round_", [1, 2])
def test_kill_9_at_a_random_moment_then_resume_from_the_run_directory(tmp_path, straight, round_):
    config = config_file(tmp_path, save_every_steps=10)
    process = start(config, "run")
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "run")
    wait_for(ckpt_dir / "latest", process)  # at least one checkpoint exists (step 10 of 231)
    time.sleep(DELAYS.uniform(0.0, sum(straight.epoch_times)))
    process.kill()
    process.communicate(timeout=60)
    train.main(["-r", str(ckpt_dir), "trainer.save_every_steps=null"])
    assert_identical(straight.state, final_state(ckpt_dir))
    assert read_metrics(log_dir, timing=False) == straight.rows


# train.py whose checkpoint write of epoch 2 dies half way: half the file written, then kill -9, in the background
# thread that writes it (status 3 if the write ran on the training path instead)
KILLED_WHILE_WRITING = """
import io, os, runpy, signal, sys, threading, torch
real = torch.save
def save(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("epoch") == 2 and not isinstance(f, (str, os.PathLike)):
        if threading.current_thread() is threading.main_thread():
            os._exit(3)
        buffer = io.BytesIO()
        real(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[:buffer.tell() // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real(obj, f, *args, **kwargs)
torch.save = save
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


def test_kill_9_half_way_through_a_background_write_leaves_the_previous_state_to_resume(tmp_path, straight):
    result = subprocess.run([sys.executable, "-c", KILLED_WHILE_WRITING, "-c", str(config_file(tmp_path)),
                             "--run-id", "run"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=same_threads())
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "run")
    assert (ckpt_dir / ".checkpoint-epoch2.pth.tmp").is_file()  # the half-written file, never renamed
    assert (ckpt_dir / "latest").read_text().strip() == "checkpoint-epoch1.pth"
    train.main(["-r", str(ckpt_dir)])
    assert_identical(straight.state, final_state(ckpt_dir))
    assert read_metrics(log_dir, timing=False) == straight.rows
    assert not list(ckpt_dir.glob(".*.tmp"))


# The shipped config's checkpoint settings (the default: the newest checkpoint alone, each deleted once the next is
# complete; no save_every_steps), 8 of its 30 epochs: every epoch's state is on disk until the next one's is, so a
# kill at any moment, during a save too, leaves one to resume from. KILL_ROUNDS=50 runs the check of fifty random
# moments; KILL_EPOCHS=30 the whole default run.
KILL_ROUNDS, KILL_EPOCHS = int(os.environ.get("KILL_ROUNDS", 1)), int(os.environ.get("KILL_EPOCHS", 8))


def shipped(save_dir: Path, run_id: str) -> list[str]:
    return ["-c", str(ROOT / "config.json"), f"trainer.save_dir={save_dir}", f"trainer.epochs={KILL_EPOCHS}",
            "trainer.verbosity=0", "--run-id", run_id]


def newest_state(ckpt_dir: Path) -> dict:
    return torch.load(ckpt_dir / (ckpt_dir / "latest").read_text().strip(), weights_only=True)


@pytest.fixture(scope="module")
def straight_shipped(tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("shipped") / "saved"
    train.main(shipped(save_dir, "straight"))
    return straight_run(*run_dir(save_dir, "straight"), newest_state)


@pytest.mark.parametrize("round_", range(KILL_ROUNDS))
def test_kill_9_during_the_shipped_config_loses_at_most_the_epoch_under_way(tmp_path, straight_shipped, round_):
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *shipped(tmp_path / "saved", "run")],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=same_threads())
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "run")
    wait_for(ckpt_dir / "latest", process)  # before the first epoch ends there is nothing to resume
    time.sleep(DELAYS.uniform(0.0, sum(straight_shipped.epoch_times[1:])))  # within epochs 2 to KILL_EPOCHS
    process.kill()
    process.wait(timeout=60)
    train.main(["-r", str(ckpt_dir)])
    assert_identical(straight_shipped.state, newest_state(ckpt_dir))
    assert read_metrics(log_dir, timing=False) == straight_shipped.rows


def test_a_second_signal_exits_at_once_without_touching_files(tmp_path):
    """While a (slow) step runs, one signal asks for a save after it; a second one leaves immediately."""
    driver = tmp_path / "slow.py"
    driver.write_text(textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(ROOT)!r})
        import torch
        from torch.utils.data import TensorDataset
        from base import BaseDataLoader, RunOutputs
        from config import TrainerSettings
        from trainer import Trainer
        from utils.checkpoint import RunDirs

        class Slow(Trainer):
            def train_step(self, data, target):
                print("step", flush=True)
                time.sleep(3)
                return super().train_step(data, target)

        model = torch.nn.Linear(2, 1)
        loader = BaseDataLoader(TensorDataset(torch.randn(8, 2), torch.randn(8, 1)), 4, True, 0, 0)
        settings = TrainerSettings(epochs=1, verbosity=0, tensorboard=False)
        run = Path({str(tmp_path)!r})
        outputs = RunOutputs().open(RunDirs(run, run), settings)
        Slow(model, torch.nn.functional.mse_loss, {{}}, torch.optim.SGD(model.parameters(), lr=0.1), settings,
             data_loader=loader, outputs=outputs).train()
    """))
    process = subprocess.Popen([sys.executable, str(driver)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "step"
    process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slow.py"]  # no checkpoint, no temporary file


def children(pid: int) -> list[int]:
    """The processes pid started (Linux's /proc)."""
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def signal_pending(pid: int) -> bool:
    """Whether a signal sent to pid waits to be delivered (False once the process has taken it, or is gone)."""
    try:
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except (FileNotFoundError, ProcessLookupError):
        return False
    return status["State"].split()[0] not in "ZX" and any(int(status[key], 16) for key in ("SigPnd", "ShdPnd"))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the workers from Linux's /proc")
def test_a_signal_to_the_whole_process_group_stops_with_a_save_while_workers_load(tmp_path):
    """SIGTERM to every process of the job (as torchrun stops its ranks, or a scheduler its job), loader workers
    included: the workers carry on serving, and training stops after its step with the state saved."""
    driver = tmp_path / "workers.py"
    driver.write_text(textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "tests")!r}]
        from pathlib import Path
        from tiny_trainers import build
        from utils.interrupt import StopTraining

        trainer = build(Path({str(tmp_path / "run")!r}), epochs=50, workers=2, early_stop=0)
        step = trainer.train_step

        def train_step(data, target):
            if trainer.global_step == 7:  # epoch 2: its workers were started by the training loop
                print("step", flush=True)
                sys.stdin.readline()  # until the signal has been sent
            return step(data, target)
        trainer.train_step = train_step
        try:
            trainer.train()
        except StopTraining as stop:
            print(stop, flush=True)
    """))
    process = subprocess.Popen([sys.executable, str(driver)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert process.stdout.readline().strip() == "step", process.communicate()
    workers = children(process.pid)
    assert len(workers) == 2
    os.killpg(process.pid, signal.SIGTERM)  # its process group: the workers too
    deadline = time.monotonic() + 60
    while any(signal_pending(worker) for worker in workers):  # each worker has taken it (died of it, or not)
        assert time.monotonic() < deadline
        time.sleep(0.01)
    out, err = process.communicate("go\n", timeout=120)
    assert process.returncode == 0, err[-3000:]
    assert f"stopped by SIGTERM; saved {tmp_path / 'run' / 'checkpoint-step8.pth'}" in out, err[-3000:]
    assert torch.load(tmp_path / "run" / "checkpoint-step8.pth", weights_only=True)["global_step"] == 8


def test_a_process_whose_loader_workers_are_alive_at_its_exit_exits(tmp_path):
    """multiprocessing ends the workers still alive at the exit with SIGTERM and waits for them: a worker takes a
    SIGTERM from its main process (the ones from elsewhere it ignores)."""
    script = tmp_path / "exit.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "tests")!r}]
        from pathlib import Path
        from tiny_trainers import build

        batches = iter(build(Path({str(tmp_path / "run")!r}), epochs=1, workers=2).data_loader)
        next(batches)  # the workers serve the rest of the epoch, kept until the exit
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


def test_an_unwritable_save_directory_is_a_clear_error(tmp_path, capfd):
    # in this process: utils.errors.run_cli gives train.py's status and prints its error lines (test_train_cli
    # checks that the process exits with that status); an exception would fail the test here
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the save directory should go")
    config = config_file(tmp_path, blocker / "saved")
    status = errors.run_cli(train.main, ["-c", str(config)])
    stderr = capfd.readouterr().err
    assert status == 2 and "Traceback" not in stderr
    assert f"cannot create run directory {blocker}/saved/models" in stderr
    assert "check trainer.save_dir" in stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_save_directory_is_a_clear_error(tmp_path):
    save = tmp_path / "ro"
    save.mkdir()
    save.chmod(0o500)
    result = run_cli("train.py", "-c", str(config_file(tmp_path, save)))
    assert result.returncode == 2 and "cannot create run directory" in result.stderr
