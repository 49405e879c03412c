"""Networks built from config: MLPs, conv nets, ResNets, a ViT, and encoders/decoders around them.

Names follow the ml-networks lab library (LinearConfig, MLPConfig, ConvConfig, ConvNetConfig, ResNetConfig,
ViTConfig, MLPLayer, Encoder, Decoder). Each *Config is a dataclass that also accepts a plain dict with
its fields (nested configs as nested dicts), so an arch's JSON `args` describe the whole network:

    "arch": {"type": "Encoder", "args": {"feature_dim": 10, "obs_shape": [1, 8, 8],
             "backbone_cfg": {"type": "ResNetConfig", "conv_channel": 32, "n_scaling": 1},
             "head": "mlp", "head_cfg": {"hidden_dim": 128}}}

Sizes between parts are computed with a dry forward pass on an example of the declared input shape; a size
the user declared that does not fit raises a UserError giving the size it should be.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from base import BaseModel
from model.activations import Activation
from utils.errors import UserError, did_you_mean
from utils.json_types import describe, json_types, type_ok

__all__ = [
    "MLP",
    "AutoEncoder",
    "ConvConfig",
    "ConvNet",
    "ConvNetConfig",
    "Decoder",
    "Encoder",
    "LinearConfig",
    "MLPConfig",
    "MLPLayer",
    "ResNet",
    "ResNetConfig",
    "ViT",
    "ViTConfig",
]


# ---------------------------------------------------------------- configs

class _Config:
    """Dataclass mixin: build from a dict (unknown keys raise a UserError), nested configs converted."""

    _nested: ClassVar[dict[str, type]] = {}

    @classmethod
    def from_value(cls, value: Any, where: str | None = None):
        """cls from an instance, a dict of its fields, or None (the defaults)."""
        where = where or cls.__name__
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected an object with the fields of {cls.__name__}, got {value!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in value:
            if key not in names:
                of = "" if where == cls.__name__ else f" of {cls.__name__}"
                raise UserError(f"{where}: unknown field {key!r}{of}.{did_you_mean(str(key), names)} "
                                f"Its fields: {', '.join(names)}")
        kinds = json_types(cls)  # from the annotations; () where they admit no plain JSON value (nested configs)
        for key, item in value.items():
            if key not in cls._nested and kinds[key] and not type_ok(item, kinds[key]):
                raise UserError(f"{where}.{key}: expected {describe(kinds[key])}, got {item!r}")
        return cls(**value)

    def __post_init__(self):
        for name, sub in self._nested.items():
            setattr(self, name, sub.from_value(getattr(self, name), f"{type(self).__name__}.{name}"))


@dataclass
class LinearConfig(_Config):
    """One fully connected layer: Linear, norm ("none", "layer", "batch", "rms"), activation, dropout."""

    activation: str = "ReLU"
    bias: bool = True
    norm: str = "none"
    norm_cfg: dict = field(default_factory=dict)
    norm_first: bool = False  # norm before the Linear instead of after it
    dropout: float = 0.0
    activation_cfg: dict = field(default_factory=dict)


@dataclass
class MLPConfig(_Config):
    """n_layers hidden layers of hidden_dim (each a LinearConfig layer), then a Linear and output_activation."""

    hidden_dim: int = 256
    n_layers: int = 2
    output_activation: str = "Identity"
    linear_cfg: LinearConfig = field(default_factory=LinearConfig)

    _nested: ClassVar[dict] = {"linear_cfg": LinearConfig}


@dataclass
class ConvConfig(_Config):
    """One conv layer: Conv2d, norm ("none", "batch", "group", "layer", "instance"), activation, dropout.

    In a Decoder, stride is the upsampling factor of the layer (ConvTranspose2d or conv + PixelShuffle)."""

    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    dilation: int = 1
    groups: int = 1
    bias: bool = True
    activation: str = "ReLU"
    activation_cfg: dict = field(default_factory=dict)
    norm: str = "none"
    norm_cfg: dict = field(default_factory=dict)
    dropout: float = 0.0


@dataclass
class ConvNetConfig(_Config):
    """A stack of conv layers: layer i has channels[i] output channels (in a Decoder: input channels).

    conv_cfgs: one ConvConfig per layer, or a single one used for every layer (default: 3x3, stride 2)."""

    channels: list = field(default_factory=lambda: [32, 64])
    conv_cfgs: Any = None

    def __post_init__(self):
        n = len(self.channels)
        if n == 0:
            raise UserError("ConvNetConfig.channels: give at least one layer's channels")
        cfgs = self.conv_cfgs
        if cfgs is None:
            cfgs = ConvConfig(stride=2)
        if isinstance(cfgs, (dict, ConvConfig)):
            one = ConvConfig.from_value(cfgs, "ConvNetConfig.conv_cfgs")
            cfgs = [one] * n
        if not isinstance(cfgs, (list, tuple)) or len(cfgs) != n:
            raise UserError(f"ConvNetConfig.conv_cfgs: give one ConvConfig per layer ({n}, as in channels) "
                            f"or a single one for all, got {cfgs!r}")
        self.conv_cfgs = [ConvConfig.from_value(c, f"ConvNetConfig.conv_cfgs[{i}]") for i, c in enumerate(cfgs)]


@dataclass
class ResNetConfig(_Config):
    """A stem conv (f_kernel) to conv_channel channels, then n_scaling stages of n_res_blocks residual blocks
    (conv_kernel) each followed by PixelUnshuffle(scale_factor) down (encoder) or PixelShuffle up (decoder)."""

    conv_channel: int = 64
    conv_kernel: int = 3
    f_kernel: int = 3
    conv_activation: str = "ReLU"
    out_activation: str = "ReLU"
    n_res_blocks: int = 2
    scale_factor: int = 2
    n_scaling: int = 2
    norm: str = "batch"
    norm_cfg: dict = field(default_factory=dict)
    dropout: float = 0.0


@dataclass
class ViTConfig(_Config):
    """A vision transformer encoder: patch embedding, learned positions, torch TransformerEncoderLayers.

    pool: "cls" (the class token), "mean" (mean of the patch tokens) or "none" (all tokens)."""

    patch_size: int = 4
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_dim: int = 128
    dropout: float = 0.0
    activation: str = "gelu"
    pool: str = "cls"
    norm_first: bool = True


_BACKBONE_CONFIGS = {"convnet": ConvNetConfig, "resnet": ResNetConfig, "vit": ViTConfig}


def _backbone_cfg(value: Any, where: str, default: Any = None):
    """A ConvNetConfig/ResNetConfig/ViTConfig from an instance or a dict whose "type" names it (default ConvNet)."""
    if value is None:
        return default if default is not None else ConvNetConfig()
    if isinstance(value, tuple(_BACKBONE_CONFIGS.values())):
        return value
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected an object such as {{\"type\": \"ConvNetConfig\", ...}}, got {value!r}")
    value = dict(value)
    kind = str(value.pop("type", "ConvNetConfig"))
    key = kind.lower().removesuffix("config")
    if key not in _BACKBONE_CONFIGS:
        names = [c.__name__ for c in _BACKBONE_CONFIGS.values()]
        hint = did_you_mean(kind, names + [n.removesuffix("Config") for n in names])
        raise UserError(f"{where}.type: unknown backbone {kind!r}.{hint} "
                        f"Use one of {', '.join(names)}")
    return _BACKBONE_CONFIGS[key].from_value(value, where)


# ---------------------------------------------------------------- layers

def _choice(value: str, choices: list[str], where: str) -> str:
    if value not in choices:
        raise UserError(f"{where}: unknown value {value!r}.{did_you_mean(str(value), choices)} "
                        f"Use one of {', '.join(map(repr, choices))}")
    return value


class _BatchNormLastDim(nn.BatchNorm1d):
    """BatchNorm1d over the last dim of an input with any leading dims."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def _linear_norm(kind: str, dim: int, cfg: dict, where: str) -> nn.Module:
    kind = _choice(kind, ["none", "layer", "batch", "rms"], where)
    return {"none": lambda: nn.Identity(), "layer": lambda: nn.LayerNorm(dim, **cfg),
            "batch": lambda: _BatchNormLastDim(dim, **cfg), "rms": lambda: nn.RMSNorm(dim, **cfg)}[kind]()


