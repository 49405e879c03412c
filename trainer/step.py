"""One optimizer step: mixed precision, gradient accumulation, clipping, and optimizers that re-evaluate."""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn

from utils.errors import UserError
from utils.fsdp import gradients_unsynced

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
SECOND_ORDER = {"AdaHessian", "SophiaH"}  # pytorch_optimizer's, which need loss.backward(create_graph=True)
Forward = Callable[[], "tuple[torch.Tensor, Any]"]


class Stepper:
    """Turns a forward pass into gradients and, at the end of each accumulation group, an optimizer step."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, *,
                 amp: str | None = None, accumulate_steps: int = 1, clip_grad_norm: float | None = None,
                 skip_nonfinite: bool = False):
        self.model, self.optimizer, self.device = model, optimizer, device
        self.dtype = AMP_DTYPES.get(amp)
        self.accumulate_steps = accumulate_steps
        self.clip_grad_norm = clip_grad_norm
        self.skip_nonfinite = skip_nonfinite
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
        # Optimizers such as LBFGS re-evaluate the loss through a closure; GradScaler and accumulation cannot.
        self.use_closure = self.scaler is None and accumulate_steps == 1
        # Second-order optimizers read Hessian information from a differentiable backward pass.
        self.create_graph = type(optimizer).__name__ in SECOND_ORDER
        if _needs_closure(optimizer) and not self.use_closure:
            raise UserError(f"optimizer.type {type(optimizer).__name__} re-evaluates the loss through a closure, "
                            f"which trainer.amp='fp16' and trainer.accumulate_steps > 1 do not allow; turn those off")

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for a forward pass (a no-op without trainer.amp)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def step(self, forward: Forward, micro: int, group: int) -> tuple[torch.Tensor, Any, bool]:
        """Run micro-step `micro` of an accumulation group of `group` batches: forward, backward and, after the
        last one, the optimizer step. Returns the loss, the output and whether the batch counted (False
        only when skipping a non-finite loss)."""
        if self.use_closure:
            return self._closure_step(forward)
        if micro == 0:
            self.optimizer.zero_grad(set_to_none=True)
        last = micro == group - 1
        with self.autocast():
            loss, output = forward()
        finite = self._finite(loss)
        if finite:
            scaled = loss / group if group > 1 else loss
            sync = contextlib.nullcontext() if last else gradients_unsynced(self.model)
            with sync:  # DDP all-reduces (FSDP2 reduce-scatters) gradients only on the group's last backward
                (self.scaler.scale(scaled) if self.scaler else scaled).backward(create_graph=self.create_graph)
        if last:
            if self.scaler is not None:
                if self.clip_grad_norm is not None:  # clipping needs true gradients; else scaler.step unscales
                    self.scaler.unscale_(self.optimizer)
                    self._clip()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self._clip()
                self.optimizer.step()
        return loss, output, finite

    def _closure_step(self, forward: Forward) -> tuple[torch.Tensor, Any, bool]:
        result = []

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                loss, output = forward()
            finite = self._finite(loss)
            if finite:
                loss.backward(create_graph=self.create_graph)  # else no gradients: nothing changes
                self._clip()
            result[:] = [loss, output, finite]
            return loss

        self.optimizer.step(closure)
        return result[0], result[1], result[2]

    def _finite(self, loss: torch.Tensor) -> bool:
        return not self.skip_nonfinite or bool(torch.isfinite(loss))  # a host sync only when skipping

    def _clip(self) -> None:
        if self.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)

    def state_dict(self) -> dict | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def _needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    return isinstance(optimizer, torch.optim.LBFGS)
