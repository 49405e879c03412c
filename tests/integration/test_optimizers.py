"""Optimizers from config: parameter groups, and the ones needing more than zero_grad/backward/step."""
from __future__ import annotations

import pytest
import torch

import train
from conftest import run_dir
from utils.errors import UserError


def trained_state(tmp_path, write_config, *overrides: str) -> dict:
    train.main(["-c", str(write_config()), "--run-id", "o", "trainer.epochs=1", *overrides])
    return torch.load(run_dir(tmp_path / "saved", "o")[0] / "checkpoint-epoch1.pth", weights_only=True)


@pytest.mark.slow
def test_no_weight_decay_on_biases_and_norms_when_asked(tmp_path, write_config):
    state = trained_state(tmp_path, write_config, 'optimizer={"type": "AdamW", "args": {"lr": 0.01, '
                          '"weight_decay": 0.1}}', "+optimizer.no_decay_bias_norm=true")
    groups = state["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    shapes = {k: v.dim() for k, v in state["state_dict"].items() if not k.endswith(("running_mean", "running_var",
                                                                                     "num_batches_tracked"))}
    assert len(groups[0]["params"]) == sum(d > 1 for d in shapes.values())
    assert len(groups[1]["params"]) == sum(d <= 1 for d in shapes.values())


@pytest.mark.slow
def test_schedule_free_optimizers_validate_and_save_their_eval_weights(tmp_path, write_config):
    state = trained_state(tmp_path, write_config, 'optimizer={"type": "ScheduleFreeAdamW", "args": {"lr": 0.01}}',
                          "lr_scheduler=null")
    assert all(group["train_mode"] is False for group in state["optimizer"]["param_groups"])


@pytest.mark.slow
def test_second_order_optimizers_get_a_differentiable_backward(tmp_path, write_config):
    trained_state(tmp_path, write_config, 'optimizer={"type": "AdaHessian", "args": {"lr": 0.1}}')
    log = (run_dir(tmp_path / "saved", "o")[1] / "metrics.jsonl").read_text()
    assert '"loss": NaN' not in log and '"epoch": 1' in log


@pytest.mark.parametrize("name, reason", [("LOMO", "takes the model instead of the parameters"),
                                          ("Muon", "only takes 2-D weight matrices"),
                                          ("NorMuon", "parameter groups flagged use_muon")])
def test_optimizers_a_config_cannot_drive_are_refused_with_the_reason(tmp_path, write_config, name, reason):
    with pytest.raises(UserError, match=f"optimizer.type: {name} cannot be used from a config: .*{reason}"):
        train.main(["-c", str(write_config()), f'optimizer={{"type": "{name}", "args": {{}}}}'])
    assert not (tmp_path / "saved").exists()
