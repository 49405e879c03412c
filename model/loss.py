"""Loss functions: every public function or class defined here can be named in the config's loss.

torch.nn's loss classes (CrossEntropyLoss, ...) can be named too, with their args.
"""
import torch.nn.functional as F


def nll_loss(output, target):
    """Negative log-likelihood of log-probabilities (mean over the batch)."""
    return F.nll_loss(output, target)


def cross_entropy(output, target, label_smoothing: float = 0.0):
    """Cross-entropy of logits (mean over the batch)."""
    return F.cross_entropy(output, target, label_smoothing=label_smoothing)
