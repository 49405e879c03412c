"""Losses of the model zoo, nameable in config's loss: focal losses, Charbonnier, focal frequency loss.

Each docstring says how the loss reduces. torch.nn's losses and pytorch_optimizer's (DiceLoss,
FocalTverskyLoss, ...) are nameable too, through the loss registry's library providers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FocalFrequencyLoss", "binary_focal_loss", "charbonnier", "focal_loss"]

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def focal_loss(output: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               alpha: float | list[float] | None = None, reduction: str = "mean") -> torch.Tensor:
    """Multi-class focal loss of logits (arXiv 1708.02002): -alpha_t * (1 - p_t)^gamma * log p_t, softmax over dim 1.

    output (N, C) or (N, C, d1, ...) logits; target (N) or (N, d1, ...) class indices. alpha: none, one weight
    for all classes, or one per class. Reduction: "mean" (default) averages over all N*d1*... elements (a
    plain mean even with per-class alpha, unlike cross_entropy's weight), "sum" adds them, "none" keeps them.
    gamma=0 and no alpha is cross-entropy."""
    log_p = F.log_softmax(output, dim=1)
    log_pt = log_p.gather(1, target.unsqueeze(1)).squeeze(1)
    loss = -((1 - log_pt.exp()) ** gamma) * log_pt
    if alpha is not None:
        if isinstance(alpha, (int, float)):
            loss = alpha * loss
        else:
            loss = torch.as_tensor(alpha, dtype=loss.dtype, device=loss.device)[target] * loss
    return _reduce(loss, reduction)


def binary_focal_loss(output: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float | None = 0.25,
                      reduction: str = "mean") -> torch.Tensor:
    """Binary focal loss of logits (sigmoid per element), as torchvision.ops.sigmoid_focal_loss:
    -alpha_t * (1 - p_t)^gamma * log p_t with alpha_t = alpha for positives and 1 - alpha for negatives (alpha
    None: no weighting). target: same shape, in [0, 1]. Reduction: "mean" (default) over all elements, "sum",
    or "none"."""
    target = target.to(output.dtype)
    p = torch.sigmoid(output)
    ce = F.binary_cross_entropy_with_logits(output, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha is not None:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return _reduce(loss, reduction)


def charbonnier(output: torch.Tensor, target: torch.Tensor, eps: float = 1e-3, alpha: float = 1.0,
                reduction: str = "mean") -> torch.Tensor:
    """Charbonnier (generalised L1) loss ((output - target)^2 + eps^2)^(alpha / 2). Reduction: "mean"
    (default) over all elements, "sum", or "none". alpha=2, eps=0 is the squared error."""
    loss = ((output - target) ** 2 + eps * eps) ** (alpha / 2)
    return _reduce(loss, reduction)


class FocalFrequencyLoss(nn.Module):
    """Focal frequency loss (Jiang et al., arXiv 2012.12821) for images (N, C, H, W) (or (N, ..., H, W)).

    Both images are cut into patch_factor x patch_factor patches and each patch gets an orthonormal 2D DFT; the
    loss is the squared distance |F_pred - F_target|^2 per frequency, weighted by the spectrum weight matrix
    w = |F_pred - F_target|^alpha (log(1 + w) with log_matrix), scaled to [0, 1] by its maximum over each
    patch's spectrum (over the whole batch with batch_matrix) and detached. ave_spectrum compares the
    mini-batch average spectra. Reduction: the mean over batch, patches, channels and frequencies, times
    loss_weight. forward(pred, target, matrix=None): a given matrix replaces the computed weights."""

    def __init__(self, loss_weight: float = 1.0, alpha: float = 1.0, patch_factor: int = 1,
                 ave_spectrum: bool = False, log_matrix: bool = False, batch_matrix: bool = False):
        super().__init__()
        if patch_factor < 1:
            raise ValueError(f"FocalFrequencyLoss: patch_factor must be at least 1, got {patch_factor}")
        self.loss_weight, self.alpha, self.patch_factor = loss_weight, alpha, patch_factor
        self.ave_spectrum, self.log_matrix, self.batch_matrix = ave_spectrum, log_matrix, batch_matrix

    def _spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """(N, P, C, ph, pw) complex spectra of the P = patch_factor^2 patches, row-major patch order."""
        if x.dim() < 3:
            raise ValueError(f"FocalFrequencyLoss needs images (N, C, H, W), got shape {list(x.shape)}")
        n, (h, w), f = x.shape[0], x.shape[-2:], self.patch_factor
        if h % f or w % f:
            raise ValueError(f"FocalFrequencyLoss: patch_factor {f} does not divide the image size {h}x{w}")
        x = x.reshape(n, -1, f, h // f, f, w // f).permute(0, 2, 4, 1, 3, 5)  # (N, f, f, C, ph, pw)
        x = x.reshape(n, f * f, -1, h // f, w // f)
        return torch.fft.fft2(x if x.dtype in (torch.float32, torch.float64) else x.float(), norm="ortho")

    def forward(self, pred: torch.Tensor, target: torch.Tensor, matrix: torch.Tensor | None = None) -> torch.Tensor:
        pred_freq, target_freq = self._spectrum(pred), self._spectrum(target)
        if self.ave_spectrum:
            pred_freq = pred_freq.mean(0, keepdim=True)
            target_freq = target_freq.mean(0, keepdim=True)
        distance = (pred_freq - target_freq).abs() ** 2
        if matrix is not None:
            weight = matrix.detach()
        else:
            weight = distance.detach().sqrt() ** self.alpha
            if self.log_matrix:
                weight = torch.log1p(weight)
            top = weight.amax() if self.batch_matrix else weight.amax(dim=(-2, -1), keepdim=True)
            weight = torch.nan_to_num(weight / top, nan=0.0).clamp(0.0, 1.0)  # 0/0 where the spectra agree
        return (weight * distance).mean() * self.loss_weight
