"""Image transforms from config: lists of torchvision.transforms.v2 names with args.

A list such as ["RandomHorizontalFlip", {"type": "RandomCrop", "args": {"size": 32, "padding": 4}}] becomes
ToImage -> the listed transforms (on uint8 images) -> ToDtype(float32, scale=True) -> Normalize(mean, std).
Transforms that take transforms (RandomApply, RandomChoice, RandomOrder, Compose) take such a list as
their "transforms" arg.
"""
from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch

from utils.errors import UserError, did_you_mean

# Put in place by image_pipeline; listing them would convert or normalise twice.
_ADDED = {"ToImage": "converts images to tensors first", "ToTensor": "converts images to tensors first",
          "PILToTensor": "converts images to tensors first", "Normalize": "normalises last: set mean and std",
          "ConvertImageDtype": "scales to float last: list ToDtype to choose where"}
_REFUSED = {"CutMix": "it mixes whole batches, not one sample", "MixUp": "it mixes whole batches, not one sample",
            "Lambda": "a config cannot hold a function", "ToPILImage": "the pipeline works on tensors",
            "ToPureTensor": "the pipeline ends with it"}


def _catalogue() -> dict[str, type]:
    from torchvision.transforms import v2

    return {name: obj for name, obj in vars(v2).items()
            if inspect.isclass(obj) and issubclass(obj, v2.Transform) and obj is not v2.Transform}


def build_transforms(spec: Sequence[str | dict] | None, path: str) -> list:
    """The transforms a config list names (each a name, or {"type": name, "args": {...}}); errors name path[i]."""
    if spec is None:
        return []
    if not isinstance(spec, (list, tuple)):
        raise UserError(f"{path}: expected a list of transforms, e.g. [\"RandomHorizontalFlip\"], got {spec!r}")
    catalogue = _catalogue()
    return [_build(item, f"{path}[{i}]", catalogue) for i, item in enumerate(spec)]


def transform_problems(args: dict, path: str) -> list[str]:
    """Problems with the transforms and eval_transforms that a loader's args (at path) list: names and args."""
    problems = []
    for key in ("transforms", "eval_transforms"):
        try:
            build_transforms(args.get(key), f"{path}.{key}")
        except UserError as e:
            problems.extend(e.problems)
    return problems


def _build(item: str | dict, path: str, catalogue: dict[str, type]) -> Any:
    if isinstance(item, str):
        item = {"type": item}
    if not isinstance(item, dict) or not isinstance(item.get("type"), str) or set(item) - {"type", "args"}:
        raise UserError(f"{path}: expected a transform name or {{\"type\": name, \"args\": {{...}}}}, got {item!r}")
    if not isinstance(item.get("args", {}), (dict, type(None))):
        raise UserError(f"{path}.args: expected an object of the transform's arguments, got {item['args']!r}")
    name, args = item["type"], dict(item.get("args") or {})
    if name in _ADDED or name in _REFUSED:
        why = f"the pipeline {_ADDED[name]}" if name in _ADDED else _REFUSED[name]
        raise UserError(f"{path}.type: {name} cannot be listed: {why}")
    if name not in catalogue:
        hint = did_you_mean(name, catalogue) or " See torchvision.transforms.v2 for the names."
        raise UserError(f"{path}.type: no transform {name!r} in torchvision.transforms.v2.{hint}")
    if "transforms" in args:  # RandomApply, RandomChoice, RandomOrder, Compose
        args["transforms"] = build_transforms(args["transforms"], f"{path}.args.transforms")
    args = {k: _from_json(k, v, f"{path}.args.{k}") for k, v in args.items()}
    try:
        return catalogue[name](**args)
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}.args: {name}({_show(args)}) failed: {e}") from None


