"""Zoo losses checked against independent implementations; every zoo and pytorch_optimizer loss name builds."""
from __future__ import annotations

import cmath
import functools
import inspect
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

import model  # noqa: F401  (registers the losses)
from config.validation import check_callable_spec
from model import zoo_losses
from model.zoo_losses import (
    FocalFrequencyLoss,
    binary_focal_loss,
    charbonnier,
    focal_loss,
)
from utils.registry import LOSSES

torch.manual_seed(0)


# ------------------------------------------------------------------ focal losses

def _focal_reference(logits: np.ndarray, target: np.ndarray, gamma: float, alpha) -> np.ndarray:
    """Per-sample focal loss, one sample at a time in numpy."""
    out = []
    for row, t in zip(logits, target):
        p = np.exp(row - row.max())
        p = p / p.sum()
        weight = 1.0 if alpha is None else (alpha if np.isscalar(alpha) else alpha[t])
        out.append(-weight * (1 - p[t]) ** gamma * math.log(p[t]))
    return np.array(out)


def test_focal_loss_with_gamma_0_is_cross_entropy():
    x, t = torch.randn(32, 7), torch.randint(0, 7, (32,))
    torch.testing.assert_close(focal_loss(x, t, gamma=0.0), F.cross_entropy(x, t))
    # segmentation-shaped input: classes on dim 1
    x, t = torch.randn(4, 5, 3, 6), torch.randint(0, 5, (4, 3, 6))
    torch.testing.assert_close(focal_loss(x, t, gamma=0.0), F.cross_entropy(x, t))
    torch.testing.assert_close(focal_loss(x, t, gamma=0.0, reduction="none"), F.cross_entropy(x, t, reduction="none"))


@pytest.mark.parametrize("gamma, alpha", [(2.0, None), (0.5, 0.25), (3.0, [0.1, 0.2, 0.3, 0.4, 1.0])])
def test_focal_loss_matches_a_per_sample_reference(gamma, alpha):
    x, t = torch.randn(40, 5, dtype=torch.float64) * 3, torch.randint(0, 5, (40,))
    expected = _focal_reference(x.numpy(), t.numpy(), gamma, alpha)
    got = focal_loss(x, t, gamma=gamma, alpha=alpha, reduction="none")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    assert focal_loss(x, t, gamma=gamma, alpha=alpha).item() == pytest.approx(expected.mean(), rel=1e-10)
    total = focal_loss(x, t, gamma=gamma, alpha=alpha, reduction="sum").item()
    assert total == pytest.approx(expected.sum(), rel=1e-10)
    assert focal_loss(x, t, gamma=gamma).item() < F.cross_entropy(x, t).item()  # easy examples down-weighted


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("gamma, alpha", [(2.0, 0.25), (0.0, 0.5), (1.5, None)])
def test_binary_focal_loss_matches_torchvision(reduction, gamma, alpha):
    x = torch.randn(8, 3, 5) * 2
    t = torch.randint(0, 2, (8, 3, 5)).float()
    expected = torchvision.ops.sigmoid_focal_loss(x, t, alpha=-1 if alpha is None else alpha, gamma=gamma,
                                                  reduction=reduction)
    torch.testing.assert_close(binary_focal_loss(x, t, gamma=gamma, alpha=alpha, reduction=reduction), expected)


def test_binary_focal_loss_takes_integer_targets():
    x, t = torch.randn(10), torch.randint(0, 2, (10,))
    torch.testing.assert_close(binary_focal_loss(x, t, gamma=0.0, alpha=None),
                               F.binary_cross_entropy_with_logits(x, t.float()))


# ------------------------------------------------------------------ charbonnier

def test_charbonnier_special_cases():
    a, b = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(charbonnier(a, b, eps=0.0, alpha=2.0), F.mse_loss(a, b))
    torch.testing.assert_close(charbonnier(a, b, eps=0.0, alpha=1.0), F.l1_loss(a, b))
    assert charbonnier(a, a, eps=1e-3).item() == pytest.approx(1e-3)


@pytest.mark.parametrize("eps, alpha", [(1e-3, 1.0), (0.5, 0.5), (0.1, 3.0)])
def test_charbonnier_formula(eps, alpha):
    a, b = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    expected = [math.pow((p - q) ** 2 + eps ** 2, alpha / 2) for p, q in zip(a.tolist(), b.tolist())]
    np.testing.assert_allclose(charbonnier(a, b, eps, alpha, reduction="none").numpy(), expected, rtol=1e-12)
    assert charbonnier(a, b, eps, alpha).item() == pytest.approx(sum(expected) / 50, rel=1e-12)
    assert charbonnier(a, b, eps, alpha, reduction="sum").item() == pytest.approx(sum(expected), rel=1e-12)


