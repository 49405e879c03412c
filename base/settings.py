"""The trainer section of config.json, declared once: type, default, range and meaning of every key.

The config schema, the README table check, range validation and the trainer's defaults all come from
this class (utils/settings.py). A new trainer feature adds one field here.
"""
from __future__ import annotations

from dataclasses import dataclass

from utils.settings import setting


def _monitor_ok(spec: str) -> bool:
    words = spec.split()
    return words == ["off"] or (len(words) == 2 and words[0] in ("min", "max"))


def _patterns_ok(patterns: list) -> bool:
    return all(isinstance(p, str) and p for p in patterns)


@dataclass(frozen=True, kw_only=True)
class TrainerSettings:
    """What the trainer section of a config sets (train.py reads it; the trainer receives this object)."""

    type: str = setting("Trainer", "trainer class: Trainer, or your own BaseTrainer subclass in trainer/trainer.py")
    epochs: int = setting(meaning="number of epochs to train (the last epoch number when resuming)", minimum=1)
    save_dir: str = setting("saved/", "root of run outputs: models/ and log/ go under it")
    save_period: int = setting(1, "keep checkpoint-epoch<N>.pth every N epochs (and always the last one); the epochs "
                                  "between are each on disk until the next",
                               minimum=1)
    verbosity: int = setting(2, "console output: 0 warnings only and no progress bars, 1 info, 2 debug "
                                "(info.log always gets info)", choices=(0, 1, 2))
    monitor: str = setting("off", "'min <key>' or 'max <key>' (e.g. 'min val_loss') for model_best.pth and early "
                                  "stop, or 'off'", check=_monitor_ok, rule="'min <key>', 'max <key>' or 'off'")
    early_stop: int = setting(0, "stop after this many epochs without improvement of the monitored value; 0 = never",
                              minimum=0, rule="0 (off) or a positive patience")
    tensorboard: bool = setting(True, "write TensorBoard event files to the run's log directory")
    len_epoch: int | None = setting(None, "batches per epoch for iteration-based training (data is cycled); "
                                          "null = one pass", minimum=1)
    log_step: int = setting(50, "log the training loss to TensorBoard and the progress bar every N steps", minimum=1)
    log_images: bool = setting(False, "add a grid of the first input batch to TensorBoard each epoch (costly)")
    log_histograms: bool = setting(False, "add weight histograms to TensorBoard each epoch (costly)")
    save_every_steps: int | None = setting(None, "also write checkpoint-step<N>.pth every N optimizer steps, "
                                                 "mid-epoch; null = never", minimum=1)
    keep_last: int | None = setting(None, "keep only the newest N checkpoint-*.pth files (model_best.pth is kept); "
                                          "null = keep all", minimum=1)
    compile: bool | dict = setting(False, "torch.compile the model: true, or an object of torch.compile arguments "
                                          "(e.g. {\"mode\": \"max-autotune\"})")
    channels_last: bool = setting(False, "use the channels_last memory format for the model and 4-D inputs "
                                         "(faster convolutions on recent GPUs)")
    amp: str | None = setting(None, "mixed precision: 'bf16' (CPU and recent GPUs) or 'fp16' (GPU, with a "
                                    "checkpointed GradScaler); null = off", choices=("bf16", "fp16"))
    accumulate_steps: int = setting(1, "accumulate gradients over N batches per optimizer step (DDP all-reduces "
                                       "only on the last)", minimum=1)
    clip_grad_norm: float | None = setting(None, "clip the gradients' total norm to this value before each "
                                                 "optimizer step; null = off", positive=True)
    sync_batchnorm: bool = setting(False, "under torchrun on GPUs, convert BatchNorm layers to SyncBatchNorm")
    dist_backend: str | None = setting(None, "torch.distributed backend under torchrun; null = nccl on GPU, "
                                             "gloo on CPU")
    dist_timeout: int = setting(1800, "seconds a collective may wait for the other ranks before the job fails",
                                minimum=1)
    nonfinite_loss: str = setting("stop", "a NaN/inf training loss: 'stop' (nothing is saved after it) or 'skip' "
                                          "the batch (one host sync per step)", choices=("stop", "skip"))
    freeze: list[str] = setting([], "glob patterns of parameter names to freeze, e.g. [\"features.*\"]: no gradient "
                                    "and no weight decay; norm layers whose parameters are all frozen keep their "
                                    "running statistics", check=_patterns_ok, rule="a list of glob patterns (strings)")
    unfreeze_at_epoch: int | None = setting(None, "train the parameters trainer.freeze names from this epoch on; "
                                                  "null = frozen for the whole run", minimum=1)
