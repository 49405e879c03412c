"""Distribution heads: features -> the parameters of a normal, categorical or Bernoulli distribution and a
differentiable sample, as typed results that turn into torch.distributions objects.

    head = Distribution(32, "categorical", n_groups=4)    # 4 groups of 8 classes, from 32 features
    res = head(features)                                   # CategoricalResult(logits, probs, sample)
    res.get_distribution().log_prob(res.sample.reshape(res.logits.shape))   # shape (*batch,)

Not an arch: use it inside your own model.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributions as D
import torch.nn.functional as F
from torch import nn

from utils.errors import UserError, did_you_mean

__all__ = ["BernoulliResult", "CategoricalResult", "Distribution", "NormalResult", "cat_dist", "stack_dist"]


@dataclass
class NormalResult:
    """mean, std and sample (reparametrised: mean + std * noise; the mean in deterministic mode), all (*batch, dim)."""

    mean: torch.Tensor
    std: torch.Tensor
    sample: torch.Tensor

    _param_fields = ()  # fields with a trailing class axis beyond the sample's (none here)

    def get_distribution(self, independent: int = 1) -> D.Distribution:
        """Independent(Normal(mean, std), independent): log_prob sums over the last `independent` dims."""
        dist = D.Normal(self.mean, self.std)
        return D.Independent(dist, independent) if independent else dist


@dataclass
class CategoricalResult:
    """logits and probs (*batch, n_groups, n_classes); sample (*batch, n_groups * n_classes): one-hot per group
    (in {-1, 1} when spherical) with straight-through gradients to probs."""

    logits: torch.Tensor
    probs: torch.Tensor
    sample: torch.Tensor

    _param_fields = ("logits", "probs")

    def get_distribution(self, independent: int = 1) -> D.Distribution:
        """Independent(OneHotCategoricalStraightThrough(logits), independent) over the groups: log_prob takes
        one-hot (*batch, n_groups, n_classes) values and sums over the groups."""
        dist = D.OneHotCategoricalStraightThrough(logits=self.logits)
        return D.Independent(dist, independent) if independent else dist


@dataclass
class BernoulliResult:
    """logits and probs (*batch, n_groups, group_size); sample (*batch, n_groups * group_size) in {0, 1}
    (spherical: each group's {-1, 1} vector scaled to unit length) with straight-through gradients to probs."""

    logits: torch.Tensor
    probs: torch.Tensor
    sample: torch.Tensor

    _param_fields = ("logits", "probs")

    def get_distribution(self, independent: int = 2) -> D.Distribution:
        """Independent(Bernoulli(logits), independent): log_prob takes {0, 1} values shaped like logits and sums
        over groups and their members."""
        dist = D.Bernoulli(logits=self.logits)
        return D.Independent(dist, independent) if independent else dist


Result = NormalResult | CategoricalResult | BernoulliResult

_KINDS = ["normal", "categorical", "bernoulli"]


class Distribution(nn.Module):
    """A parameter-free head: (*batch, features) -> a NormalResult, CategoricalResult or BernoulliResult.

    in_dim is the distribution's size: "normal" reads 2 * in_dim features (mean, then std through softplus +
    min_std); "categorical" reads in_dim features as n_groups groups of in_dim // n_groups classes (logits);
    "bernoulli" reads in_dim logits in n_groups groups. spherical (categorical, bernoulli; arXiv 2406.07548)
    maps samples from {0, 1} to {-1, 1}, for Bernoulli scaled so that each group has unit length.
    deterministic (here, or per call) makes the sample the mean / argmax one-hot / rounded probs."""

    def __init__(self, in_dim: int, dist: str = "normal", n_groups: int = 1, spherical: bool = False,
                 deterministic: bool = False, min_std: float = 1e-3):
        super().__init__()
        if dist not in _KINDS:
            raise UserError(f"Distribution.dist: unknown {dist!r}.{did_you_mean(str(dist), _KINDS)} "
                            f"Use one of {', '.join(_KINDS)}")
        if dist != "normal" and (n_groups < 1 or in_dim % n_groups):
            raise UserError(f"Distribution: in_dim {in_dim} does not split into n_groups {n_groups}; "
                            f"use an n_groups that divides {in_dim}")
        if spherical and dist == "normal":
            raise UserError("Distribution.spherical applies to 'categorical' and 'bernoulli', not 'normal'")
        self.in_dim, self.dist, self.n_groups = in_dim, dist, n_groups
        self.spherical, self.deterministic, self.min_std = spherical, deterministic, min_std

    @property
    def input_dim(self) -> int:
        """The number of input features it reads."""
        return 2 * self.in_dim if self.dist == "normal" else self.in_dim

    def forward(self, x: torch.Tensor, deterministic: bool | None = None) -> Result:
        if x.shape[-1] != self.input_dim:
            raise UserError(f"Distribution({self.dist!r}, in_dim={self.in_dim}) reads {self.input_dim} features, "
                            f"got {x.shape[-1]}; make the layer before it output {self.input_dim}")
        det = self.deterministic if deterministic is None else deterministic
        if self.dist == "normal":
            mean, raw = x.chunk(2, dim=-1)
            std = F.softplus(raw) + self.min_std
            sample = mean if det else mean + std * torch.randn_like(std)
            return NormalResult(mean, std, sample)
        logits = x.reshape(*x.shape[:-1], self.n_groups, self.in_dim // self.n_groups)
        if self.dist == "categorical":
            probs = logits.softmax(-1)
            index = probs.argmax(-1) if det else torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).reshape(
                probs.shape[:-1])
            hard = F.one_hot(index, probs.shape[-1]).to(probs.dtype)
        else:
            probs = torch.sigmoid(logits)
            hard = (probs > 0.5).to(probs.dtype) if det else torch.bernoulli(probs.detach())
        # Straight-through: the value of hard (exactly: the bracket is 0), the gradient of probs.
        sample = hard + (probs - probs.detach())
        if self.spherical:
            sample = 2 * sample - 1
            if self.dist == "bernoulli":
                sample = sample / probs.shape[-1] ** 0.5
        sample = sample.flatten(-2)
        return (CategoricalResult if self.dist == "categorical" else BernoulliResult)(logits, probs, sample)

    def extra_repr(self) -> str:
        return (f"in_dim={self.in_dim}, dist={self.dist!r}, n_groups={self.n_groups}, spherical={self.spherical}, "
                f"deterministic={self.deterministic}")


def _combine(results: Sequence[Result], dim: int, op) -> Result:
    if not results:
        raise ValueError("need at least one result")
    cls = type(results[0])
    if any(type(r) is not cls for r in results):
        raise ValueError(f"cannot combine results of different kinds: {sorted({type(r).__name__ for r in results})}")
    values = {}
    for f in dataclasses.fields(cls):
        # logits/probs have one more (class) axis than the sample: a negative dim counts past it.
        d = dim - 1 if (dim < 0 and f.name in cls._param_fields) else dim
        values[f.name] = op([getattr(r, f.name) for r in results], dim=d)
    return cls(**values)


def stack_dist(results: Sequence[Result], dim: int = 0) -> Result:
    """Stack results field by field along a new dim (a negative dim counts from the sample's last dim)."""
    return _combine(results, dim, torch.stack)


def cat_dist(results: Sequence[Result], dim: int = -1) -> Result:
    """Concatenate results field by field; dim=-1 joins features (for categorical/Bernoulli: their groups)."""
    return _combine(results, dim, torch.cat)