def _conv_norm(kind: str, channels: int, cfg: dict, where: str) -> nn.Module:
    kind = _choice(kind, ["none", "batch", "group", "layer", "instance"], where)
    if kind == "group":
        groups = cfg.get("num_groups", math.gcd(8, channels))
        return nn.GroupNorm(groups, channels, **{k: v for k, v in cfg.items() if k != "num_groups"})
    return {"none": lambda: nn.Identity(), "batch": lambda: nn.BatchNorm2d(channels, **cfg),
            "layer": lambda: nn.GroupNorm(1, channels, **cfg),
            "instance": lambda: nn.InstanceNorm2d(channels, **{"affine": True, **cfg})}[kind]()


class LinearLayer(nn.Sequential):
    """Linear -> norm -> activation -> dropout (norm first with norm_first), on the last dim."""

    def __init__(self, input_dim: int, output_dim: int, cfg: LinearConfig | dict | None = None):
        cfg = LinearConfig.from_value(cfg, "LinearLayer.cfg")
        linear = nn.Linear(input_dim, output_dim, bias=cfg.bias)
        norm = _linear_norm(cfg.norm, input_dim if cfg.norm_first else output_dim, cfg.norm_cfg, "LinearConfig.norm")
        layers = [norm, linear] if cfg.norm_first else [linear, norm]
        layers += [Activation(cfg.activation, **cfg.activation_cfg)]
        if cfg.dropout:
            layers.append(nn.Dropout(cfg.dropout))
        super().__init__(*(m for m in layers if not isinstance(m, nn.Identity)))


