"""A layer table: each layer with its input -> output shapes, parameter count and share of the total (torchinfo)."""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn


def layer_rows(model: nn.Module, input_size: Sequence[int] | None = None,
               input_data: torch.Tensor | None = None) -> list[dict]:
    """One dict per layer run by a forward pass (depth, name, input, output, params, share), in order.

    params counts the layer's parameters including its sublayers'; share is params as a % of the model's total.
    """
    return _summary(model, input_size, input_data)[0]


def _summary(model: nn.Module, input_size: Sequence[int] | None, input_data: torch.Tensor | None
             ) -> tuple[list[dict], list[int]]:
    """(layer_rows, the model's output size) from torchinfo."""
    import torchinfo

    device = next(model.parameters(), torch.empty(0)).device  # torchinfo would move a CPU model to CUDA
    stats = torchinfo.summary(model, input_size=None if input_data is not None else tuple(input_size),
                              input_data=input_data, device=device, verbose=0, depth=100)
    total = sum(p.numel() for p in model.parameters())
    rows = []
    for layer in stats.summary_list[1:]:  # [0] is the model itself
        params = None if layer.is_recursive else layer.num_params
        rows.append({
            "depth": layer.depth, "name": _describe(layer.var_name, layer.module, layer.is_leaf_layer),
            "input": layer.input_size, "output": layer.output_size, "params": params,
            "share": None if params is None else 100.0 * params / max(total, 1),
        })
    return rows, stats.summary_list[0].output_size


def layer_table(model: nn.Module, input_size: Sequence[int] | None = None,
                input_data: torch.Tensor | None = None) -> str:
    """The layer table of model for an input of input_size (batch dimension included, e.g. (2, 1, 8, 8)), or for
    input_data when the input is not a float tensor; totals at the end."""
    rows, output = _summary(model, input_size, input_data)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lines = [("Layer", "Input -> Output", "Params", "Share")]
    for row in rows:
        shapes = f"{_shape(row['input'])} -> {_shape(row['output'])}"
        params = "(shared)" if row["params"] is None else f"{row['params']:,}" if row["params"] else "--"
        share = f"{row['share']:.1f}%" if row["params"] else ""
        lines.append(("  " * (row["depth"] - 1) + row["name"], shapes, params, share))
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    text = ["  ".join((name.ljust(widths[0]), shapes.ljust(widths[1]), params.rjust(widths[2]), share.rjust(widths[3])))
            .rstrip() for name, shapes, params, share in lines]
    rule = "-" * len(text[0])
    shape_in = _shape(list(input_data.shape) if input_data is not None else list(input_size))
    return "\n".join([f"{type(model).__name__}: {shape_in} -> {_shape(output)}", rule, text[0], rule, *text[1:], rule,
                      f"Total parameters: {total:,}", f"Trainable parameters: {trainable:,}"])


# Arguments at their usual defaults, left out of a layer's description to keep the table narrow.
_DEFAULTS = re.compile(r"(, )?\b(eps=1e-05|momentum=0\.1|affine=True|track_running_stats=True|bias=True|dilation=1|"
                       r"ceil_mode=False|stride=1|padding=0|start_dim=1|end_dim=-1|inplace=False)(?=,|$)|"
                       r"\b(in_features|out_features|output_size)=")


def _describe(var_name: str, module: nn.Module, leaf: bool) -> str:
    """'name Class(arguments)' for a layer: a leaf's arguments without their usual defaults, (3, 3) written 3."""
    args = _DEFAULTS.sub("", re.sub(r"\((\d+), \1\)", r"\1", module.extra_repr())).lstrip(", ") if leaf else ""
    return f"{var_name} {type(module).__name__}" + (f"({args})" if args else "")


def _shape(size) -> str:
    """[2, 64, 8, 8] as 2x64x8x8 (several tensors: joined by ', ')."""
    if size and isinstance(size[0], (list, tuple)):
        return ", ".join(_shape(s) for s in size)
    return "x".join(str(s) for s in size) if size else "--"
