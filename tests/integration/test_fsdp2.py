"""trainer.strategy fsdp2 through torchrun on 2 CPU ranks (gloo): the trainer's features give one process's numbers,
sharded checkpoints resume bit for bit after a stop by signal and after kill -9 (torchrun restarts the job), resume
on one process, and test.py, predict.py and --init-from read the sharded run; the pieces under 2 ranks
(fsdp2_checks.py, one launch); a mistaken strategy found by --dry-run.

One straight launch (the `straight` fixture) is what the others compare with; each launch costs seconds."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import torch

import export as export_script
import predict as predict_script
import test as test_script
import train
from conftest import ROOT, read_metrics, run_dir
from test_distributed import deterministic_config, digit_images, torchrun  # noqa: F401  (digit_images: a fixture)
from utils.errors import UserError

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("restore_logging")]

STRATEGY = {"type": "fsdp2", "args": {"shard": ["features", "head.*"]}}
# 3 epochs of 10 steps (batches; 2 accumulated for each optimizer step), clipping, the features frozen for epoch 1 and
# a parameter group of their own after, a schedule, validation every 4 steps with the monitor, a checkpoint at the first
# optimizer step of every 3 steps (6, 12, 18, ...: in the middle of epochs), every file kept
FEATURES = {"epochs": 3, "strategy": STRATEGY, "accumulate_steps": 2, "clip_grad_norm": 0.5, "freeze": ["features.*"],
            "unfreeze_at_epoch": 2, "val_every_steps": 4, "checkpoint_every": {"steps": 3}, "log_step": 2,
            "monitor": "max val_accuracy", "save_period": 1}
STEPS = [4, 8, 10, 12, 16, 20, 24, 28, 30]  # the metrics rows: each validation's and each epoch's


def fsdp2_config(tmp_path, batch_size: int, images) -> str:
    path = deterministic_config(tmp_path, batch_size, images, **FEATURES)
    config = json.loads(path.read_text())
    config["optimizer"]["param_groups"] = [{"params": ["features.*"], "lr": 0.004, "name": "features"}]
    config["lr_scheduler"] = {"type": "StepLR", "args": {"step_size": 5, "gamma": 0.9}, "interval": "step"}
    path.write_text(json.dumps(config))
    return str(path)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, digit_images):
    """Run "fsdp2": two processes of 64 samples a batch; run "single": one process of 128 (no shards: the model
    trains whole, its checkpoints are sharded folders all the same)."""
    tmp_path = tmp_path_factory.mktemp("fsdp2")
    result = torchrun("-c", fsdp2_config(tmp_path, 64, digit_images), "--run-id", "fsdp2")
    assert result.returncode == 0, result.stderr[-3000:]
    train.main(["-c", fsdp2_config(tmp_path, 128, digit_images), "--run-id", "single"])
    return tmp_path


def weights(folder) -> dict:
    """A sharded checkpoint folder's whole weights (joined by torch's dcp_to_torch_save)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    target = folder.parent / f"{folder.name}.joined.pth"
    dcp_to_torch_save(folder, target)
    return torch.load(target, weights_only=True)


def assert_same_folders(a, b) -> None:
    """Two sharded checkpoints hold the same shards (weights and optimizer state) and rank files, bit for bit."""
    joined_a, joined_b = weights(a), weights(b)
    for part in ("state_dict", "optimizer"):
        flat_a, flat_b = _flat(joined_a[part]), _flat(joined_b[part])
        assert flat_a.keys() == flat_b.keys()
        assert all(torch.equal(v, flat_b[k]) if isinstance(v, torch.Tensor) else v == flat_b[k]
                   for k, v in flat_a.items()), part
    for rank in (0, 1):
        own_a, own_b = (torch.load(f / f"rank-{rank}.pth", weights_only=True) for f in (a, b))
        assert torch.equal(own_a["rng"]["torch"], own_b["rng"]["torch"])
        assert all(torch.equal(v, own_b["rank_buffers"][k]) for k, v in own_a["rank_buffers"].items())


def _flat(tree, prefix="") -> dict:
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    if isinstance(tree, list):
        return {k: v for i, value in enumerate(tree) for k, v in _flat(value, f"{prefix}{i}.").items()}
    return {prefix: tree}


