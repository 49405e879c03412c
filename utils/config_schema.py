"""Every config key the template knows: its type, default and a one-line meaning.

The README's config table is checked against this table by a test, so the two cannot drift.
A key marked REQUIRED has no default. `args` dicts are checked against the signature of the
class or function they are passed to (see parse_config.check_args), not here.
"""
from __future__ import annotations

REQUIRED = object()
NONE = type(None)

# key: (accepted types, default, meaning). A nested dict is a section.
SCHEMA: dict = {
    "name": (str, REQUIRED, "run name: runs go to <save_dir>/models/<name>/ and <save_dir>/log/<name>/"),
    "n_gpu": (int, 1, "GPUs to use outside torchrun; 0 = CPU, more than one wraps the model in DataParallel"),
    "seed": ((int, NONE), 123, "seeds Python, NumPy and torch; null draws one, recorded in the run's config.json"),
    "arch": {
        "type": (str, REQUIRED, "model class: any nn.Module defined in model/model.py (or registered)"),
        "args": (dict, {}, "keyword arguments of the model class"),
    },
    "data_loader": {
        "type": (str, REQUIRED, "data loader class defined in data_loader/data_loaders.py"),
        "args": (dict, {}, "its keyword arguments (data_dir, batch_size, shuffle, validation_split, num_workers, ...)"),
    },
    "optimizer": {
        "type": (str, REQUIRED, "any torch.optim optimizer, else any pytorch_optimizer optimizer, by class name"),
        "args": (dict, {}, "its keyword arguments (lr, weight_decay, ...)"),
        "no_decay_bias_norm": (bool, False, "no weight decay on biases, norm weights and other 1-D parameters (a second parameter group)"),
    },
    "loss": ((str, dict), REQUIRED, "a function in model/loss.py or a torch.nn loss class; a name or {type, args}"),
    "metrics": (list, [], "functions in model/metric.py; each a name or {type, args, name}"),
    "lr_scheduler": {
        "type": (str, REQUIRED, "any torch.optim.lr_scheduler class, else a pytorch_optimizer scheduler; omit the section for none"),
        "args": (dict, {}, "its keyword arguments (step_size, gamma, ...)"),
        "interval": (str, "epoch", "'epoch' steps the scheduler after each epoch, 'step' after each optimizer step"),
    },
    "trainer": {
        "epochs": (int, REQUIRED, "number of epochs to train (the last epoch number when resuming)"),
        "save_dir": (str, "saved/", "root of run outputs: models/ and log/ go under it"),
        "save_period": (int, 1, "write checkpoint-epoch<N>.pth every N epochs (and always at the last one)"),
        "verbosity": (int, 2, "console output: 0 warnings only and no progress bars, 1 info, 2 debug (info.log always gets info)"),
        "monitor": (str, "off", "'min <key>' or 'max <key>' (e.g. 'min val_loss') for model_best.pth and early stop, or 'off'"),
        "early_stop": (int, 0, "stop after this many epochs without improvement of the monitored value; 0 = never"),
        "tensorboard": (bool, True, "write TensorBoard event files to the run's log directory"),
        "len_epoch": ((int, NONE), None, "batches per epoch for iteration-based training (data is cycled); null = one pass"),
        "log_step": (int, 50, "log the training loss to TensorBoard and the progress bar every N steps"),
        "log_images": (bool, False, "add a grid of the first input batch to TensorBoard each epoch (costly)"),
        "log_histograms": (bool, False, "add weight histograms to TensorBoard each epoch (costly)"),
        "save_every_steps": ((int, NONE), None, "also write checkpoint-step<N>.pth every N optimizer steps, mid-epoch; null = never"),
        "keep_last": ((int, NONE), None, "keep only the newest N checkpoint-*.pth files (model_best.pth is kept); null = keep all"),
        "compile": ((bool, dict), False, "torch.compile the model: true, or an object of torch.compile arguments (e.g. {\"mode\": \"max-autotune\"})"),
        "channels_last": (bool, False, "use the channels_last memory format for the model and 4-D inputs (faster convolutions on recent GPUs)"),
        "amp": ((str, NONE), None, "mixed precision: 'bf16' (CPU and recent GPUs) or 'fp16' (GPU, with a checkpointed GradScaler); null = off"),
        "accumulate_steps": (int, 1, "accumulate gradients over N batches per optimizer step (DDP all-reduces only on the last)"),
        "clip_grad_norm": ((float, NONE), None, "clip the gradients' total norm to this value before each optimizer step; null = off"),
        "sync_batchnorm": (bool, False, "under torchrun on GPUs, convert BatchNorm layers to SyncBatchNorm"),
        "dist_backend": ((str, NONE), None, "torch.distributed backend under torchrun; null = nccl on GPU, gloo on CPU"),
        "dist_timeout": (int, 1800, "seconds a collective may wait for the other ranks before the job fails"),
        "nonfinite_loss": (str, "stop", "a NaN/inf training loss: 'stop' (nothing is saved after it) or 'skip' the batch (one host sync per step)"),
    },
    "extra": (dict, {}, "free-form settings for your own code; never validated"),
}

OPTIONAL_SECTIONS = {"lr_scheduler"}  # may be absent or null
TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
              dict: "an object", list: "a list", NONE: "null"}


def flat_keys(schema: dict = SCHEMA, prefix: str = "") -> dict[str, tuple]:
    """'trainer.epochs' -> (types, default, meaning) for every key, sections flattened."""
    out = {}
    for key, spec in schema.items():
        if isinstance(spec, dict):
            out.update(flat_keys(spec, f"{prefix}{key}."))
        else:
            out[prefix + key] = spec
    return out


def type_ok(value, types) -> bool:
    """isinstance that keeps bools out of int and lets ints stand for floats."""
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, tuple(t for t in types if t is not bool))


def describe(types) -> str:
    """'an integer or null' for (int, NoneType)."""
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(TYPE_NAMES.get(t, t.__name__) for t in types)