# ------------------------------------------------------------------ focal frequency loss

def _dft2(block: list[list[float]]) -> list[list[complex]]:
    """Orthonormal 2D DFT by its definition."""
    h, w = len(block), len(block[0])
    return [[sum(block[y][x] * cmath.exp(-2j * math.pi * (u * y / h + v * x / w)) for y in range(h) for x in range(w))
             / math.sqrt(h * w) for v in range(w)] for u in range(h)]


def _ffl_reference(pred, target, loss_weight=1.0, alpha=1.0, patch_factor=1, ave_spectrum=False, log_matrix=False,
                   batch_matrix=False) -> float:
    """The paper's loss with loops: spectra of each (sample, patch, channel), weights, weighted mean."""
    n, c, h, w = pred.shape
    ph, pw = h // patch_factor, w // patch_factor
    spectra = {}  # (which, sample, patch, channel) -> spectrum
    for which, img in (("p", pred), ("t", target)):
        for i in range(n):
            for pi in range(patch_factor):
                for pj in range(patch_factor):
                    for ch in range(c):
                        block = img[i, ch, pi * ph:(pi + 1) * ph, pj * pw:(pj + 1) * pw].tolist()
                        spectra[which, i, pi * patch_factor + pj, ch] = _dft2(block)
    samples = range(n)
    if ave_spectrum:
        for which in "pt":
            for k in range(patch_factor ** 2):
                for ch in range(c):
                    spectra[which, "avg", k, ch] = [[sum(spectra[which, i, k, ch][u][v] for i in range(n)) / n
                                                     for v in range(pw)] for u in range(ph)]
        samples = ["avg"]
    dist, weight = {}, {}
    for i in samples:
        for k in range(patch_factor ** 2):
            for ch in range(c):
                for u in range(ph):
                    for v in range(pw):
                        diff = spectra["p", i, k, ch][u][v] - spectra["t", i, k, ch][u][v]
                        dist[i, k, ch, u, v] = abs(diff) ** 2
                        wt = abs(diff) ** alpha
                        weight[i, k, ch, u, v] = math.log(wt + 1.0) if log_matrix else wt
    if batch_matrix:
        top = max(weight.values())
        scale = {key: top for key in weight}
    else:
        scale = {key: max(weight[key[:3] + (u, v)] for u in range(ph) for v in range(pw)) for key in weight}
    total = sum(min(max(weight[key] / scale[key] if scale[key] else 0.0, 0.0), 1.0) * dist[key] for key in dist)
    return loss_weight * total / len(dist)


FFL_OPTIONS = [dict(zip(("patch_factor", "ave_spectrum", "log_matrix", "batch_matrix"), combo))
               for combo in itertools.product([1, 2], [False, True], [False, True], [False, True])]


