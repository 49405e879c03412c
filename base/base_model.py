"""Base class for models: forward() to implement, and a printout with the parameter count."""
from __future__ import annotations

from torch import nn


class BaseModel(nn.Module):
    """An nn.Module whose str() ends with its number of trainable parameters."""

    def forward(self, *inputs):
        raise NotImplementedError

    def __str__(self) -> str:
        params = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return super().__str__() + f"\nTrainable parameters: {params}"
