"""torchvision's classification models by name in `arch.type` (resnet18, efficientnet_b0, vit_b_16, ...).

`provider()` offers every classification model of `torchvision.models` (not detection, segmentation, video,
optical flow or quantized ones) as a `TorchvisionModel`, a builder whose signature holds `in_channels` and the
JSON-valued keyword arguments with defaults of the model's class (num_classes, dropout, ...), so that the
config's `arch.args` are validated like any other class's. Models are built with `weights=None`: nothing is
downloaded. `in_channels` other than 3 replaces the first `nn.Conv2d` (see `first_conv`) by a fresh one.

torchvision.models is imported only when the provider is first called, which keeps `--help` and config errors
fast; model/__init__.py adds the provider to ARCHS after the user's and the zoo's names.
"""
from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from typing import Any

from torch import nn

from utils import weights
from utils.errors import UserError

__all__ = ["TorchvisionModel", "first_conv", "provider"]

# Arguments every builder of a class sets itself, so the config cannot (passing one makes the builder fail
# with "got multiple values"): they are left out of the signature.
_FIXED = {"DenseNet": {"growth_rate", "block_config", "num_init_features"}, "SqueezeNet": {"version"},
          "SwinTransformer": {"stochastic_depth_prob"}}
# Arguments the class requires or defaults differently, that every builder of it takes from the config with a
# default of its own (efficientnet_b3's dropout is 0.3, convnext's stochastic_depth_prob 0.1, vit's image_size 224).
_FROM_BUILDER = {"VisionTransformer": {"image_size"}, "MaxVit": {"input_size"}, "EfficientNet": {"dropout"},
                 "ConvNeXt": {"stochastic_depth_prob"}}
# Defaults of ours: the Trainer's loss takes one output tensor, not the auxiliary heads' tuple of googlenet and
# inception_v3; init_weights=True is their present initialisation, without torchvision's FutureWarning.
_OUR_DEFAULTS = {"aux_logits": False, "init_weights": True}

_JSON_LEAVES = {int, float, bool, str, type(None)}
_JSON_CONTAINERS = {list, tuple, dict, typing.Union, types.UnionType, collections.abc.Sequence}


class _BuilderDefault:
    """The default of an argument that torchvision's builder chooses (it differs between models)."""

    def __repr__(self) -> str:
        return "torchvision's"


BUILDER_DEFAULT = _BuilderDefault()


class TorchvisionModel:
    """Builds torchvision's classification model `name` without pretrained weights; called with the config's args."""

    def __init__(self, name: str):
        self.__name__ = self.__qualname__ = name
        self._signature: inspect.Signature | None = None

    @property
    def __signature__(self) -> inspect.Signature:
        """in_channels, then the model class's JSON-valued keyword arguments the config may set."""
        if self._signature is None:
            self._signature = _signature(self.__name__)
        return self._signature

    def __call__(self, in_channels: int = 3, **kwargs: Any) -> nn.Module:
        import torchvision.models

        ours = {k: v for k, v in _OUR_DEFAULTS.items() if k in self.__signature__.parameters}
        model = torchvision.models.get_model(self.__name__, weights=None, **{**ours, **kwargs})
        if in_channels != 3:
            name, conv = first_conv(model)
            model.set_submodule(name, nn.Conv2d(
                in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                conv.groups, conv.bias is not None, conv.padding_mode,
                device=conv.weight.device, dtype=conv.weight.dtype))
        return model

    def config_problems(self, args: dict, path: str) -> list[str]:
        """A problem when in_channels is not a positive integer (the other args are checked by type only)."""
        value = args.get("in_channels", 3)
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            return [f"{path}.in_channels must be at least 1, got {value}"]
        return []

    def __repr__(self) -> str:
        return f"TorchvisionModel({self.__name__!r})"


def provider() -> dict[str, TorchvisionModel]:
    """{name: builder} for every torchvision classification model (imports torchvision.models)."""
    import torchvision.models

    return {name: TorchvisionModel(name) for name in torchvision.models.list_models(module=torchvision.models)}


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """(qualified name, layer) of the model's first nn.Conv2d in named_modules() order, the one that sees the
    input image (resnet's conv1, efficientnet's features.0.0, vit's conv_proj); a UserError when it has none."""
    found = weights.first_conv(model)  # the layer whose RGB kernels the weights loader fits to in_channels
    if found is not None:
        return found
    raise UserError(f"{type(model).__name__} has no nn.Conv2d layer, so its number of input channels "
                    f"(in_channels) cannot be changed; give it 3-channel images")


def _signature(name: str) -> inspect.Signature:
    """The builder's keyword arguments: in_channels and those of the model class the config can set."""
    import torchvision.models

    cls = typing.get_type_hints(torchvision.models.get_model_builder(name))["return"]
    hints = typing.get_type_hints(cls.__init__)
    params = [inspect.Parameter("in_channels", inspect.Parameter.KEYWORD_ONLY, default=3, annotation=int)]
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        annotation = hints.get(p.name, p.annotation)
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) or p.name in _FIXED.get(cls.__name__, ()):
            continue
        if p.name in _FROM_BUILDER.get(cls.__name__, ()):
            default = BUILDER_DEFAULT
        elif p.default is p.empty:  # the builder supplies it (resnet's block and layers)
            continue
        else:
            default = _OUR_DEFAULTS.get(p.name, p.default)
        if _json_like(annotation) if annotation is not p.empty else type(default) in _JSON_LEAVES:
            params.append(inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=annotation))
    return inspect.Signature(params, return_annotation=cls)


def _json_like(annotation: Any) -> bool:
    """Whether a config's JSON values can have this type (int, list[int] | None, ...; not a callable or a class)."""
    origin = typing.get_origin(annotation)
    if origin is None:
        return annotation in _JSON_LEAVES
    return origin in _JSON_CONTAINERS and all(a is Ellipsis or _json_like(a) for a in typing.get_args(annotation))