def _from_json(key: str, value: Any, path: str) -> Any:
    """A dtype ("float32") or an interpolation ("bilinear") named by a string, as torchvision takes them."""
    if not isinstance(value, str):
        return value
    if key == "dtype":
        if not isinstance(getattr(torch, value, None), torch.dtype):
            raise UserError(f"{path}: {value!r} is not a torch dtype; use e.g. \"float32\"")
        return getattr(torch, value)
    if key == "interpolation":
        from torchvision.transforms import InterpolationMode

        names = [m.value for m in InterpolationMode]
        if value.lower() not in names:
            raise UserError(f"{path}: {value!r} is not one of {names}")
        return InterpolationMode(value.lower())
    return value


def _show(args: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def image_pipeline(spec: Sequence[str | dict] | None, mean: Sequence[float], std: Sequence[float], path: str):
    """ToImage, the listed transforms, ToDtype(float32, scale=True) unless listed, Normalize(mean, std)."""
    from torchvision.transforms import v2

    listed = build_transforms(spec, path)
    to_float = [] if any(isinstance(t, v2.ToDtype) for t in listed) else [v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose([v2.ToImage(), *listed, *to_float, v2.Normalize(list(mean), list(std)), v2.ToPureTensor()])


def normalisation(mean: Sequence[float] | None, std: Sequence[float] | None, default: tuple, channels: int,
                  path: str) -> tuple[list[float], list[float]]:
    """(mean, std) per channel: the given values or the dataset's default; a value of the wrong length raises."""
    values = []
    for key, given, fallback in (("mean", mean, default[0]), ("std", std, default[1])):
        value = list(fallback if given is None else given)
        if len(value) not in (1, channels) or not all(isinstance(v, (int, float)) for v in value):
            raise UserError(f"{path}.{key}: expected 1 or {channels} numbers (one per channel), got {given!r}")
        if key == "std" and any(v <= 0 for v in value):
            raise UserError(f"{path}.std: every value must be positive, got {given!r}")
        values.append([float(v) for v in value])
    return values[0], values[1]


def describe_pipeline(pipeline, mode: str) -> dict:
    """What image_pipeline's pipeline does to an image read in mode, as JSON values a serving script can follow
    without torchvision (docs/export.md): {"input": "image", "mode", "resize" (the shorter side, or [height, width])
    with "interpolation" when it resizes, "center_crop" ([height, width]) when it crops, "dtype", "scale" (the
    pixels' factor to float), "mean", "std", "layout"}, applied in that order. A transform outside these, or in
    another order, raises ValueError saying which (the pipeline cannot be written as these steps)."""
    from torchvision.transforms import v2

    described = {"input": "image", "mode": mode}
    done: list[str] = []
    for t in pipeline.transforms:
        name = type(t).__name__
        if isinstance(t, (v2.ToImage, v2.ToPureTensor)):
            continue
        if name in done or isinstance(t, v2.Resize) and "CenterCrop" in done:
            where = f"a second {name}" if name in done else "Resize after CenterCrop"
            raise ValueError(f"{where}: a description holds one resize, then one center crop")
        done.append(name)
        if isinstance(t, v2.Resize) and t.max_size is None and t.antialias is not False:
            described["resize"] = t.size[0] if len(t.size) == 1 else list(t.size)
            described["interpolation"] = str(getattr(t.interpolation, "value", t.interpolation))
        elif isinstance(t, v2.CenterCrop):
            described["center_crop"] = list(t.size)
        elif isinstance(t, v2.ToDtype) and t.dtype is torch.float32:
            described["scale"] = 1 / 255 if t.scale else 1.0
        elif isinstance(t, v2.Normalize):
            described.update(dtype="float32", mean=list(t.mean), std=list(t.std), layout="NCHW")
        else:
            raise ValueError(f"{name}({_show(_arguments(t))}) is not one of the steps a description holds (Resize "
                             "without max_size, CenterCrop, ToDtype float32, Normalize)")
    return described


def _arguments(transform) -> dict:
    """A transform's arguments as its constructor named them (those it keeps under the same name)."""
    names = inspect.signature(type(transform)).parameters
    return {name: getattr(transform, name) for name in names if hasattr(transform, name)}