class MLPLayer(nn.Sequential):
    """An MLP on the last dim (any leading dims): n_layers hidden LinearLayers, a Linear, output_activation."""

    def __init__(self, input_dim: int, output_dim: int, cfg: MLPConfig | dict | None = None):
        cfg = MLPConfig.from_value(cfg, "MLPLayer.cfg")
        dims = [input_dim] + [cfg.hidden_dim] * cfg.n_layers
        layers: list[nn.Module] = [LinearLayer(a, b, cfg.linear_cfg) for a, b in itertools.pairwise(dims)]
        layers += [nn.Linear(dims[-1], output_dim, bias=cfg.linear_cfg.bias), Activation(cfg.output_activation)]
        super().__init__(*(m for m in layers if not isinstance(m, nn.Identity)))
        self.input_dim, self.output_dim = input_dim, output_dim


def _conv_block(in_ch: int, out_ch: int, cfg: ConvConfig, conv: nn.Module, last: bool = False) -> list[nn.Module]:
    """conv -> norm -> activation -> dropout; a decoder's last layer (last=True) is the conv alone."""
    if last:
        return [conv]
    layers = [conv, _conv_norm(cfg.norm, out_ch, cfg.norm_cfg, "ConvConfig.norm"),
              Activation(cfg.activation, **cfg.activation_cfg)]
    if cfg.dropout:
        layers.append(nn.Dropout(cfg.dropout))
    return [m for m in layers if not isinstance(m, nn.Identity)]


