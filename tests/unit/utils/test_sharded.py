"""utils/sharded.py in one process (DCP without a process group): a folder written whole or not at all, the
Checkpointer's rules over folders, what resuming and the other commands read, the plain model's parts. Two ranks:
tests/integration/test_fsdp2.py."""
from __future__ import annotations

import torch
from torch import nn

import pytest

from utils.checkpoint import (LATEST, RESUME, EVALUATE, Checkpointer, checkpoint_to_use, find_checkpoint,
                              holds_state, load_checkpoint)
from utils.errors import UserError
from utils.sharded import (CONSOLIDATED, PLAIN, SHARDED, SOURCE, ShardedOptimizer, ShardedStore, ShardedWeights,
                           load_shards, this_ranks_state)


def model_and_optimizer(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


def state(model, optimizer, epoch: int = 1, **plain) -> dict:
    return {"state_dict": ShardedWeights(model).state_dict(), "optimizer": ShardedOptimizer(model, optimizer).state_dict(),
            "rng": {"torch": torch.get_rng_state()}, "epoch": epoch, "global_step": 10 * epoch, "batch_in_epoch": 0,
            "config": {"seed": 1}, "format_version": 2, **plain}


def test_a_folder_holds_shards_plain_values_and_the_rank_file_and_reads_back(tmp_path):
    model, optimizer = model_and_optimizer()
    written = state(model, optimizer)
    ShardedStore(0, 1, main=True).write(written, tmp_path / "checkpoint-epoch1")
    folder = tmp_path / "checkpoint-epoch1"
    assert sorted(p.name for p in folder.iterdir()) == [".metadata", "__0_0.distcp", "rank-0.pth", PLAIN]
    assert not list(tmp_path.glob(".*.tmp"))
    plain = torch.load(folder / PLAIN, weights_only=True)
    assert "state_dict" not in plain and "optimizer" not in plain and plain[SHARDED] == {
        "world_size": 1, "parts": ["state_dict", "optimizer"]}
    resumed = load_checkpoint(folder, RESUME)
    assert resumed[SOURCE] == str(folder) and resumed["epoch"] == 1
    fresh, fresh_optimizer = model_and_optimizer(seed=5)
    parts = {"state_dict": ShardedWeights(fresh), "optimizer": ShardedOptimizer(fresh, fresh_optimizer)}
    load_shards(parts, resumed)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    saved, loaded = optimizer.state_dict()["state"], fresh_optimizer.state_dict()["state"]
    assert all(torch.equal(saved[i][k], loaded[i][k]) for i in saved for k in saved[i])
    own, note = this_ranks_state(resumed, 0, 1, seed=1)
    assert note is None and torch.equal(own["rng"]["torch"], written["rng"]["torch"])


def test_another_world_size_reseeds_moves_the_position_and_says_so(tmp_path):
    model, optimizer = model_and_optimizer()
    ShardedStore(0, 1, main=True).write(state(model, optimizer, batch_in_epoch=6), tmp_path / "checkpoint-step16")
    checkpoint = load_checkpoint(tmp_path / "checkpoint-step16", RESUME)
    checkpoint = {**checkpoint, SHARDED: {**checkpoint[SHARDED], "world_size": 4}}  # as if 4 ranks wrote it
    own, note = this_ranks_state(checkpoint, 1, 2, seed=1)
    assert own["batch_in_epoch"] == 12 and own["rng"] is None
    assert "written by 4 ranks and is resumed on 2" in note and "after batch 12" in note


def test_the_checkpointer_keeps_folders_as_it_keeps_files(tmp_path):
    """keep_last 2 over epoch folders, model_best replaced in place, latest naming the newest, a stale temporary
    folder (a kill mid-write) removed at the next start, and --resume auto's and test.py's choices."""
    model, optimizer = model_and_optimizer()
    (tmp_path / ".checkpoint-epoch9.tmp").mkdir()
    (tmp_path / ".checkpoint-epoch9.tmp" / "rank-0.pth").write_bytes(b"half")
    checkpointer = Checkpointer(tmp_path, keep_last=2, store=ShardedStore(0, 1, main=True))
    assert not (tmp_path / ".checkpoint-epoch9.tmp").exists()
    for epoch in (1, 2, 3):
        checkpointer.save(state(model, optimizer, epoch), epoch, is_best=epoch == 2, is_last=epoch == 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-epoch2", "checkpoint-epoch3", LATEST,
                                                          "model_best"]
    assert (tmp_path / LATEST).read_text().strip() == "checkpoint-epoch3" and holds_state(tmp_path)
    assert find_checkpoint(tmp_path)[0] == tmp_path / "checkpoint-epoch3"
    path, best, why = checkpoint_to_use(tmp_path, EVALUATE)
    assert path == tmp_path / "model_best" and best["epoch"] == 2 and "the run's best" in why
    assert torch.equal(best["state_dict"]["0.weight"], model.state_dict()["0.weight"])
    assert (tmp_path / "model_best" / CONSOLIDATED).is_file()  # joined once; read from there afterwards
    again = load_checkpoint(tmp_path / "model_best", EVALUATE)
    assert again["consolidated_from"] == "model_best" and again["optimizer"] is None
    with pytest.raises(UserError, match="resume from that folder"):
        load_checkpoint(tmp_path / "model_best" / CONSOLIDATED, RESUME)


def test_a_rank_other_than_the_main_one_writes_its_part_and_manages_nothing(tmp_path):
    """A non-main rank's Checkpointer writes through its store, but neither latest nor deletions nor logs."""
    written = []

    class Recorded(ShardedStore):
        def write(self, state, path):
            written.append(path.name)

    checkpointer = Checkpointer(tmp_path, keep_last=1, store=Recorded(1, 2, main=False))
    (tmp_path / ".checkpoint-epoch1.tmp").mkdir()  # the main rank's to clean up, not this one's
    checkpointer.save({"epoch": 1}, 1, is_best=True, is_last=False)
    checkpointer.save_step({"epoch": 1}, 15)
    assert written == ["checkpoint-epoch1", "model_best", "checkpoint-step15"]
    assert not (tmp_path / LATEST).exists() and (tmp_path / ".checkpoint-epoch1.tmp").exists()


def test_a_failed_write_is_a_clear_error_and_the_earlier_folder_stays(tmp_path, monkeypatch):
    import errno

    import utils.sharded as sharded

    model, optimizer = model_and_optimizer()
    checkpointer = Checkpointer(tmp_path, keep_last=1, store=ShardedStore(0, 1, main=True))
    checkpointer.save(state(model, optimizer, 1), 1, is_best=False, is_last=False)

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sharded, "_save", full)
    with pytest.raises(UserError, match="cannot write sharded checkpoint .*checkpoint-epoch2: No space left on device"):
        checkpointer.save(state(model, optimizer, 2), 2, is_best=False, is_last=False)
    assert not (tmp_path / "checkpoint-epoch2").exists() and (tmp_path / LATEST).read_text().strip() == \
        "checkpoint-epoch1"
    assert load_checkpoint(tmp_path / "checkpoint-epoch1", RESUME)["epoch"] == 1