@pytest.mark.parametrize("options", FFL_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_focal_frequency_loss_matches_the_loop_reference(options):
    torch.manual_seed(1)
    pred, target = torch.randn(2, 2, 4, 4, dtype=torch.float64), torch.randn(2, 2, 4, 4, dtype=torch.float64)
    got = FocalFrequencyLoss(loss_weight=1.7, alpha=1.3, **options)(pred, target)
    expected = _ffl_reference(pred.numpy(), target.numpy(), loss_weight=1.7, alpha=1.3, **options)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_focal_frequency_loss_identities():
    pred, target = torch.randn(3, 2, 8, 6), torch.randn(3, 2, 8, 6)
    # alpha=0 weights every frequency by 1, and by Parseval (orthonormal DFT) that is the squared error
    for f in (1, 2):
        loss = FocalFrequencyLoss(alpha=0.0, patch_factor=f)(pred, target)
        torch.testing.assert_close(loss, F.mse_loss(pred, target))
    assert FocalFrequencyLoss()(pred, pred).item() == 0.0  # no NaN from 0/0 weights
    torch.testing.assert_close(FocalFrequencyLoss()(pred, target, matrix=torch.ones(1)), F.mse_loss(pred, target))
    with pytest.raises(ValueError, match="patch_factor 4 does not divide the image size 8x6"):
        FocalFrequencyLoss(patch_factor=4)(pred, target)


def test_focal_frequency_loss_weights_are_detached():
    pred = torch.randn(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    FocalFrequencyLoss()(pred, target).backward()
    # with the weights held fixed, the loss is sum(w * |F(p) - F(t)|^2) / n: its gradient by finite differences
    loss = FocalFrequencyLoss()
    with torch.no_grad():
        fp, ft = loss._spectrum(pred), loss._spectrum(target)
        w = (fp - ft).abs()
        w = w / w.amax(dim=(-2, -1), keepdim=True)

    def fixed(p):
        return (w * (loss._spectrum(p) - ft).abs() ** 2).mean()

    expected = torch.autograd.functional.jacobian(fixed, pred.detach())
    torch.testing.assert_close(pred.grad, expected)


# ------------------------------------------------------------------ every registered name builds

def _multiclass():
    return torch.randn(8, 4), torch.randint(0, 4, (8,))


def _binary_logits():
    return torch.randn(4, 1, 6, 6), torch.randint(0, 2, (4, 1, 6, 6)).float()


def _binary_probs():
    return torch.rand(4, 1, 6, 6).clamp(0.05, 0.95), torch.randint(0, 2, (4, 1, 6, 6)).float()


# name -> (args as a config would give them, make (output, target))
LOSS_CASES = {
    "focal_loss": ({"gamma": 2.0}, _multiclass),
    "binary_focal_loss": ({"alpha": 0.25}, _binary_logits),
    "charbonnier": ({"eps": 0.001}, lambda: (torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8))),
    "FocalFrequencyLoss": ({"patch_factor": 2}, lambda: (torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8))),
    "BCEFocalLoss": ({}, _binary_probs),
    "BCELoss": ({}, _binary_probs),  # torch.nn's, which wins the shared name
    "FocalLoss": ({}, _binary_logits),
    "SoftF1Loss": ({}, _binary_probs),
    "DiceLoss": ({"mode": "binary"}, _binary_logits),
    "JaccardLoss": ({"mode": "binary"}, _binary_logits),
    "TverskyLoss": ({}, _binary_logits),
    "FocalTverskyLoss": ({"gamma": 2.0}, _binary_logits),
    "LovaszHingeLoss": ({}, _binary_logits),
    "LDAMLoss": ({"num_class_list": [10, 20, 30, 40]}, _multiclass),
    "FocalCosineLoss": ({}, _multiclass),
    "BiTemperedLogisticLoss": ({"t1": 0.8, "t2": 1.2}, _multiclass),
    "BinaryBiTemperedLogisticLoss": ({"t1": 0.8, "t2": 1.2}, _binary_logits),
}


def _zoo_and_pytorch_optimizer_names() -> list[str]:
    names = []
    for name in LOSSES.names():
        module = getattr(LOSSES.find(name), "__module__", "") or ""
        if module == zoo_losses.__name__ or module.startswith("pytorch_optimizer"):
            names.append(name)
    return names


NAMES = _zoo_and_pytorch_optimizer_names()


def test_registry_has_the_zoo_and_pytorch_optimizer_losses():
    assert set(zoo_losses.__all__) <= set(NAMES)
    import pytorch_optimizer

    keys = pytorch_optimizer.get_supported_loss_functions()
    assert len([n for n in NAMES if n.lower() in keys]) == len(keys) - 1  # all but BCELoss, which is torch's
    assert LOSSES.get("BCELoss", "loss") is torch.nn.BCELoss
    assert LOSSES.get("DiceLoss", "loss").__module__.startswith("pytorch_optimizer")
    assert LOSSES.get("focaltverskyloss", "loss").__name__ == "FocalTverskyLoss"  # case-insensitive lookup


@pytest.mark.parametrize("name", sorted(set(NAMES) | {"BCELoss"}))
def test_every_zoo_and_pytorch_optimizer_loss_builds_and_computes(name):
    if name not in LOSS_CASES:
        pytest.fail(f"loss {name!r} is registered but has no example in LOSS_CASES; add one")
    args, make = LOSS_CASES[name]
    assert check_callable_spec({"type": name, "args": args}, "loss", LOSSES) == []  # config validation accepts it
    obj = LOSSES.get(name, "loss")
    loss_fn = obj(**args) if inspect.isclass(obj) else functools.partial(obj, **args)
    output, target = make()
    output.requires_grad_()
    loss = loss_fn(output, target)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert output.grad is not None and torch.isfinite(output.grad).all()


@pytest.mark.parametrize("fn, make", [(focal_loss, _multiclass), (binary_focal_loss, _binary_logits),
                                      (charbonnier, _binary_logits)])
def test_reductions(fn, make):
    output, target = make()
    none = fn(output, target, reduction="none")
    assert none.shape == (target.shape if fn is focal_loss else output.shape)
    torch.testing.assert_close(fn(output, target), none.mean())
    torch.testing.assert_close(fn(output, target, reduction="sum"), none.sum())
    with pytest.raises(ValueError, match="reduction must be one of"):
        fn(output, target, reduction="average")


def test_loss_docstrings_state_the_reduction():
    for name in zoo_losses.__all__:
        assert "Reduction" in getattr(zoo_losses, name).__doc__, name
