"""The first-batch check: before training (and in --dry-run) the model and the loss run on one real batch, so
that data that does not fit the model is one clear error naming the shapes, the failing layer and the fix,
rather than a traceback from inside torch or, on a GPU, a device-side assert."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from base import BaseTrainer
from trainer.trainer import Trainer, to_device
from utils.checkpoint import unwrap
from utils.errors import UserError, first_line, project_location, raised_by_a_library

LIBRARY_ERRORS = (RuntimeError, ValueError, IndexError, TypeError, AssertionError)
# What tensor operations raise on shapes and dtypes that do not fit, in a library or in the model's own code
# (MnistModel's x.view(-1, 320) on 8x8 images): a mismatch of data and model, wherever it surfaces.
TENSOR_ERRORS = (RuntimeError, ValueError, IndexError)
IGNORED_TARGET = -100  # cross_entropy's and nll_loss's default ignore_index


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
            step(data, target)
    except _TargetsOutOfRange as e:
        raise UserError(f"arch {arch} and the data loader's first batch ({batch}) do not fit: {e}") from None
    except LIBRARY_ERRORS as e:
        if not (raised_by_a_library(e) or isinstance(e, TENSOR_ERRORS)):
            raise  # e.g. a TypeError in the model's or the trainer's own code: a bug, with its traceback
        message = first_line(e) + project_location(e, skip=[__file__])
        if running:
            name, module, layer_input = running[-1]
            where = f"layer {name or '(the model)'} {type(module).__name__}"
            hint = _hint(module, layer_input)
            raise UserError(f"arch {arch} cannot take the data loader's first batch ({batch}): {where} says: "
                            f"{message}. {hint}") from None
        raise UserError(f"the data loader's first batch ({batch}) failed outside arch {arch}'s layers, in the loss "
                        f"or the trainer's step: {message}. Check that the loss fits the model's output and the "
                        f"targets") from None
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)


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
    if not (isinstance(output, torch.Tensor) and isinstance(target, torch.Tensor) and output.dim() >= 2
            and output.is_floating_point() and not target.is_floating_point() and target.dtype != torch.bool
            and target.shape == output.shape[:1] + output.shape[2:]):
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


def _hint(module: nn.Module, layer_input: Any) -> str:
    """The likely fix for a layer that cannot take its input."""
    shape = tuple(layer_input.shape) if isinstance(layer_input, torch.Tensor) else None
    expected = getattr(module, "in_channels", None)
    if expected is not None and shape is not None and len(shape) >= 3 and shape[1] != expected:
        mode = {1: "\"L\"", 3: "\"RGB\""}.get(expected)
        colour = f" (data_loader.args.mode={mode} for image files)" if mode else ""
        return (f"It takes {expected} channels but the images have {shape[1]}: give the data {expected} channels"
                f"{colour} or the model {shape[1]} input channels (e.g. arch.args.input)")
    if isinstance(module, nn.Linear) and shape is not None and shape[-1] != module.in_features:
        return (f"It takes {module.in_features} features but gets {shape[-1]}: the data's size does not fit the model; "
                f"resize the data (a Resize transform) or build the model for this size")
    return "Make the model's input fit the data (arch.args) or the data fit the model (data_loader.args)"
