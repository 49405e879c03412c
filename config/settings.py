"""The settings classes: each config section a component reads, declared once (type, default, range and meaning
of every key, and the rules across keys; see config/fields.py). A new trainer feature adds one field to
TrainerSettings; the schema, the defaults, the range checks and docs/config.md follow from it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from config.fields import from_section, range_problems, setting
from utils.json_types import describe, json_types, type_ok
from utils.monitor import SAVE_TOP_K_NEEDS_MONITOR


def _monitor_ok(spec: str) -> bool:
    words = spec.split()
    return words == ["off"] or (len(words) == 2 and words[0] in ("min", "max"))


def _patterns_ok(patterns: list) -> bool:
    return all(isinstance(p, str) and p for p in patterns)


def _limit_ok(value: int | float) -> bool:
    """A batch count (an integer, at least 1) or a fraction of the batches (a number in (0, 1])."""
    return value >= 1 if isinstance(value, int) else 0 < value <= 1


def _seconds(value: str | int | float | None) -> float | None:
    """trainer.max_time in seconds: a number of seconds, or "[DD:]HH:MM:SS"; None when not given or malformed."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value > 0 else None
    parts = value.strip().split(":")
    if not 3 <= len(parts) <= 4 or not all(p.strip().isdigit() for p in parts):
        return None
    seconds = 0
    for part, unit in zip(reversed(parts), (1, 60, 3600, 86400)):
        seconds += int(part) * unit
    return float(seconds) if seconds > 0 else None


@dataclass(frozen=True, kw_only=True)
class EMASettings:
    """trainer.ema: an exponential moving average of the weights (trainer/ema.py's WeightAverage)."""

    decay: float = setting(0.999, "the average's share in each update: average = decay * average + (1 - decay) * "
                                  "weights", minimum=0, maximum=1)
    warmup_steps: int = setting(0, "up to this optimizer step the average is a copy of the weights", minimum=0)
    every: int = setting(1, "update the average after every N optimizer steps", minimum=1)


@dataclass(frozen=True, kw_only=True)
class CheckpointEvery:
    """trainer.checkpoint_every: checkpoint-step<N>.pth in the middle of epochs, every N steps or M minutes."""

    steps: int | None = setting(None, "every N optimizer steps", minimum=1)
    minutes: float | None = setting(None, "at the first optimizer step M minutes after the last checkpoint X",
                                    positive=True)

    @classmethod
    def rules(cls, values: dict) -> list[str]:
        given = [key for key in ("steps", "minutes") if values.get(key) is not None]
        if len(given) != 1:
            return [f"trainer.checkpoint_every takes one of steps and minutes, e.g. {{\"steps\": 500}} or "
                    f"{{\"minutes\": 30}}; it has {' and '.join(given) or 'neither'}"]
        return []


DDP, FSDP2 = "ddp", "fsdp2"  # trainer.strategy's types


@dataclass(frozen=True, kw_only=True)
class FSDP2Settings:
    """trainer.strategy {"type": "fsdp2", "args": {...}}: torch's fully_shard over the ranks of a torchrun job."""

    shard: list[str] = setting([], "glob patterns of module names (named_modules(), e.g. [\"layer*\"]) sharded as "
                                   "units of their own, the outermost matches; the model itself always is one",
                               check=_patterns_ok, rule="a list of glob patterns (strings)")
    reshard_after_forward: bool = setting(True, "free the gathered parameters after each unit's forward (least "
                                                "memory); false = keep them until the backward (fewer all-gathers)")
    param_dtype: str | None = setting(None, "the dtype units compute in (parameters all-gathered in it): 'bf16', "
                                            "'fp16' or 'fp32'; null = the parameters' own",
                                      choices=("bf16", "fp16", "fp32"))
    reduce_dtype: str | None = setting(None, "the dtype gradients are reduce-scattered in; null = param_dtype's",
                                       choices=("bf16", "fp16", "fp32"))
    cpu_offload: bool = setting(False, "keep the sharded parameters, gradients and optimizer state in CPU memory "
                                       "(GPUs only; the optimizer steps on the CPU)")


