"""The first-batch check: before training (and in --dry-run) the model, the loss and every metric run on one real
batch, so that data that does not fit the model, a metric built for other classes or a loss that does not fit the
model's kind of output is one clear error naming the shapes, the failing part and the fix, rather than a traceback
from inside torch in epoch 1 or, on a GPU, a device-side assert."""
from __future__ import annotations

import copy
import functools
import inspect
from typing import Any

import torch
from torch import nn

from base import BaseTrainer
from logger import get_logger
from trainer.trainer import Trainer, to_device
from utils.checkpoint import unwrap
from utils.errors import UserError, first_line, project_location, raised_by_a_library
from utils.registry import ARCHS
from utils.tracker import is_stateful

LIBRARY_ERRORS = (RuntimeError, ValueError, IndexError, TypeError, AssertionError)
# What tensor operations raise on shapes and dtypes that do not fit, in a library or in the model's own code
# (MnistModel's x.view(-1, 320) on 8x8 images): a mismatch of data and model, wherever it surfaces.
TENSOR_ERRORS = (RuntimeError, ValueError, IndexError)
IGNORED_TARGET = -100  # cross_entropy's and nll_loss's default ignore_index
# Losses by the kind of output they take (function or class names): log-probabilities, or logits (raw scores).
LOG_PROBABILITY_LOSSES = {"nll_loss", "NLLLoss"}
LOGIT_LOSSES = {"cross_entropy", "CrossEntropyLoss", "focal_loss"}
# The arguments that set a model's input channels, by the names models use (the zoo's CNN: input; torchvision's:
# in_channels; timm's: in_chans), for the hint on a channel mismatch.
CHANNEL_ARGS = ("in_channels", "input", "in_chans", "input_channels", "num_channels", "in_ch")


class _TargetsOutOfRange(Exception):
    """Raised from the model's forward hook, before the loss can use a target it has no score for."""


def check_first_batch(trainer: BaseTrainer) -> None:
    """Run the trainer's evaluation step (else model and criterion) on the data loader's first batch, in eval mode
    without gradients; a mismatch between the data and the model or the loss raises a UserError."""
    data, target = next(iter(trainer.data_loader))
    settings = trainer.settings
    data, target = to_device(data, trainer.device, settings.channels_last), to_device(target, trainer.device)
    model, arch = trainer.model, type(unwrap(trainer.model)).__name__
    batch = f"inputs {_describe(data)}, targets {_describe(target)}"
    # The targets are checked against the classes only where the loss gets model(data) and the targets as they are.
    default_step = all(getattr(type(trainer), name, None) in (None, getattr(Trainer, name))
                       for name in ("train_step", "eval_step"))
    running: list[tuple[str, nn.Module, Any]] = []  # the layers entered and not yet left, outermost first

    def enter(name: str, module: nn.Module, args: tuple) -> None:
        running.append((name, module, args[0] if args else None))

    def leave(name: str, module: nn.Module, args: tuple, output: Any) -> None:
        running.pop()
        if not name and default_step:  # the whole model's output: are the targets within its classes?
            problem = _target_problem(output, target)
            if problem:
                raise _TargetsOutOfRange(problem)

    hooks = [h for name, module in unwrap(model).named_modules()
             for h in (module.register_forward_pre_hook(lambda m, a, name=name: enter(name, m, a)),
                       module.register_forward_hook(lambda m, a, o, name=name: leave(name, m, a, o)))]
    step = getattr(trainer, "eval_step", None) or (lambda x, y: (trainer.criterion(model(x), y), None))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _autocast(trainer):
            result = step(data, target)
    except _TargetsOutOfRange as e:
        raise UserError(f"arch {arch} and the data loader's first batch ({batch}) do not fit: {e}") from None
    except LIBRARY_ERRORS as e:
        if not (raised_by_a_library(e) or isinstance(e, TENSOR_ERRORS)):
            raise  # e.g. a TypeError in the model's or the trainer's own code: a bug, with its traceback
        message = first_line(e) + project_location(e, skip=[__file__])
        if running:
            name, module, layer_input = running[-1]
            where = f"layer {name or '(the model)'} {type(module).__name__}"
            hint = _hint(module, layer_input, getattr(trainer, "config", None) or {})
            raise UserError(f"arch {arch} cannot take the data loader's first batch ({batch}): {where} says: "
                            f"{message}. {hint}") from None
        raise UserError(f"the data loader's first batch ({batch}) failed outside arch {arch}'s layers, in the loss "
                        f"or the trainer's step: {message}. Check that the loss fits the model's output and the "
                        f"targets") from None
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    output = result[1] if isinstance(result, tuple) and len(result) == 2 else None  # eval_step: (loss, output)
    with torch.no_grad():  # as the trainer runs them: after the step, outside its autocast
        problems = metric_problems(getattr(trainer, "metric_ftns", None) or {}, output, target, arch)
    if default_step and isinstance(output, torch.Tensor):
        problems += loss_problems(trainer.criterion, output, arch)
    if problems:
        raise UserError(problems)


