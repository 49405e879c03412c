"""benchmarks/gpu_check.py without a GPU: it says it needs one, its code runs on the CPU (--smoke), and the verdicts
of its CUDA-only checks are right on made-up counts."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def run_script(*args: str, python: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """The script in a process that sees no GPU."""
    return subprocess.run([sys.executable, *python, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def on_cuda(gpu_check, tmp_path):
    """A context that says it is on a GPU (only the checks' verdicts use it here)."""
    return gpu_check.Context(torch.device("cuda"), gpu_check.SMOKE, tmp_path)


@pytest.mark.slow  # over 4 s: a subprocess or a real model
def test_without_cuda_it_says_so_in_one_line_and_exits_0_before_the_heavy_imports():
    result = run_script(python=("-X", "importtime"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout.splitlines()) == 1 and result.stdout.startswith("gpu_check needs a CUDA GPU")
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert "torch" in imported and not imported & {"train", "trainer", "torchvision", "tensorboard", "sklearn"}


@pytest.mark.slow
def test_the_smoke_run_on_the_cpu_passes_every_section():
    result = run_script("--device", "cpu", "--smoke")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "FAILED" not in result.stdout
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("gpu_check: cpu: 7/7 sections passed; ratio trainer/raw fp32 ")
    assert re.search(r"checkpoint every epoch/none: background, on the path \d+\.\d\d \d+\.\d\d$", last)
    assert "n/a" not in last


def test_a_failing_section_prints_one_failed_line_and_its_traceback(gpu_check, on_cuda, capsys):
    def broken(ctx):
        raise ValueError("no luck")

    assert not gpu_check.run_section("sync", broken, on_cuda)
    out = capsys.readouterr().out
    assert "FAILED sync: ValueError: no luck\nTraceback (most recent call last):" in out
    assert gpu_check.summary("H100", ["default"], ["sync"], {"fp32": 0.987}) == (
        "gpu_check: H100: 1/2 sections passed (failed: sync); ratio trainer/raw fp32 0.99 bf16 n/a fp16 n/a "
        "bf16+cl n/a bf16+cl+compile n/a; checkpoint every epoch/none: background, on the path n/a n/a")


def test_sync_warnings_are_recorded_with_their_place(gpu_check, monkeypatch):
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda mode: None)
    with gpu_check.recorded_syncs(torch.device("cuda")) as places:
        warnings.warn(gpu_check.SYNC_WARNING)
        warnings.warn(gpu_check.SYNC_WARNING)
        warnings.warn("something else")
    assert len(places) == 2 and all(place.startswith(f"{Path(__file__).name}:") for place in places)


@pytest.mark.parametrize("counts, error", [({2: 3, 4: 3}, None), ({2: 3, 4: 4}, "4 syncs with 4 steps > 3 with 2"),
                                           ({2: 0, 4: 0}, "no sync recorded at all")])
def test_the_sync_check_fails_when_syncs_grow_with_the_steps(gpu_check, on_cuda, monkeypatch, capsys, counts, error):
    monkeypatch.setattr(gpu_check, "epoch_syncs", lambda ctx, task, steps, options: ["trainer.py:9"] * counts[steps])
    if error is None:
        gpu_check.no_sync_per_step(on_cuda)
        assert capsys.readouterr().out.count(": PASS (trainer.py:9 x3)") == 4  # digits twice, resnet twice
    else:
        with pytest.raises(gpu_check.CheckFailed, match=error):
            gpu_check.no_sync_per_step(on_cuda)


def test_the_resume_check_names_the_largest_difference(gpu_check):
    def checkpoint(weight: float, scale: float) -> dict:
        return {"state_dict": {"w": torch.tensor([1.0, weight])}, "scaler": {"scale": scale},
                "optimizer": {"state": {0: {"exp_avg": torch.zeros(2), "step": torch.tensor(4.0)}}}}

    rows = [{"epoch": 1, "loss": 0.5}]
    assert gpu_check.resume_problems(checkpoint(2.0, 8.0), checkpoint(2.0, 8.0), rows, rows) == []
    problems = gpu_check.resume_problems(checkpoint(2.0, 8.0), checkpoint(2.5, 4.0), rows, [{"epoch": 1, "loss": 0.6}])
    assert problems[0] == "1 of 3 tensors differ, the most model.w (largest absolute difference 0.5)"
    assert [p.split()[0] for p in problems[1:]] == ["GradScaler", "metrics.jsonl"]


def test_peak_memory_is_printed_in_mib(gpu_check, on_cuda, capsys):
    with pytest.raises(gpu_check.CheckFailed, match="no run of the throughput section"):
        gpu_check.peak_memory(on_cuda)
    on_cuda.peaks["trainer fp32"] = (300 * 2**20, 512 * 2**20)
    gpu_check.peak_memory(on_cuda)
    assert "trainer fp32: max allocated      300 MiB, max reserved      512 MiB" in capsys.readouterr().out


@pytest.mark.slow
def test_the_full_run_builds_resnet18_for_cifar_shapes_and_feeds_it_whole_batches(gpu_check):
    full = gpu_check.FULL
    assert full.train % full.batch == 0 and full.valid % full.batch == 0  # torch.compile: no short batch to recompile
    assert full.image.build()(torch.zeros(2, *full.image.shape)).shape == (2, 10)