def strategy_problems(value: object) -> list[str]:
    """What is wrong with a trainer.strategy value (the type check has passed: a string or an object)."""
    usage = ('"ddp", or {"type": "fsdp2", "args": {...}} with args among ' +
             ", ".join(f.name for f in dataclasses.fields(FSDP2Settings)))
    if isinstance(value, str):
        return [] if value in (DDP, FSDP2) else [f"trainer.strategy must be {usage}; got {value!r}"]
    if not isinstance(value, dict):
        return []
    problems = [f"trainer.strategy.{key} is not a strategy key; it takes type and args ({usage})"
                for key in value if key not in ("type", "args")]
    kind, args = value.get("type"), value.get("args", {})
    if kind not in (DDP, FSDP2):
        problems.append(f"trainer.strategy.type must be {DDP!r} or {FSDP2!r}; got {kind!r}")
    if not isinstance(args, dict):
        return problems + [f"trainer.strategy.args must be an object, got {args!r}"]
    if kind == DDP and args:
        problems.append(f"trainer.strategy ddp takes no args; got {', '.join(args)}")
    if kind != FSDP2:
        return problems
    kinds = json_types(FSDP2Settings)
    for key, item in args.items():
        if key not in kinds:
            problems.append(f"trainer.strategy.args.{key} is not an FSDP2 setting; it takes "
                            f"{', '.join(kinds)}")
        elif not type_ok(item, kinds[key]):
            problems.append(f"trainer.strategy.args.{key} must be {describe(kinds[key])}, got {item!r}")
    return problems + range_problems(FSDP2Settings, {k: v for k, v in args.items() if k in kinds},
                                     "trainer.strategy.args.")