def metric_problems(metrics: dict[str, Any], output: Any, target: Any, arch: str) -> list[str]:
    """One line for each metric (config order: metrics.<i>) that cannot take the step's output and the targets: a
    num_classes other than the model's class scores, or what the metric itself raises on them."""
    if output is None:
        return []
    problems = []
    classes = output.shape[1] if _class_scores(output, target) else None
    for i, (name, metric) in enumerate(metrics.items()):
        where = f"metrics.{i} ({name})"
        expected = getattr(metric, "num_classes", None)
        if classes is not None and isinstance(expected, int) and expected != classes:
            problems.append(f"{where} counts {expected} classes but arch {arch} gives {classes} class scores; set "
                            f"metrics.{i}.args.num_classes to {classes}")
            continue
        if isinstance(expected, int) and isinstance(target, torch.Tensor) and target.is_floating_point():
            problems.append(f"{where} counts classes (num_classes {expected}), but the targets of the first batch are "
                            f"{_describe(target)} values, not class indices; choose a metric for this task (e.g. "
                            f"MeanSquaredError), or remove it")
            continue
        try:
            if is_stateful(metric):  # a torchmetrics Metric: a copy on the output's device, updated and computed
                epoch_metric = copy.deepcopy(metric).to(_device_of(output))
                epoch_metric.update(output, target)
                epoch_metric.compute()
            else:
                metric(output, target)
        except LIBRARY_ERRORS as e:
            if not (raised_by_a_library(e) or isinstance(e, TENSOR_ERRORS)):
                raise  # a bug in the metric's own code keeps its traceback
            problems.append(f"{where} cannot take arch {arch}'s output ({_describe(output)}) and the targets "
                            f"({_describe(target)}) of the first batch: {first_line(e)}"
                            f"{project_location(e, skip=[__file__])}; check its args against the model's output")
    return problems


def loss_problems(criterion: Any, output: torch.Tensor, arch: str) -> list[str]:
    """A log-probability loss (nll_loss) on outputs that cannot be log-probabilities is an error; a logit loss
    (cross_entropy) on probabilities, or nll_loss on outputs that are not normalised, a warning: both name the fix."""
    name = _loss_name(criterion)
    kind = output_kind(output)
    if name in LOG_PROBABILITY_LOSSES and kind.startswith("probabilities"):
        return [f"loss {name} takes log-probabilities, but arch {arch}'s outputs on the first batch are {kind}: the "
                f"loss would be negative and meaningless; end the model with log_softmax instead of softmax, or use "
                f"\"loss\": \"cross_entropy\" on logits"]
    if name in LOG_PROBABILITY_LOSSES and kind.startswith("scores"):
        return [f"loss {name} takes log-probabilities, but arch {arch}'s outputs on the first batch are {kind}: the "
                f"loss would be negative and meaningless; use \"loss\": \"cross_entropy\" (it takes logits), or "
                f"end the model with log_softmax"]
    if name in LOG_PROBABILITY_LOSSES and kind.startswith("not normalised"):
        get_logger("train").warning("loss %s takes log-probabilities, but arch %s's outputs on the first batch are %s; "
                                    "end the model with log_softmax, or use \"loss\": \"cross_entropy\"",
                                    name, arch, kind)
    if name in LOGIT_LOSSES and kind.startswith("probabilities"):
        get_logger("train").warning("loss %s takes logits and applies log_softmax itself, but arch %s's outputs on "
                                    "the first batch are %s: a second softmax flattens the gradients; remove the "
                                    "model's final softmax (or end it with log_softmax and use \"loss\": "
                                    "\"nll_loss\")", name, arch, kind)
    return []