def _dry_forward(module: nn.Module, shape: tuple, who: str) -> torch.Tensor:
    """module's output for zeros of shape, in eval mode without gradients; a failure is the user's config."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return module(torch.zeros(shape))
    except (RuntimeError, ValueError) as e:
        raise UserError(f"{who}: cannot process an input of shape {list(shape[1:])}: {str(e).splitlines()[0]}; "
                        f"check obs_shape and the backbone's kernel sizes, strides and number of layers") from None
    finally:
        module.train(was_training)


def _positive(value: Any, key: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{key} must be a positive integer, got {value!r}")


def _check_shape(x: torch.Tensor, shape: tuple, who: str, key: str) -> None:
    if x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape):]) != tuple(shape):
        raise UserError(f"{who}: the input has shape {list(x.shape)}, whose trailing dims should be {list(shape)}; "
                        f"set {key} to the data's shape")


# ---------------------------------------------------------------- backbones

class ConvNet(BaseModel):
    """A stack of conv layers (ConvNetConfig) from in_channels to a feature map with channels[-1] channels."""

    def __init__(self, in_channels: int, cfg: ConvNetConfig | dict | None = None):
        super().__init__()
        cfg = ConvNetConfig.from_value(cfg, "ConvNet.cfg")
        layers, prev = [], in_channels
        for ch, c in zip(cfg.channels, cfg.conv_cfgs):
            conv = nn.Conv2d(prev, ch, c.kernel_size, c.stride, c.padding, c.dilation, c.groups, c.bias)
            layers += _conv_block(prev, ch, c, conv)
            prev = ch
        self.layers = nn.Sequential(*layers)
        self.out_channels = prev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _ResBlock(nn.Module):
    """Pre-activation residual block: x + conv(drop(act(norm(conv(act(norm(x))))))."""

    def __init__(self, ch: int, cfg: ResNetConfig):
        super().__init__()
        pad = cfg.conv_kernel // 2
        self.body = nn.Sequential(*(m for m in [
            _conv_norm(cfg.norm, ch, cfg.norm_cfg, "ResNetConfig.norm"), Activation(cfg.conv_activation),
            nn.Conv2d(ch, ch, cfg.conv_kernel, padding=pad),
            _conv_norm(cfg.norm, ch, cfg.norm_cfg, "ResNetConfig.norm"), Activation(cfg.conv_activation),
            nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity(),
            nn.Conv2d(ch, ch, cfg.conv_kernel, padding=pad),
        ] if not isinstance(m, nn.Identity)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet(BaseModel):
    """Residual blocks with PixelUnshuffle downsampling (direction "down": an encoder's feature map of
    conv_channel channels, out_activation applied) or PixelShuffle upsampling (direction "up": a decoder
    ending in an f_kernel conv to out_channels)."""

    def __init__(self, in_channels: int, cfg: ResNetConfig | dict | None = None, direction: str = "down",
                 out_channels: int | None = None):
        super().__init__()
        cfg = ResNetConfig.from_value(cfg, "ResNet.cfg")
        _choice(direction, ["down", "up"], "ResNet.direction")
        ch, s, fpad = cfg.conv_channel, cfg.scale_factor, cfg.f_kernel // 2
        if cfg.conv_kernel % 2 == 0 or cfg.f_kernel % 2 == 0:
            raise UserError("ResNetConfig: conv_kernel and f_kernel must be odd, so that blocks keep the size")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ch, cfg.f_kernel, padding=fpad)]
        for _ in range(cfg.n_scaling):
            layers += [_ResBlock(ch, cfg) for _ in range(cfg.n_res_blocks)]
            if direction == "down":
                layers += [nn.PixelUnshuffle(s), nn.Conv2d(ch * s * s, ch, 1)]
            else:
                layers += [nn.Conv2d(ch, ch * s * s, 1), nn.PixelShuffle(s)]
        layers += [_ResBlock(ch, cfg) for _ in range(cfg.n_res_blocks)]
        if direction == "down":
            layers += [_conv_norm(cfg.norm, ch, cfg.norm_cfg, "ResNetConfig.norm"), Activation(cfg.out_activation)]
            self.out_channels = ch
        else:
            layers += [_conv_norm(cfg.norm, ch, cfg.norm_cfg, "ResNetConfig.norm"), Activation(cfg.conv_activation),
                       nn.Conv2d(ch, out_channels or in_channels, cfg.f_kernel, padding=fpad)]
            self.out_channels = out_channels or in_channels
        self.layers = nn.Sequential(*(m for m in layers if not isinstance(m, nn.Identity)))
        self.scale = s ** cfg.n_scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ViT(BaseModel):
    """A vision transformer encoder on (N, C, H, W): (N, dim) for pool "cls"/"mean", (N, tokens, dim) for "none"."""

    def __init__(self, obs_shape: list[int], cfg: ViTConfig | dict | None = None):
        super().__init__()
        cfg = ViTConfig.from_value(cfg, "ViT.cfg")
        c, h, w = _image_shape(obs_shape, "ViT")
        p = cfg.patch_size
        if h % p or w % p:
            raise UserError(f"ViTConfig.patch_size: {p} does not divide the image size {h}x{w}; "
                            f"use a divisor of both, e.g. {math.gcd(h, w)}")
        if cfg.dim % cfg.heads:
            raise UserError(f"ViTConfig.heads: dim {cfg.dim} is not divisible by heads {cfg.heads}")
        self.pool = _choice(cfg.pool, ["cls", "mean", "none"], "ViTConfig.pool")
        self.patch = nn.Conv2d(c, cfg.dim, p, stride=p)
        n_tokens = (h // p) * (w // p) + (self.pool == "cls")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if self.pool == "cls" else None
        self.pos = nn.Parameter(torch.randn(1, n_tokens, cfg.dim) * 0.02)
        act = cfg.activation.lower()
        layer = nn.TransformerEncoderLayer(
            cfg.dim, cfg.heads, cfg.mlp_dim, cfg.dropout, batch_first=True, norm_first=cfg.norm_first,
            activation=act if act in ("relu", "gelu") else Activation(cfg.activation))
        self.blocks = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # (N, patches, dim)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)
        tokens = self.norm(self.blocks(self.drop(tokens + self.pos)))
        if self.pool == "cls":
            return tokens[:, 0]
        return tokens.mean(dim=1) if self.pool == "mean" else tokens


def _image_shape(obs_shape: Any, who: str) -> tuple[int, int, int]:
    if not (isinstance(obs_shape, (list, tuple)) and len(obs_shape) == 3 and all(isinstance(n, int) and n > 0
                                                                                 for n in obs_shape)):
        raise UserError(f"{who}: obs_shape must be [channels, height, width], got {obs_shape!r}")
    return tuple(obs_shape)


def _head(kind: str, in_dim: int, out_dim: int, cfg: Any, where: str) -> nn.Module:
    kind = _choice(kind, ["mlp", "linear", "none"], f"{where}.head")
    if kind == "mlp":
        return MLPLayer(in_dim, out_dim, MLPConfig.from_value(cfg, f"{where}.head_cfg"))
    if kind == "linear":
        return LinearLayer(in_dim, out_dim, LinearConfig(activation="Identity") if cfg is None
                           else LinearConfig.from_value(cfg, f"{where}.head_cfg"))
    return nn.Identity()


# ---------------------------------------------------------------- models

class MLP(BaseModel):
    """An MLP classifier/regressor: input_dim is a feature count, or a shape such as [1, 8, 8] whose trailing
    dims are flattened (any leading dims kept)."""

    def __init__(self, input_dim: int | list[int], output_dim: int, cfg: MLPConfig | dict | None = None):
        super().__init__()
        self.in_shape = tuple(input_dim) if isinstance(input_dim, (list, tuple)) else (input_dim,)
        for n in (*self.in_shape, output_dim):
            _positive(n, "MLP: input_dim and output_dim")
        self.mlp = MLPLayer(math.prod(self.in_shape), output_dim, MLPConfig.from_value(cfg, "MLP.cfg"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_shape(x, self.in_shape, "MLP", "arch.args.input_dim")
        return self.mlp(x.flatten(x.dim() - len(self.in_shape)))


class Encoder(BaseModel):
    """Image (*batch, C, H, W) -> features (*batch, feature_dim): a backbone (ConvNetConfig, ResNetConfig or
    ViTConfig; a dict names its class in "type", default ConvNetConfig), its output flattened, then a head:
    "mlp" (MLPConfig), "linear" (LinearConfig; default a plain Linear) or "none" (feature_dim must then equal
    the flattened size). head_in_dim, if given, must equal the flattened size (default: computed)."""

    def __init__(self, feature_dim: int, obs_shape: list[int], backbone_cfg: Any = None, head: str = "mlp",
                 head_cfg: Any = None, head_in_dim: int | None = None):
        super().__init__()
        _positive(feature_dim, "Encoder.feature_dim")
        self.obs_shape = _image_shape(obs_shape, "Encoder")
        cfg = _backbone_cfg(backbone_cfg, "Encoder.backbone_cfg")
        if isinstance(cfg, ViTConfig):
            self.backbone = ViT(list(self.obs_shape), cfg)
        else:
            self.backbone = (ConvNet if isinstance(cfg, ConvNetConfig) else ResNet)(self.obs_shape[0], cfg)
        out = _dry_forward(self.backbone, (1, *self.obs_shape), "Encoder")
        self.feature_shape = tuple(out.shape[1:])
        flat = out[0].numel()
        what = (f"the {type(self.backbone).__name__} output of shape {list(self.feature_shape)} flattens to "
                f"{flat} features")
        if head == "none" and feature_dim != flat:
            raise UserError(f"Encoder: {what} but feature_dim is {feature_dim}; with head 'none' set feature_dim "
                            f"to {flat}")
        if head_in_dim is not None and head_in_dim != flat:
            raise UserError(f"Encoder: {what} but the head was built for {head_in_dim}; set head_in_dim to {flat} "
                            f"(or leave it out)")
        self.head = _head(head, flat, feature_dim, head_cfg, "Encoder")
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_shape(x, self.obs_shape, "Encoder", "obs_shape")
        batch = x.shape[:-3]
        z = self.backbone(x.reshape(-1, *self.obs_shape)).flatten(1)
        return self.head(z).reshape(*batch, -1)


class Decoder(BaseModel):
    """Features (*batch, feature_dim) -> image (*batch, *obs_shape): a head ("mlp", "linear", "none") to the
    first feature map, then a ConvNetConfig stack or a ResNetConfig (PixelShuffle) upsampling to obs_shape.

    ConvNetConfig: layer i takes channels[i] channels and upsamples by its stride, with ConvTranspose2d
    (upsample "convtranspose") or a conv and PixelShuffle ("pixelshuffle"); the last layer outputs the image's
    channels and is a bare conv (no norm, activation or dropout), followed by output_activation."""

    def __init__(self, feature_dim: int, obs_shape: list[int], backbone_cfg: Any = None, head: str = "mlp",
                 head_cfg: Any = None, upsample: str = "convtranspose", output_activation: str = "Identity"):
        super().__init__()
        _positive(feature_dim, "Decoder.feature_dim")
        self.obs_shape = c, h, w = _image_shape(obs_shape, "Decoder")
        cfg = _backbone_cfg(backbone_cfg, "Decoder.backbone_cfg")
        _choice(upsample, ["convtranspose", "pixelshuffle"], "Decoder.upsample")
        if isinstance(cfg, ViTConfig):
            raise UserError("Decoder.backbone_cfg: a ViTConfig cannot decode; use ConvNetConfig or ResNetConfig")
        if isinstance(cfg, ResNetConfig):
            self.backbone = ResNet(cfg.conv_channel, cfg, direction="up", out_channels=c)
            first_ch, scale = cfg.conv_channel, self.backbone.scale
        else:
            self.backbone = self._conv_stack(cfg, c, upsample)
            first_ch, scale = cfg.channels[0], math.prod(cc.stride for cc in cfg.conv_cfgs)
        if h % scale or w % scale:
            raise UserError(f"Decoder: the backbone upsamples by {scale}, which does not divide obs_shape's "
                            f"{h}x{w}; change the strides (or scale_factor/n_scaling) or obs_shape")
        self.first_shape = (first_ch, h // scale, w // scale)
        size = math.prod(self.first_shape)
        if head == "none" and feature_dim != size:
            raise UserError(f"Decoder: with head 'none' the features are reshaped to the first feature map "
                            f"{list(self.first_shape)} of {size} values, but feature_dim is {feature_dim}; set "
                            f"feature_dim to {size}")
        self.head = _head(head, feature_dim, size, head_cfg, "Decoder")
        self.out_act = Activation(output_activation)
        out = _dry_forward(self.backbone, (1, *self.first_shape), "Decoder")
        if tuple(out.shape[1:]) != self.obs_shape:
            raise UserError(f"Decoder: the backbone turns the first feature map {list(self.first_shape)} into "
                            f"{list(out.shape[1:])}, not obs_shape {list(self.obs_shape)}; use padding "
                            f"(kernel_size - 1) // 2 with odd kernels")
        self.feature_dim = feature_dim

    @staticmethod
    def _conv_stack(cfg: ConvNetConfig, out_channels: int, upsample: str) -> nn.Sequential:
        layers = []
        outs = list(cfg.channels[1:]) + [out_channels]
        for i, (a, b, cc) in enumerate(zip(cfg.channels, outs, cfg.conv_cfgs)):
            k, s, p, d = cc.kernel_size, cc.stride, cc.padding, cc.dilation
            if upsample == "convtranspose" and s > 1:
                extra = s + 2 * p - d * (k - 1) - 1  # output_padding for exactly s-times the size
                if not 0 <= extra < max(s, d):
                    fit = max(0, -(-(d * (k - 1) + 1 - s) // 2))  # the smallest padding with extra >= 0
                    raise UserError(f"Decoder.backbone_cfg.conv_cfgs[{i}]: kernel_size {k}, stride {s}, padding "
                                    f"{p} cannot upsample exactly {s}x with ConvTranspose2d; use padding {fit}")
                conv: nn.Module = nn.ConvTranspose2d(a, b, k, s, p, output_padding=extra, groups=cc.groups,
                                                     bias=cc.bias, dilation=d)
            elif s > 1:
                conv = nn.Sequential(nn.Conv2d(a, b * s * s, k, 1, p, d, cc.groups, cc.bias), nn.PixelShuffle(s))
            else:
                conv = nn.Conv2d(a, b, k, 1, p, d, cc.groups, cc.bias)
            layers += _conv_block(a, b, cc, conv, last=i == len(outs) - 1)
        return nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        x = self.head(z).reshape(-1, *self.first_shape)
        return self.out_act(self.backbone(x)).reshape(*batch, *self.obs_shape)


def _mirror(cfg: Any) -> Any:
    """The default decoder backbone for an encoder backbone: a ConvNet reversed, a ResNet the same."""
    if isinstance(cfg, ConvNetConfig):
        return ConvNetConfig(channels=list(reversed(cfg.channels)), conv_cfgs=list(reversed(cfg.conv_cfgs)))
    if isinstance(cfg, ResNetConfig):
        return cfg
    return ConvNetConfig(channels=[64, 32], conv_cfgs=ConvConfig(stride=2))


class AutoEncoder(BaseModel):
    """Encoder then Decoder, image to image. encoder/decoder: their arguments other than feature_dim and
    obs_shape; the decoder's backbone defaults to the encoder's mirrored (a ConvNet reversed)."""

    def __init__(self, obs_shape: list[int], feature_dim: int = 32, encoder: dict | None = None,
                 decoder: dict | None = None):
        super().__init__()
        encoder, decoder = dict(encoder or {}), dict(decoder or {})
        for part, args in (("encoder", encoder), ("decoder", decoder)):
            for key in ("feature_dim", "obs_shape"):
                if key in args:
                    raise UserError(f"AutoEncoder.{part}.{key}: set {key} once, as an argument of AutoEncoder")
        encoder["backbone_cfg"] = _backbone_cfg(encoder.get("backbone_cfg"), "AutoEncoder.encoder.backbone_cfg")
        decoder.setdefault("backbone_cfg", _mirror(encoder["backbone_cfg"]))
        self.encoder = _build(Encoder, encoder, "AutoEncoder.encoder", feature_dim=feature_dim, obs_shape=obs_shape)
        self.decoder = _build(Decoder, decoder, "AutoEncoder.decoder", feature_dim=feature_dim, obs_shape=obs_shape)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _build(cls: type, args: dict, where: str, **fixed: Any) -> nn.Module:
    import inspect

    names = list(inspect.signature(cls).parameters)
    for key in args:
        if key not in names:
            raise UserError(f"{where}: {cls.__name__} has no argument {key!r}.{did_you_mean(key, names)}")
    return cls(**fixed, **args)