def test_fsdp2_writes_sharded_folders_and_logs_the_numbers_a_single_process_logs(straight):
    ckpt_dir, log_dir = run_dir(straight / "saved", "fsdp2")
    folders = sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir())
    assert folders == sorted(["model_best", *(f"checkpoint-epoch{e}" for e in (1, 2, 3)),
                              *(f"checkpoint-step{s}" for s in (6, 12, 18, 24, 30))])
    assert sorted(p.name for p in (ckpt_dir / "checkpoint-step18").iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp", "rank-0.pth", "rank-1.pth", "train_state.pth"]
    assert not list(ckpt_dir.glob(".*.tmp")) and not list(ckpt_dir.glob("*.pth"))
    assert (ckpt_dir / "latest").read_text().strip() == "checkpoint-epoch3"
    assert ("FSDP2: DigitsModel sharded over 2 ranks in 4 units (features, head.2, head.5, the model itself)"
            in (log_dir / "info.log").read_text())  # head.* names the head's layers; those with parameters
    rows, single = read_metrics(log_dir, timing=False), read_metrics(run_dir(straight / "saved", "single")[1], False)
    assert [r["step"] for r in rows] == [r["step"] for r in single] == STEPS
    for a, b in zip(rows, single):  # accumulation, clipping, freezing, groups, schedule, F1 synced: one process's
        assert a.keys() == b.keys()
        for key in a.keys() - {"epoch", "step"}:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    assert rows[-1]["val_accuracy"] > 0.5 and "lr/features" in rows[-1]  # it learns (chance: 0.1)


def test_frozen_features_stay_put_under_fsdp2_until_they_unfreeze(straight):
    ckpt_dir, _ = run_dir(straight / "saved", "fsdp2")
    step3, epoch1, epoch2 = (weights(ckpt_dir / name)["state_dict"]
                             for name in ("checkpoint-step6", "checkpoint-epoch1", "checkpoint-epoch2"))
    features = [k for k in step3 if k.startswith("features.")]
    assert features and all(torch.equal(step3[k], epoch1[k]) for k in features)  # frozen in epoch 1
    assert not torch.equal(step3["head.2.weight"], epoch1["head.2.weight"])
    assert all(not torch.equal(epoch1[k], epoch2[k]) for k in features if k.endswith("weight"))  # trained in epoch 2


def test_an_fsdp2_run_stopped_by_sigterm_then_killed_ends_bit_for_bit_as_the_straight_one(straight, tmp_path,
                                                                                         digit_images):
    """torchrun --max-restarts=2 with --resume auto and two faults, one per attempt: rank 1 gets SIGTERM after
    optimizer step 14, in the middle of epoch 2 (every rank stops at the next sync point, step 16, and saves its
    shards); the restarted job resumes step 16's folder, and rank 0 is killed (SIGKILL) after step 22, in the middle
    of epoch 3 (the job dies without saving; the newest complete folder is epoch 2's). The third attempt resumes it
    and ends as the straight run: its records, and its last folders' shards, random states and buffers, bit for
    bit."""
    result = torchrun("-c", fsdp2_config(tmp_path, 64, digit_images), "--run-id", "fsdp2", "--resume", "auto",
                      launcher=("--max-restarts=2",),
                      env={"TRAIN_FAULT": "rank=1,step=14,signal=TERM;rank=0,step=22,signal=KILL"})
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt_dir, log_dir = run_dir(tmp_path / "saved", "fsdp2")
    said = (log_dir / "info.log").read_text()
    assert f"Resumed from {ckpt_dir / 'checkpoint-step16'}" in said
    assert f"Resumed from {ckpt_dir / 'checkpoint-epoch2'}" in said
    assert read_metrics(log_dir, timing=False) == read_metrics(run_dir(straight / "saved", "fsdp2")[1], timing=False)
    for name in ("checkpoint-epoch3", "model_best"):
        assert_same_folders(run_dir(straight / "saved", "fsdp2")[0] / name, ckpt_dir / name)


def test_a_two_rank_sharded_checkpoint_resumes_in_one_process_and_says_what_changed(straight, tmp_path):
    """Step 18's folder of the 2-rank run resumed in one process, stopped there by trainer.max_time after its first
    step (a sharded folder written by one process), and resumed again to the end."""
    ckpt_dir = tmp_path / "models" / "Digits_CNN" / "fsdp2"
    shutil.copytree(run_dir(straight / "saved", "fsdp2")[0], ckpt_dir)
    shutil.copytree(run_dir(straight / "saved", "fsdp2")[1], tmp_path / "log" / "Digits_CNN" / "fsdp2")
    for later in ("checkpoint-step24", "checkpoint-step30", "checkpoint-epoch3"):
        shutil.rmtree(ckpt_dir / later)
    joined = weights(ckpt_dir / "checkpoint-step18")
    before = joined["state_dict"]
    train.main(["-r", str(ckpt_dir / "checkpoint-step18"), f"trainer.save_dir={json.dumps(str(tmp_path))}",
                "trainer.max_time=1e-6"])
    assert (ckpt_dir / "latest").read_text().strip() == "checkpoint-step20"  # the first optimizer step, saved
    train.main(["-r", str(ckpt_dir), "trainer.max_time=null"])
    said = (tmp_path / "log" / "Digits_CNN" / "fsdp2" / "info.log").read_text()
    assert f"Resumed from {ckpt_dir / 'checkpoint-step20'}" in said
    assert said.count("is resumed on 1") == 1  # the folder one process wrote resumes in one: nothing to say
    assert "written by 2 ranks and is resumed on 1" in said and "resharded the model and optimizer" in said
    assert "the epoch goes on after batch 16 (as many samples as 8 batches on 2 ranks)" in said
    rows = read_metrics(tmp_path / "log" / "Digits_CNN" / "fsdp2", timing=False)
    assert rows[-1]["step"] > 30 and rows[-1]["epoch"] == 3  # 20 steps an epoch now
    assert (ckpt_dir / "checkpoint-epoch3" / "rank-0.pth").is_file()  # written by one process now
    assert not (ckpt_dir / "checkpoint-epoch3" / "rank-1.pth").exists()
    # the loaded weights were the checkpoint's: resuming again loads them exactly
    from run.training import assemble
    from parse_config import ConfigParser
    from utils.checkpoint import find_checkpoint

    path, checkpoint = find_checkpoint(ckpt_dir / "checkpoint-step18")
    config = ConfigParser(checkpoint["config"], resume=path)
    trainer, _ = assemble(config, "cpu")
    trainer.load_state_dict(checkpoint)
    loaded = trainer.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in before.items())
    from utils.sharded import ShardedOptimizer

    moments = ShardedOptimizer(trainer.model, trainer.optimizer).state_dict()["state"]  # by parameter name
    saved = _flat(joined["optimizer"]["state"])
    assert saved and _flat(moments).keys() == saved.keys()
    assert all(torch.equal(v, saved[k]) for k, v in _flat(moments).items())


