"""Metrics: every public function defined here can be named in the config's metrics.

A metric takes (output, target) and returns the batch mean, preferably as a tensor: the trainer
averages it over the epoch weighted by batch size and reads it from the device once per epoch.
A metric that returns a Python float (like the original template's, with .item()) works too.
"""
import torch


def accuracy(output, target):
    """Fraction of samples whose highest-scoring class is the target."""
    return (output.argmax(dim=1) == target).float().mean()


def top_k_acc(output, target, k: int = 3):
    """Fraction of samples whose target is among the k highest-scoring classes (1 when k >= the classes)."""
    top = torch.topk(output, min(k, output.shape[1]), dim=1).indices
    return (top == target.unsqueeze(1)).any(dim=1).float().mean()
