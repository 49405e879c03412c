"""The one device chooser of every command: training, evaluation, prediction and export."""
from __future__ import annotations

import logging

import torch

from utils import distributed
from utils.distributed import SINGLE, Dist


def choose_device(n_gpu: int, flag: str | None = None, dist: Dist = SINGLE, *,
                  one: bool = False) -> tuple[torch.device, list[int]]:
    """(this process's device, the GPU ids DataParallel spreads over): under torchrun each rank's own GPU; else
    the first of n_gpu GPUs (one: at most one, for test.py, predict.py and export.py), or the CPU with -d cpu
    (flag) or without GPUs. Fewer GPUs than n_gpu is not an error: the run goes on with those there are, with a
    warning when it trains (for inference, n_gpu only says whether a GPU may be used: nothing to say)."""
    if dist.enabled:
        return distributed.device_of(dist, n_gpu), []
    logger = logging.getLogger("train")
    wanted = min(n_gpu, 1) if one else n_gpu
    if flag == "cpu":
        if wanted > 0:
            logger.info("-d cpu: running on the CPU (n_gpu=%d is not used).", n_gpu)
        return torch.device("cpu"), []
    available = torch.cuda.device_count()
    if wanted > available:
        if not one:
            logger.warning("n_gpu is %d but only %d GPU(s) are available here; running on %s.", n_gpu, available,
                           f"{available} GPU(s)" if available else "the CPU")
        wanted = available
    return torch.device("cuda:0" if wanted > 0 else "cpu"), list(range(wanted))
