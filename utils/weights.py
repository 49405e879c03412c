"""Initial weights for a new run (arch.weights, train.py --init-from): read a state dict, fit it to the model,
report what was loaded.

A source is a weights file (.pth/.pt as torch.save wrote it, torchvision's own files included, or
.safetensors), one of our checkpoints or run directories (its model_best.pth, else its newest checkpoint), or
for a torchvision model the name of its weights ("DEFAULT", "IMAGENET1K_V1"), read from torch's cache
directory: nothing is downloaded. The load is non-strict: tensors whose shape differs are skipped (a new
classifier head), except RGB kernels of the first convolution, which are fitted to the model's input channels
as timm does. One block says what was loaded, adapted, skipped, missing and unexpected.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from utils.checkpoint import START, checkpoint_to_use, inference_weights, read_torch_file
from utils.errors import UserError

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel/DataParallel, torch.compile
# torchvision's own densenet files use old names (norm.1 for norm1); its builder renames them the same way
_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


@dataclass
class LoadReport:
    """What a load did: tensor names loaded, adapted, skipped (shape differs), missing, unexpected."""
    source: str
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def block(self) -> str:
        """The report for the log: one line per kind, the names listed."""
        lines = [f"Initial weights from {self.source}: {len(self.loaded)} tensors loaded"]
        for kind, names, note in (("adapted", self.adapted, "fitted to the model's input channels"),
                                  ("skipped", self.mismatched, "shape differs; left as initialised"),
                                  ("missing", self.missing, "not in the file; left as initialised"),
                                  ("unexpected", self.unexpected, "not in the model; ignored")):
            if names:
                lines.append(f"    {kind:10s} {len(names):4d} ({note}): {', '.join(names)}")
        return "\n".join(lines)

    @property
    def fits(self) -> bool:
        """Whether every tensor of the file and of the model was loaded (adapted ones count as loaded)."""
        return not (self.mismatched or self.missing or self.unexpected)

    def problems(self) -> list[str]:
        """arch.weights_strict's errors: everything that was not loaded as it is, and the way out."""
        found = [f"arch.weights_strict: {self.source}: {kind} {', '.join(names)}"
                 for kind, names in (("shape differs for", self.mismatched), ("missing from the file:", self.missing),
                                     ("not in the model:", self.unexpected)) if names]
        return found + ["arch.weights_strict: set it to false to load what fits (the others are reported)"]


def read_weights(source: str | Path, arch_type: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, where it came from) for arch.weights: a file, a run directory or a torchvision weights name."""
    path = Path(source)
    if path.is_dir():
        chosen, checkpoint, _ = checkpoint_to_use(path, START)  # a sharded run's folder: its weights joined
        return inference_weights(checkpoint), str(chosen)
    if path.is_file():
        return state_dict_in(path), str(path)
    if arch_type is not None and _is_name(str(source)):
        return torchvision_weights(arch_type, str(source))
    raise UserError(f"arch.weights: {source} is not a file or a directory; give a .pth/.pt/.safetensors file, "
                    f"a checkpoint or run directory, or for a torchvision model a weights name such as DEFAULT")


def state_dict_in(path: Path) -> dict[str, torch.Tensor]:
    """The state dict a file holds: a bare one, .safetensors, our checkpoint's (its averaged weights when the run kept
    them, as test.py evaluates), or one under 'state_dict'/'model'."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError) as e:
            raise UserError(f"arch.weights {path} is not a readable .safetensors file ({e})") from None
    content = read_torch_file(path, "arch.weights", "give an intact file")
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):  # ours, Lightning's
        content = inference_weights(content)
    elif isinstance(content, dict) and isinstance(content.get("model"), dict):  # others' checkpoints
        content = content["model"]
    if not (isinstance(content, dict) and content and all(isinstance(v, torch.Tensor) for v in content.values())):
        raise UserError(f"arch.weights {path} holds no state dict (a mapping of names to tensors); save one with "
                        f"torch.save(model.state_dict(), path)")
    return content