def test_test_predict_export_and_init_from_read_a_sharded_run(straight, tmp_path):
    ckpt_dir, _ = run_dir(straight / "saved", "fsdp2")
    results = test_script.main(["-r", str(ckpt_dir)])  # model_best: its shards joined once into consolidated.pth
    consolidated = torch.load(ckpt_dir / "model_best" / "consolidated.pth", weights_only=True)
    joined = weights(ckpt_dir / "model_best")["state_dict"]
    assert consolidated["state_dict"].keys() == joined.keys()
    assert all(torch.equal(consolidated["state_dict"][k], v) for k, v in joined.items())
    assert results["n_samples"] == 360 and results["accuracy"] > 0.5
    out = tmp_path / "predictions.csv"
    predict_script.main(["-r", str(ckpt_dir / "checkpoint-epoch3"), "--input", "test", "--out", str(out)])
    assert len(out.read_text().splitlines()) == 361
    exported = export_script.main(["-r", str(ckpt_dir), "--format", "safetensors", "--out", str(tmp_path / "m.st")])
    assert exported["differences"] and (tmp_path / "m.st").is_file()  # checked against PyTorch by export.py
    train.main(["-c", str(straight / "config_128.json"), "--run-id", "tuned", "--init-from", str(ckpt_dir),
                "trainer.epochs=1", "trainer.strategy=\"ddp\"", f"trainer.save_dir={json.dumps(str(tmp_path))}"])
    assert (tmp_path / "models" / "Digits_CNN" / "tuned" / "checkpoint-epoch1.pth").is_file()
    with pytest.raises(UserError, match="holds only the weights of the sharded checkpoint model_best"):
        train.main(["-r", str(ckpt_dir / "model_best" / "consolidated.pth")])


def test_the_pieces_under_two_ranks(tmp_path):
    """fsdp2_checks.py: activation checkpointing's gradients under DDP and FSDP2, accumulation and clipping against
    one process, bf16 units, trainer.amp (bf16 against one process; fp16's GradScaler skipping on every rank when one
    rank's shard is not finite), a background folder equal to a synchronous one, each rank's own state back."""
    out = tmp_path / "checks.json"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(ROOT / "tests" / "integration" / "fsdp2_checks.py"), str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    problems = json.loads(out.read_text())
    assert len(problems) == 7 and problems == {name: [] for name in problems}


@pytest.mark.parametrize("strategy, extra, message", [
    ('"fsdp"', [], 'trainer.strategy must be "ddp", or {"type": "fsdp2"'),
    ('{"type": "fsdp2", "args": {"shard": ["layer*"]}}', [], "trainer.strategy.args.shard: 'layer*' matches no module"),
    ('{"type": "fsdp2", "args": {"reshard": true}}', [], "trainer.strategy.args.reshard is not an FSDP2 setting"),
    ('{"type": "fsdp2", "args": {"param_dtype": "bf16"}}', [], "the batch norm layers features.1"),
    ('{"type": "fsdp2", "args": {"cpu_offload": true}}', [], "cpu_offload moves the shards off the GPUs"),
    ('"fsdp2"', ['trainer.ema={"decay": 0.9}'], "trainer.ema does not work with trainer.strategy fsdp2"),
])
def test_a_mistaken_strategy_is_one_clear_error_from_dry_run(write_config, strategy, extra, message):
    with pytest.raises(UserError, match=re.escape(message)):
        train.main(["-c", str(write_config()), "--dry-run", f"trainer.strategy={strategy}", *extra])