@dataclass(frozen=True, kw_only=True)
class TrainerSettings:
    """What the trainer section of a config sets (train.py reads it; the trainer receives this object)."""

    type: str = setting("Trainer", "trainer class: Trainer, or your own BaseTrainer subclass in trainer/trainer.py")
    epochs: int = setting(meaning="number of epochs to train (the last epoch number when resuming)", minimum=1)
    save_dir: str = setting("saved/", "root of run outputs: models/ and log/ go under it")
    save_period: int | None = setting(None, "keep checkpoint-epoch<N>.pth every N epochs, as in the original "
                                            "template (and always the last one); null = only as keep_last and "
                                            "save_top_k say (by default: the newest alone)", minimum=1)
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
    checkpoint_every: CheckpointEvery | None = setting(None, "also write checkpoint-step<N>.pth in the middle of "
                                                             "epochs, by steps or by time; null = at epoch ends only")
    save_every_steps: int | None = setting(None, "the older way to say checkpoint_every: {\"steps\": N}; not both",
                                           minimum=1)
    keep_last: int | None = setting(None, "keep only the newest N checkpoint-*.pth files (model_best.pth is kept); "
                                          "null = 1 when save_period and save_top_k are null too, else no limit",
                              minimum=1)
    async_checkpoint: bool = setting(True, "write checkpoints in a background thread, from a copy of the state taken "
                                           "at the step (pinned CPU memory from a GPU); false = on the training path")
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
    activation_checkpointing: list[str] = setting([], "glob patterns of module names (named_modules(), e.g. "
                                                      "[\"layer*\"]) whose forward recomputes its activations in "
                                                      "the backward pass, to save memory; [] = off",
                                                  check=_patterns_ok, rule="a list of glob patterns (strings)")
    strategy: str | dict = setting(DDP, "how a torchrun job spreads the model: \"ddp\" (a full copy on each rank) or "
                                        "{\"type\": \"fsdp2\", \"args\": {...}}: parameters, gradients and optimizer "
                                        "state sharded over the ranks, sharded checkpoints (docs/distributed.md)",
                                   rule='"ddp" or {"type": "fsdp2", "args": {...}}')
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
    ema: EMASettings | None = setting(None, "keep an exponential moving average of the weights (and buffers) on the "
                                            "device, used for validation, model_best.pth and test.py; null = off")
    val_every_steps: int | None = setting(None, "also validate every N optimizer steps (monitor, model_best.pth, early "
                                                "stop and metrics.jsonl follow each validation); null = per epoch only",
                                          minimum=1)
    val_every_epochs: int = setting(1, "validate every N epochs (and after the last)", minimum=1)
    limit_train_batches: int | float | None = setting(None, "train on this many batches per epoch (an integer) or "
                                                            "this fraction of them; null = all", check=_limit_ok,
                                                      rule="a batch count (at least 1), a fraction in (0, 1] or null")
    limit_val_batches: int | float | None = setting(None, "validate on this many batches (an integer) or this "
                                                          "fraction of them; null = all", check=_limit_ok,
                                                    rule="a batch count (at least 1), a fraction in (0, 1] or null")
    overfit_batches: int = setting(0, "train and validate on the same first N training batches, unshuffled (to see "
                                      "that the model can drive the loss near zero); 0 = off", minimum=0)
    save_top_k: int | None = setting(None, "keep the k best checkpoint-epoch<N>.pth by trainer.monitor (and the "
                                           "newest, to resume from); null = as save_period and keep_last say",
                                     minimum=1)
    max_time: str | int | float | None = setting(None, "stop at the first step past this wall time (\"DD:HH:MM:SS\", "
                                                       "\"HH:MM:SS\" or seconds), save and exit 0 so a scheduled "
                                                       "job can resume with -r; null = no limit",
                                                 check=lambda v: _seconds(v) is not None,
                                                 rule="\"[DD:]HH:MM:SS\" or a positive number of seconds")

    @classmethod
    def rules(cls, values: dict) -> list[str]:
        """The problems across the section's keys (values as written: a mistyped one is the schema check's)."""
        problems = []
        unfreeze = values.get("unfreeze_at_epoch")
        if isinstance(unfreeze, int) and unfreeze >= 1 and not values.get("freeze"):
            problems.append("trainer.unfreeze_at_epoch is set but trainer.freeze names nothing to freeze; add "
                            "patterns to trainer.freeze or set trainer.unfreeze_at_epoch to null")
        if values.get("save_every_steps") is not None and values.get("checkpoint_every") is not None:
            problems.append("trainer.save_every_steps and trainer.checkpoint_every both say when to checkpoint; keep "
                            "one (trainer.save_every_steps=null, and checkpoint_every {\"steps\": N})")
        problems.extend(strategy_problems(values.get("strategy", DDP)))
        top_k, monitor = values.get("save_top_k"), values.get("monitor")
        if type(top_k) is int and isinstance(monitor, str) and monitor.split() == ["off"]:  # a mistyped one: above
            problems.append(SAVE_TOP_K_NEEDS_MONITOR)
        return problems

    @property
    def step_checkpoints(self) -> tuple[int | None, float | None]:
        """When to write checkpoint-step<N>.pth: (every N optimizer steps, every S seconds), each None when not;
        save_every_steps is checkpoint_every.steps."""
        every = self.checkpoint_every
        if every is None:
            return self.save_every_steps, None
        return every.steps, None if every.minutes is None else every.minutes * 60

    @property
    def fsdp2(self) -> FSDP2Settings | None:
        """The FSDP2 settings when trainer.strategy is fsdp2 (sharded model and checkpoints), else None."""
        value = self.strategy
        if value == FSDP2 or isinstance(value, dict) and value.get("type") == FSDP2:
            return from_section(FSDP2Settings, value.get("args", {}) if isinstance(value, dict) else {})
        return None

    @property
    def max_time_seconds(self) -> float | None:
        """trainer.max_time in seconds; None when there is no limit."""
        return _seconds(self.max_time)
