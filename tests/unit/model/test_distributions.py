"""Tests for model/distributions.py: normal, categorical and Bernoulli heads, deterministic mode, stack and cat."""
from __future__ import annotations

import pytest
import torch

import model  # noqa: F401  (registers the archs)
from model.distributions import (
    BernoulliResult,
    CategoricalResult,
    Distribution,
    NormalResult,
    cat_dist,
    stack_dist,
)
from utils.errors import UserError
from utils.registry import ARCHS

torch.manual_seed(0)


def test_normal_head():
    head = Distribution(4, "normal")
    x = torch.randn(2, 3, 8, requires_grad=True)
    res = head(x)
    assert isinstance(res, NormalResult)
    assert res.mean.shape == res.std.shape == res.sample.shape == (2, 3, 4)
    assert (res.std > 0).all()
    torch.testing.assert_close(res.mean, x[..., :4])
    dist = res.get_distribution()
    assert isinstance(dist, torch.distributions.Independent) and isinstance(dist.base_dist, torch.distributions.Normal)
    expected = torch.distributions.Normal(res.mean, res.std).log_prob(res.sample).sum(-1)
    torch.testing.assert_close(dist.log_prob(res.sample), expected)
    res.sample.sum().backward()  # reparametrised
    assert x.grad[..., 4:].abs().sum() > 0
    with pytest.raises(UserError, match="reads 8 features, got 6"):
        head(torch.randn(2, 6))


def test_categorical_head_straight_through():
    head = Distribution(12, "categorical", n_groups=3)
    x = torch.randn(5, 12, requires_grad=True)
    res = head(x)
    assert isinstance(res, CategoricalResult)
    assert res.logits.shape == res.probs.shape == (5, 3, 4) and res.sample.shape == (5, 12)
    onehot = res.sample.reshape(5, 3, 4)
    assert ((onehot == 0) | (onehot == 1)).all() and (onehot.sum(-1) == 1).all()
    torch.testing.assert_close(res.probs.sum(-1), torch.ones(5, 3))
    dist = res.get_distribution()
    assert isinstance(dist.base_dist, torch.distributions.OneHotCategorical)
    logp = dist.log_prob(onehot)
    assert logp.shape == (5,)
    torch.testing.assert_close(logp, (onehot * res.probs.log()).sum((-1, -2)))
    # straight-through: the gradient of the one-hot sample is the gradient of probs
    w = torch.randn(12)
    (res.sample * w).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    (x2.reshape(5, 3, 4).softmax(-1).reshape(5, 12) * w).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    assert x.grad.abs().sum() > 0


def test_bernoulli_head():
    head = Distribution(8, "bernoulli", n_groups=2)
    x = torch.randn(4, 8, requires_grad=True)
    res = head(x)
    assert isinstance(res, BernoulliResult)
    assert res.logits.shape == (4, 2, 4) and res.sample.shape == (4, 8)
    assert ((res.sample == 0) | (res.sample == 1)).all()
    dist = res.get_distribution()
    assert isinstance(dist.base_dist, torch.distributions.Bernoulli)
    assert dist.log_prob(res.sample.reshape(4, 2, 4)).shape == (4,)
    res.sample.sum().backward()
    torch.testing.assert_close(x.grad, (torch.sigmoid(x) * (1 - torch.sigmoid(x))).detach())


def test_spherical_samples():
    cat = Distribution(12, "categorical", n_groups=3, spherical=True)(torch.randn(5, 12))
    assert set(cat.sample.unique().tolist()) == {-1.0, 1.0}
    ber = Distribution(8, "bernoulli", n_groups=2, spherical=True)(torch.randn(5, 8))
    torch.testing.assert_close(ber.sample.reshape(5, 2, 4).norm(dim=-1), torch.ones(5, 2))
    with pytest.raises(UserError, match="spherical applies to"):
        Distribution(4, "normal", spherical=True)


@pytest.mark.parametrize("kind", ["normal", "categorical", "bernoulli"])
def test_deterministic_mode(kind):
    x = torch.randn(6, 16)
    in_dim = 8 if kind == "normal" else 16
    head = Distribution(in_dim, kind, n_groups=1 if kind == "normal" else 4, deterministic=True)
    torch.manual_seed(1)
    a = head(x).sample
    torch.manual_seed(2)
    b = head(x).sample
    assert torch.equal(a, b)
    res = head(x)
    if kind == "normal":
        assert torch.equal(res.sample, res.mean)
    elif kind == "categorical":
        assert torch.equal(res.sample.reshape(res.probs.shape).argmax(-1), res.probs.argmax(-1))
    else:
        assert torch.equal(res.sample.reshape(res.probs.shape), res.probs.round())
    stochastic = Distribution(in_dim, kind, n_groups=1 if kind == "normal" else 4)
    assert not torch.equal(stochastic(x).sample, stochastic(x).sample)
    assert torch.equal(stochastic(x, deterministic=True).sample, a)


@pytest.mark.parametrize("kind", ["normal", "categorical", "bernoulli"])
def test_stack_and_cat(kind):
    head = Distribution(6 if kind == "normal" else 12, kind, n_groups=1 if kind == "normal" else 3)
    feats = 12
    results = [head(torch.randn(4, feats)) for _ in range(3)]
    stacked = stack_dist(results)
    assert type(stacked) is type(results[0])
    for field, value in vars(stacked).items():
        assert value.shape == (3, *getattr(results[0], field).shape)
        torch.testing.assert_close(value[1], getattr(results[1], field))
    joined = cat_dist(results)
    assert joined.sample.shape == (4, 3 * results[0].sample.shape[-1])
    if kind != "normal":
        assert joined.logits.shape == (4, 9, 4)  # groups joined, classes kept
        assert joined.get_distribution().log_prob(joined.sample.reshape(4, 9, 4)).shape == (4,)
    else:
        assert joined.mean.shape == (4, 18)
    with pytest.raises(ValueError, match="different kinds"):
        cat_dist([results[0], Distribution(4, "normal")(torch.randn(4, 8))] if kind != "normal"
                 else [results[0], Distribution(12, "bernoulli")(torch.randn(4, 12))])


def test_distribution_is_not_an_arch():
    assert "Distribution" not in ARCHS.names()
    with pytest.raises(UserError, match="unknown 'gauss'"):
        Distribution(4, "gauss")
    with pytest.raises(UserError, match="does not split into n_groups 5"):
        Distribution(12, "categorical", n_groups=5)