def output_kind(output: torch.Tensor) -> str:
    """What class scores (N, C, ...) are, read on a batch: "log-probabilities", "probabilities (...)", "not
    normalised (...)" (none positive but not log-probabilities) or "scores (...)" (some positive: logits, say);
    "unknown" for anything else (one host sync)."""
    if output.dim() < 2 or output.shape[1] < 2 or not output.is_floating_point() or output.numel() == 0:
        return "unknown"
    x = output.detach().float()
    tol = 1e-3 if output.dtype in (torch.float32, torch.float64) else 2e-2  # half precision rounds more
    facts = torch.stack([x.max(), (x.logsumexp(1).abs().amax()), x.min(), (x.sum(1) - 1).abs().amax()])
    high, log_norm, low, norm = facts.tolist()
    if high <= tol and log_norm <= tol:
        return "log-probabilities"
    if low >= -tol and high <= 1 + tol and norm <= tol:
        return "probabilities (each row sums to 1)"
    if high <= tol:
        return "not normalised (none is positive, but their exp does not sum to 1)"
    return f"scores with positive values (up to {high:.3g}), not log-probabilities"


def _loss_name(criterion: Any) -> str:
    """The name of a loss function (through functools.partial) or of a loss class's instance."""
    fn = criterion.func if isinstance(criterion, functools.partial) else criterion
    return getattr(fn, "__name__", None) or type(fn).__name__


def _class_scores(output: Any, target: Any) -> bool:
    """Whether output is class scores (N, C, ...) for integer class targets (N, ...)."""
    return (isinstance(output, torch.Tensor) and isinstance(target, torch.Tensor) and output.dim() >= 2
            and output.is_floating_point() and not target.is_floating_point() and target.dtype != torch.bool
            and target.shape == output.shape[:1] + output.shape[2:])


def _device_of(output: Any) -> torch.device:
    return output.device if isinstance(output, torch.Tensor) else torch.device("cpu")


def _autocast(trainer: BaseTrainer) -> Any:
    stepper = getattr(trainer, "stepper", None)
    return stepper.autocast() if stepper is not None else torch.autocast("cpu", enabled=False)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{'x'.join(map(str, value.shape)) or 'scalar'} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_describe(v) for v in value) + ")"
    return type(value).__name__


def _target_problem(output: Any, target: Any) -> str | None:
    """For class scores (N, C, ...) and integer targets (N, ...): a target outside 0..C-1 (one host sync)."""
    if not _class_scores(output, target):
        return None
    classes = output.shape[1]
    used = target[target != IGNORED_TARGET]
    if used.numel() == 0:
        return None
    low, high = (int(v) for v in torch.stack([used.min(), used.max()]).tolist())
    if high >= classes:
        return (f"a target is {high} but the model gives {classes} class scores (targets must be 0 to {classes - 1}); "
                f"set the model's number of classes (e.g. arch.args.num_classes) to at least {high + 1}, or check "
                f"the labels")
    if low < 0:
        return f"a target is {low}: class targets must be 0 to {classes - 1}; check the labels"
    return None


def _hint(module: nn.Module, layer_input: Any, config: dict) -> str:
    """The likely fix for a layer that cannot take its input (config: the run's, for the model's arguments)."""
    shape = tuple(layer_input.shape) if isinstance(layer_input, torch.Tensor) else None
    expected = getattr(module, "in_channels", None)
    if expected is not None and shape is not None and len(shape) >= 3 and shape[1] != expected:
        mode = {1: "\"L\"", 3: "\"RGB\""}.get(expected)
        colour = f" (data_loader.args.mode={mode} for image files)" if mode else ""
        return (f"It takes {expected} channels but the images have {shape[1]}: give the data {expected} channels"
                f"{colour} or {_channels_fix(config, shape[1])}")
    if isinstance(module, nn.Linear) and shape is not None and shape[-1] != module.in_features:
        return (f"It takes {module.in_features} features but gets {shape[-1]}: the data's size does not fit the model; "
                f"resize the data (a Resize transform) or build the model for this size")
    return "Make the model's input fit the data (arch.args) or the data fit the model (data_loader.args)"


def _channels_fix(config: dict, channels: int) -> str:
    """How to give the model in use (config's arch.type) that many input channels: the argument it takes."""
    arch = config.get("arch") if isinstance(config.get("arch"), dict) else {}
    name = arch.get("type")
    builder = ARCHS.find(name) if isinstance(name, str) else None
    if builder is None:
        return f"the model {channels} input channels (its arch.args)"
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        params = {}
    key = next((k for k in CHANNEL_ARGS if k in params), None)
    if key is None:
        return f"use a model that takes {channels} channels (arch {name} has no argument for its input channels)"
    return f"the model {channels} input channels (arch.args.{key}={channels})"