def _is_name(text: str) -> bool:
    return re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", text) is not None


def torchvision_weights(arch_type: str, name: str) -> tuple[dict[str, torch.Tensor], str]:
    """A torchvision weights enum member's state dict, from torch's cache (never downloaded)."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch_type)
    except (ValueError, KeyError):
        raise UserError(f"arch.weights {name!r}: a weights name needs a torchvision model, and arch.type "
                        f"{arch_type!r} is not one; give a weights file instead") from None
    try:
        weights = enum[name] if name != "DEFAULT" else enum.DEFAULT
    except KeyError:
        known = ", ".join(["DEFAULT"] + [w.name for w in enum])
        raise UserError(f"arch.weights {name!r}: {arch_type} has no such weights; known: {known}") from None
    file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    if not file.is_file():
        raise UserError(f"arch.weights {name!r}: {file} is missing (nothing is downloaded): put the file of "
                        f"{type(weights).__name__}.{weights.name}, {weights.url}, there (TORCH_HOME moves the "
                        f"cache), or give arch.weights the path of a copy")
    state = state_dict_in(file)
    if arch_type.startswith("densenet"):
        state = {_DENSENET_KEY.sub(r"\1\2", key): value for key, value in state.items()}
    return state, f"{file} ({type(weights).__name__}.{weights.name})"


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str, *, strict: bool = False,
                 key_map: dict[str, str] | None = None) -> LoadReport:
    """Load what fits of state into model; with strict, anything that does not fit is a UserError instead."""
    state = rename(strip_wrappers(state), key_map or {})
    own = model.state_dict()
    first = first_conv(model)
    report, fitting = LoadReport(source), {}
    for key, tensor in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif tensor.shape == own[key].shape:
            fitting[key] = tensor
            report.loaded.append(key)
        elif first is not None and key == f"{first[0]}.weight" and _rgb_kernels(tensor, own[key]):
            fitting[key] = adapt_input_conv(tensor, own[key].shape[1])
            report.adapted.append(f"{key} (3 -> {own[key].shape[1]} input channels)")
        else:
            report.mismatched.append(f"{key} {list(tensor.shape)} in the file, {list(own[key].shape)} in the model")
    report.missing = [key for key in own if key not in fitting]
    if strict and not report.fits:
        raise UserError(report.problems())
    model.load_state_dict(fitting, strict=False)
    return report


def strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Names without the prefixes that DDP/DataParallel (module.) and torch.compile (_orig_mod.) add."""
    def strip(key: str) -> str:
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        return key
    return {strip(key): value for key, value in state.items()}


def rename(state: dict[str, torch.Tensor], key_map: dict[str, str]) -> dict[str, torch.Tensor]:
    """arch.weights_key_map: each name starting with an old prefix gets the new one (the first that matches)."""
    def new_name(key: str) -> str:
        for old, new in key_map.items():
            if key.startswith(old):
                return new + key[len(old):]
        return key
    return {new_name(key): value for key, value in state.items()}


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The model's first nn.Conv2d (in named_modules order) and its name: the layer that sees the input."""
    return next(((name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def _rgb_kernels(file_weight: torch.Tensor, model_weight: torch.Tensor) -> bool:
    """Whether file_weight is RGB kernels of the same layer that the model has for other input channels."""
    return (file_weight.ndim == 4 and file_weight.shape[1] == 3 and file_weight.shape[0] == model_weight.shape[0]
            and file_weight.shape[2:] == model_weight.shape[2:])


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB kernels fitted to in_channels, as timm's adapt_input_conv: summed for one channel (a gray image gives
    the response its RGB copy gave), else repeated and scaled by 3/in_channels."""
    dtype, weight = weight.dtype, weight.float()
    if in_channels == 1:
        adapted = weight.sum(dim=1, keepdim=True)
    else:
        repeats = math.ceil(in_channels / 3)
        adapted = weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (3 / in_channels)
    return adapted.to(dtype)
