"""Tests for model/activations.py: every torch.nn activation and the custom ones by name, aliases, formulas."""
from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model.activations import (
    Activation,
    CRReLU,
    L2Norm,
    REReLU,
    SiGLU,
    TanhExp,
    activation_names,
)
from utils.errors import UserError

torch.manual_seed(0)


TORCH_ACTIVATIONS = [
    name for name, obj in vars(torch.nn.modules.activation).items()
    if inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__ == "torch.nn.modules.activation"
    and name != "MultiheadAttention"
]
CUSTOM = ["REReLU", "SiGLU", "CRReLU", "TanhExp", "L2Norm"]
REQUIRED_ARGS = {"Threshold": {"threshold": 0.1, "value": -1.0}}


def test_activation_names_cover_torch_and_custom():
    names = set(activation_names())
    assert set(TORCH_ACTIVATIONS) | set(CUSTOM) <= names
    assert len(TORCH_ACTIVATIONS) > 20  # the scan found torch's activations


@pytest.mark.parametrize("name", sorted(set(TORCH_ACTIVATIONS) | set(CUSTOM)))
@pytest.mark.filterwarnings("ignore:Implicit dimension choice")
def test_every_activation_builds_and_runs(name):
    for spelling in (name, name.lower(), name.upper()):
        act = Activation(spelling, **REQUIRED_ARGS.get(name, {}))
        x = torch.randn(2, 4, 6, requires_grad=True)
        y = act(x)
        assert torch.isfinite(y).all()
        y.float().sum().backward()
    expected = getattr(nn, name, None) or getattr(__import__("model.activations", fromlist=[name]), name)
    assert type(act) is expected


@pytest.mark.parametrize("alias, cls", [("swish", nn.SiLU), ("leaky_relu", nn.LeakyReLU), ("Leaky-ReLU", nn.LeakyReLU),
                                        ("identity", nn.Identity), ("none", nn.Identity), ("gelu", nn.GELU)])
def test_activation_aliases(alias, cls):
    assert type(Activation(alias)) is cls


def test_activation_kwargs_are_passed():
    assert Activation("leakyrelu", negative_slope=0.3).negative_slope == 0.3
    assert Activation("siglu", dim=1).dim == 1


def test_unknown_activation_names_the_nearest():
    with pytest.raises(UserError, match=r"unknown name 'gleu'.*Did you mean .*'GELU'"):
        Activation("gleu")
    with pytest.raises(UserError, match="bad arguments"):
        Activation("relu", slope=2)


def test_rerelu_forward_is_relu_and_gradient_is_gelus():
    x = torch.linspace(-4, 4, 101, dtype=torch.float64, requires_grad=True)
    y = REReLU()(x)
    torch.testing.assert_close(y, torch.relu(x))
    (grad,) = torch.autograd.grad(y.sum(), x)
    x2 = x.detach().clone().requires_grad_()
    (gelu_grad,) = torch.autograd.grad(F.gelu(x2).sum(), x2)
    torch.testing.assert_close(grad, gelu_grad)
    assert not torch.allclose(grad, (x > 0).double())  # not ReLU's step gradient


def test_siglu_halves_the_dim():
    x = torch.randn(3, 8, dtype=torch.float64)
    a, b = x[:, :4], x[:, 4:]
    torch.testing.assert_close(SiGLU()(x), a * b / (1 + torch.exp(-b)))
    x = torch.randn(2, 6, 5)
    out = SiGLU(dim=1)(x)
    assert out.shape == (2, 3, 5)
    torch.testing.assert_close(out, x[:, :3] * torch.sigmoid(x[:, 3:]) * x[:, 3:])
    with pytest.raises(ValueError, match="odd size 5"):
        SiGLU()(x)


def test_crrelu_formula_and_learnable_eps():
    act = CRReLU()
    assert isinstance(act.eps, nn.Parameter) and act.eps.requires_grad
    assert act.eps.item() == pytest.approx(0.01)
    assert [p for p in act.parameters()] == [act.eps]
    with torch.no_grad():
        act.eps.fill_(0.5)
    x = torch.randn(50, dtype=torch.float64)
    expected = x.clamp(min=0) + 0.5 * x * torch.exp(-x ** 2 / 2)
    y = act(x.float())
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-6)
    y.sum().backward()
    torch.testing.assert_close(act.eps.grad.double(), (x * torch.exp(-x ** 2 / 2)).sum(), rtol=1e-4, atol=1e-5)


def test_tanhexp_formula_and_large_inputs():
    x = torch.linspace(-10, 5, 61, dtype=torch.float64)
    expected = torch.tensor([v * math.tanh(math.exp(v)) for v in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(TanhExp()(x), expected)
    big = TanhExp()(torch.tensor([100.0, 1000.0]))
    assert big.tolist() == [100.0, 1000.0]


def test_l2norm():
    x = torch.randn(4, 7, 3)
    torch.testing.assert_close(L2Norm()(x).norm(dim=-1), torch.ones(4, 7))
    torch.testing.assert_close(L2Norm(dim=1)(x).norm(dim=1), torch.ones(4, 3))
