"""Activations by name: every torch.nn activation plus a few from the ml-networks lab library.

`Activation("gelu")`, `Activation("LeakyReLU", negative_slope=0.2)`, `Activation("siglu", dim=1)`.
Names are case-insensitive; "swish" is SiLU and "identity"/"none"/"linear" are nn.Identity.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import UserError, did_you_mean

__all__ = ["Activation", "CRReLU", "L2Norm", "REReLU", "SiGLU", "TanhExp", "activation_names"]


class _REReLUFunction(torch.autograd.Function):
    """ReLU forward, GELU's derivative backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.relu(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        cdf = 0.5 * (1.0 + torch.erf(x * 0.7071067811865476))
        pdf = torch.exp(-0.5 * x * x) * 0.3989422804014327
        return grad * (cdf + x * pdf)  # d/dx [x * Phi(x)]


class REReLU(nn.Module):
    """Reparametrised ReLU: ReLU in the forward pass, the gradient of (exact) GELU in the backward pass."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _REReLUFunction.apply(x)


class SiGLU(nn.Module):
    """Gated SiLU unit: split `dim` into halves (a, b) and return a * silu(b); `dim` halves in size."""

    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[self.dim] % 2:
            raise ValueError(f"SiGLU: dimension {self.dim} has odd size {x.shape[self.dim]}; it must split in halves")
        a, b = x.chunk(2, dim=self.dim)
        return a * F.silu(b)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class CRReLU(nn.Module):
    """Correction-regularised ReLU: relu(x) + eps * x * exp(-x^2 / 2), eps a learnable scalar."""

    def __init__(self, eps: float = 0.01):
        super().__init__()
        self.eps = nn.Parameter(torch.tensor(float(eps)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) + self.eps * x * torch.exp(-0.5 * x * x)


class TanhExp(nn.Module):
    """x * tanh(exp(x)) (arXiv 2003.09855)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # exp overflows to inf for x > ~88 (float32); tanh(inf) = 1, so the result stays x.
        return x * torch.tanh(torch.exp(x))


class L2Norm(nn.Module):
    """Scale to unit L2 norm along `dim` (F.normalize)."""

    def __init__(self, dim: int = -1, eps: float = 1e-12):
        super().__init__()
        self.dim, self.eps = dim, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2.0, dim=self.dim, eps=self.eps)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


_NOT_ACTIVATIONS = {"MultiheadAttention"}
_ALIASES = {"swish": "SiLU", "identity": "Identity", "none": "Identity", "linear": "Identity"}


def _torch_activations() -> dict[str, type]:
    import torch.nn.modules.activation as module

    return {
        name: obj for name, obj in vars(module).items()
        if inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__ == module.__name__
        and name not in _NOT_ACTIVATIONS
    }


def _table() -> dict[str, type]:
    table = _torch_activations()
    table.update(Identity=nn.Identity, REReLU=REReLU, SiGLU=SiGLU, CRReLU=CRReLU, TanhExp=TanhExp, L2Norm=L2Norm)
    return table


def activation_names() -> list[str]:
    """Every name Activation accepts (canonical spelling; lookup ignores case), aliases included."""
    return sorted(_table()) + sorted(_ALIASES)


def Activation(name: str, **kwargs) -> nn.Module:
    """The activation module called name (case-insensitive), built with kwargs; unknown names raise UserError."""
    table = _table()
    by_lower = {n.lower(): cls for n, cls in table.items()}
    key = str(name).lower().replace("_", "").replace("-", "")
    cls = by_lower.get(key) or table.get(_ALIASES.get(key, ""))
    if cls is None:
        raise UserError(
            f"activation: unknown name {name!r}.{did_you_mean(str(name), activation_names())} "
            "Use a torch.nn activation's class name or REReLU, SiGLU, CRReLU, TanhExp, L2Norm"
        )
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise UserError(f"activation {name!r}: bad arguments {kwargs}: {e}") from None