def test_a_pth_checkpoint_is_not_resumed_as_a_sharded_run_and_the_other_way_round(tmp_path):
    """Switching trainer.strategy between ddp and fsdp2 on resume is one clear error each way (--init-from starts a
    new run from the weights instead)."""
    from tiny_trainers import build

    trainer = build(tmp_path / "pth", epochs=1)
    trainer.train()
    checkpoint = load_checkpoint(tmp_path / "pth" / "checkpoint-epoch1.pth", RESUME)
    sharded = build(tmp_path / "sharded", epochs=1, strategy="fsdp2")
    with pytest.raises(UserError, match="resumes its own sharded checkpoint folders, and this checkpoint is a .pth"):
        sharded.load_state_dict(checkpoint)
    ShardedStore(0, 1, main=True).write(sharded.state_dict(), tmp_path / "sharded" / "checkpoint-epoch1")
    folder = load_checkpoint(tmp_path / "sharded" / "checkpoint-epoch1", RESUME)
    with pytest.raises(UserError, match="is a sharded checkpoint .trainer.strategy fsdp2.; resume it with"):
        build(tmp_path / "again", epochs=2).load_state_dict(folder)
    sharded.load_state_dict(folder)  # its own kind loads


def test_what_fsdp2_cannot_honour_is_listed_at_once():
    """utils/fsdp.py's checks, without a process group: every problem of a config in one list."""
    import types

    from utils.fsdp import fsdp2_problems

    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))
    args = types.SimpleNamespace(shard=["2", "layer*"], param_dtype="bf16", cpu_offload=True)
    settings = types.SimpleNamespace(ema=object(), sync_batchnorm=True, dist_backend="gloo")
    problems = fsdp2_problems(model, args, settings, torch.device("cuda"))
    assert [p.split(" ")[0] for p in problems] == [
        "trainer.strategy.args.shard:", "trainer.ema", "trainer.sync_batchnorm", "trainer.strategy.args.param_dtype",
        "trainer.strategy"]
    assert "'layer*' matches no module of Sequential" in problems[0] and "the batch norm layers 1 " in problems[3]
    assert fsdp2_problems(model, types.SimpleNamespace(shard=["0"], param_dtype=None, cpu_offload=False),
                          types.SimpleNamespace(ema=None, sync_batchnorm=False, dist_backend=None),
                          torch.device("cpu")) == []


def test_save_top_k_ranks_folders_by_their_plain_values_also_after_a_restart(tmp_path):
    """save_top_k over sharded folders: the k best by the value train_state.pth stores, and the newest; a new
    Checkpointer (a resumed run) reads the folders already there back."""
    from utils.monitor import Monitor

    model, optimizer = model_and_optimizer()

    def save(checkpointer, epoch, value):
        monitor = Monitor("max val_accuracy")
        monitor.update({"epoch": epoch, "val_accuracy": value})
        checkpointer.save(state(model, optimizer, epoch, monitor=monitor.state_dict()), epoch, is_best=False,
                          is_last=False)

    def folders():
        return sorted(p.name for p in tmp_path.glob("checkpoint-epoch*"))

    checkpointer = Checkpointer(tmp_path, save_top_k=1, monitor="max val_accuracy", store=ShardedStore(0, 1, True))
    for epoch, value in enumerate([0.5, 0.9, 0.7], 1):
        save(checkpointer, epoch, value)
    assert folders() == ["checkpoint-epoch2", "checkpoint-epoch3"]
    resumed = Checkpointer(tmp_path, save_top_k=1, monitor="max val_accuracy", store=ShardedStore(0, 1, True))
    save(resumed, 4, 0.95)
    assert folders() == ["checkpoint-epoch4"]
