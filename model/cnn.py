"""A CNN described by a string of tokens: "(c64_7_2 n f m3_2) 2r r128_3_2 r r256_3_2 r r512_3_2 r" is resnet18.

Tokens are separated by spaces; ( ... ) makes an nn.Sequential of its tokens; a count in front repeats a
token or a group: "2r", "3(c64 n f)". Numbers after a letter are separated by "_" and may be left out
(an empty field keeps the default: "c_5" is a 5x5 conv keeping the channels).

  c[ch]_[k]_[s]_[p]  Conv2d to ch channels (default: unchanged), kernel k (3), stride s (1), padding p ((k-1)//2);
                     it has no bias when a norm token follows it
  cnf[ch]_[k]_[s]_[p]  c, then the configured norm and activation (the conv without bias)
  n, n1, n2, n3      the configured norm (`norm`), BatchNorm2d, channel LayerNorm, InstanceNorm2d(affine=True)
  f                  the configured activation (`activation`); an activation's name is a token too: relu, gelu, ...
  m[k]_[s]_[p]       MaxPool2d, kernel k (2), stride s (2), padding p ((k-1)//2: m3_2 is resnet's k3 s2 p1)
  a[k]_[s]_[p]       AvgPool2d, the same numbers
  d, d1, d2          Dropout (d and d1: elements; d2: whole channels, Dropout2d); p is 0 until set by the `dropout`
                     argument or set_dropout()
  r[ch]_[k]_[s]      residual block (ResBlock): conv-norm-act-conv-norm plus a skip (1x1 conv + norm when the
                     shape changes), add, activation: torchvision's BasicBlock by default
  b[ch]_[k]_[s]      the same block without the skip
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from base import BaseModel
from model.activations import Activation, activation_names
from model.summary import layer_table
from utils.errors import UserError, did_you_mean
from utils.json_types import signature_with

__all__ = ["CNN", "set_drop_path", "set_dropout"]

WHERE = "arch.args.blocks"
NORM_KINDS = ("batch", "layer", "instance")  # n1, n2, n3
POOLS = {"avg": nn.AdaptiveAvgPool2d, "max": nn.AdaptiveMaxPool2d}
SCALES = ("none", "scalar", "vector")
DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
# Short names other libraries use for activations that torch.nn spells out.
_ACTIVATION_ALIASES = {"hswish": "Hardswish", "hsigmoid": "Hardsigmoid"}


# ---- layers -------------------------------------------------------------------------------------

class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of each pixel of (N, C, H, W) (unlike GroupNorm(1, C), which pools H, W too)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.movedim(1, -1), self.weight.shape, self.weight, self.bias, self.eps)
        return x.movedim(-1, 1)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"


class DropPath(nn.Module):
    """Drops a residual branch for a random part of the batch in training (stochastic depth); p: set_drop_path."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep if keep > 0 else x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


def make_norm(kind: str, channels: int) -> nn.Module:
    """The norm layer of kind ("batch", "layer" or "instance") for channels."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return ChannelLayerNorm(channels)
    return nn.InstanceNorm2d(channels, affine=True)


def make_activation(name: str) -> nn.Module:
    """The activation called name: any torch.nn activation (case-insensitive) or one of model/activations.py."""
    return Activation(_ACTIVATION_ALIASES.get(name.lower(), name))


def _check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    """UserError naming arch.args.<key> unless value is one of choices."""
    if value not in choices:
        raise UserError(f"arch.args.{key}: {value!r} is not one of {', '.join(map(repr, choices))}."
                        f"{did_you_mean(str(value), choices)}")


def _check_activation(key: str, name: str) -> None:
    """UserError naming arch.args.<key> unless name is an activation."""
    try:
        make_activation(name)
    except UserError:
        raise UserError(f"arch.args.{key}: {name!r} is not an activation; use a torch.nn activation's name such as "
                        f"'relu', 'gelu' or 'silu'.{did_you_mean(name, _activation_names())}") from None


def _activation_names() -> list[str]:
    """Every activation name a token or option may use, lower case (for did-you-mean)."""
    return [n.lower() for n in activation_names()] + list(_ACTIVATION_ALIASES)


@dataclass(frozen=True)
class BlockOptions:
    """How r and b blocks are built; a norm/activation option is False (none), True (the CNN's default) or a name."""

    norm: str = "batch"
    activation: str = "relu"
    stride_first: bool = True  # the stride on the first conv (resnet), else on the second
    norm_before: bool | str = False  # on the branch's input
    norm_inside: bool | str = True  # between the two convs
    norm_block: bool | str = True  # after the second conv
    norm_align: bool | str = True  # after the 1x1 skip conv
    norm_after: bool | str = False  # after the addition
    activation_inside: bool | str = True  # between the two convs
    activation_after: bool | str = True  # after the addition (resnet's final ReLU)
    scale: str = "none"  # the branch times a learnable "scalar" or per-channel "vector" before the addition
    scale_init: float = 0.0  # its initial value: 0 starts every block as the identity (ReZero, SkipInit)

    def __post_init__(self):
        """Check every option, naming its arch.args key."""
        _check_choice("norm", self.norm, NORM_KINDS)
        _check_choice("scale", self.scale, SCALES)
        for key in ("norm_before", "norm_inside", "norm_block", "norm_align", "norm_after"):
            if isinstance(getattr(self, key), str):
                _check_choice(key, getattr(self, key), NORM_KINDS)
        for key in ("activation", "activation_inside", "activation_after"):
            if isinstance(getattr(self, key), str):
                _check_activation(key, getattr(self, key))

    def norm_for(self, option: bool | str, channels: int) -> list[nn.Module]:
        """[the norm layer] that option asks for, or []."""
        return [make_norm(self.norm if option is True else option, channels)] if option else []

    def activation_for(self, option: bool | str) -> list[nn.Module]:
        """[the activation] that option asks for, or []."""
        return [make_activation(self.activation if option is True else option)] if option else []


class ResBlock(nn.Module):
    """conv-norm-act-conv-norm with a skip around it (torchvision's BasicBlock by default), or without one."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, options: BlockOptions | None = None,
                 skip: bool = True):
        super().__init__()
        o, pad = options or BlockOptions(), (kernel - 1) // 2
        first, second = (stride, 1) if o.stride_first else (1, stride)
        inside, block = o.norm_for(o.norm_inside, cout), o.norm_for(o.norm_block, cout)
        # Unused parts are None rather than empty layers, so that the layer table shows only what runs.
        self.norm_before = next(iter(o.norm_for(o.norm_before, cin)), None)
        self.branch = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, first, pad, bias=not inside), *inside, *o.activation_for(o.activation_inside),
            nn.Conv2d(cout, cout, kernel, second, pad, bias=not block), *block,
        )
        identity = skip and cin == cout and stride == 1
        self.shortcut: nn.Module | None = None
        if identity:
            self.shortcut = nn.Identity()
        elif skip:  # a 1x1 conv (and norm) brings the input to the branch's shape
            align = o.norm_for(o.norm_align, cout)
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=not align), *align)
        shape = {"scalar": (), "vector": (cout, 1, 1)}.get(o.scale) if skip else None
        self.scale = None if shape is None else nn.Parameter(torch.full(shape, float(o.scale_init)))
        self.drop_path = DropPath() if identity else None  # a projected skip is not an identity to fall back on
        after = o.norm_for(o.norm_after, cout) + o.activation_for(o.activation_after)
        self.after = nn.Sequential(*after) if after else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x if self.norm_before is None else self.norm_before(x))
        if self.shortcut is not None:
            if self.scale is not None:
                out = out * self.scale
            if self.drop_path is not None:
                out = self.drop_path(out)
            out = self.shortcut(x) + out
        return out if self.after is None else self.after(out)


# ---- the block string: tokens, a parse tree, and a table from letters to builders ----------------------

@dataclass
class Word:
    """One token: its text, number among the tokens (from 1), letters and numbers."""

    text: str
    index: int
    count: int = 1
    name: str = ""  # the text without its count
    letters: str = ""
    numbers: list[int | None] = field(default_factory=list)

    def error(self, problem: str) -> UserError:
        """A UserError naming this token and its position."""
        return UserError(f"{WHERE}: token {self.index} {self.text!r} {problem}")


@dataclass
class Group:
    """( ... ): an nn.Sequential of its items, repeated count times."""

    items: list[Word | Group]
    count: int = 1


@dataclass(frozen=True)
class Spec:
    """What a token letter builds: build(builder, word, channels) -> (layer, channels) and its number fields."""

    build: Callable
    fields: tuple[str, ...]

    def usage(self, letters: str) -> str:
        """How to write the token, e.g. m[kernel]_[stride]_[padding]."""
        return letters + "_".join(f"[{f}]" for f in self.fields)


_LEXEME = re.compile(r"(\d*)\(|\)|[^\s()]+")
_WORD = re.compile(r"(\d*)([A-Za-z]*)(.*)")


def parse(blocks: str) -> list[Word | Group]:
    """The parse tree of a block string; a mistake raises UserError naming the token or parenthesis."""
    stack: list[list] = [[]]
    opened: list[int] = []
    index = 0
    for match in _LEXEME.finditer(blocks):
        text, at = match.group(), match.start()
        if text.endswith("("):
            count = int(text[:-1] or 1)
            if count < 1:
                raise UserError(f"{WHERE}: the group at character {at} is repeated {count} times; a count must be "
                                "at least 1")
            group = Group([], count)
            stack[-1].append(group)
            stack.append(group.items)
            opened.append(at)
        elif text == ")":
            if len(stack) == 1:
                raise UserError(f"{WHERE}: ')' at character {at} has no matching '('; remove it or add a '('")
            if not stack.pop():
                raise UserError(f"{WHERE}: the group at character {opened[-1]} is empty; put tokens in it or remove it")
            opened.pop()
        else:
            index += 1
            stack[-1].append(_word(text, index))
    if opened:
        raise UserError(f"{WHERE}: '(' at character {opened[-1]} is never closed; add a ')'")
    return stack[0]


def _word(text: str, index: int) -> Word:
    """A token split into count, letters and numbers (checked against its letter's fields)."""
    count, letters, rest = _WORD.fullmatch(text).groups()
    word = Word(text, index, int(count or 1), letters + rest, letters.lower())
    if not letters:
        raise word.error("has no layer letter; a count goes right before a token or group, e.g. 2r or 3(c64 n f)")
    if word.count < 1:
        raise word.error("is repeated 0 times; a count must be at least 1")
    spec = TOKENS.get(word.letters)
    if spec is None:
        return word  # an activation's name, checked when built
    fields = rest.split("_") if rest else []
    if len(fields) > len(spec.fields):
        raise word.error(f"has too many numbers; write {spec.usage(word.letters)}")
    for name, value in zip(spec.fields, fields):
        if value and not value.isdigit():
            raise word.error(f"has {value!r} for [{name}], not a whole number; write {spec.usage(word.letters)}")
        number = int(value) if value else None
        if number is not None and number < (0 if name == "padding" else 1):
            raise word.error(f"has [{name}] {number}; it must be at least {0 if name == 'padding' else 1}")
        word.numbers.append(number)
    word.numbers += [None] * (len(spec.fields) - len(word.numbers))
    return word


class Builder:
    """Turns a parse tree into layers, keeping track of the channel count."""

    def __init__(self, options: BlockOptions):
        self.options = options

    def sequence(self, items: list[Word | Group], channels: int) -> tuple[list[nn.Module], int]:
        """The layers of items (repeats flattened into the list) and the channel count after them."""
        layers: list[nn.Module] = []
        for i, item in enumerate(items):
            after = items[i + 1] if i + 1 < len(items) else None
            norm_next = isinstance(after, Word) and after.letters == "n"
            for repeat in range(item.count):
                if isinstance(item, Group):
                    inner, channels = self.sequence(item.items, channels)
                    layers.append(nn.Sequential(*inner))
                    continue
                # A conv directly followed by a norm needs no bias: the norm's shift replaces it (as in resnet).
                bias = not (norm_next and repeat == item.count - 1)
                layer, channels = self.word(item, channels, bias)
                layers.append(layer)
        return layers, channels

    def word(self, word: Word, channels: int, bias: bool = True) -> tuple[nn.Module, int]:
        """The layer of one token and the channel count after it."""
        spec = TOKENS.get(word.letters)
        if spec is not None:
            return spec.build(self, word, channels, bias)
        try:
            return make_activation(word.name), channels
        except UserError:
            raise word.error(
                f"is not a known layer ({', '.join(TOKENS)}) nor an activation (relu, gelu, silu, ...)."
                f"{did_you_mean(word.name.lower(), list(TOKENS) + _activation_names())}"
            ) from None

    def conv(self, word: Word, channels: int, bias: bool = True) -> tuple[nn.Module, int]:
        """c: Conv2d."""
        out, kernel, stride, pad = word.numbers
        out, kernel = out or channels, kernel or 3
        pad = (kernel - 1) // 2 if pad is None else pad
        return nn.Conv2d(channels, out, kernel, stride or 1, pad, bias=bias), out

    def conv_norm_act(self, word: Word, channels: int, bias: bool = True) -> tuple[nn.Module, int]:
        """cnf: Conv2d (no bias), the configured norm and activation."""
        conv, out = self.conv(word, channels, bias=False)
        return nn.Sequential(conv, make_norm(self.options.norm, out), make_activation(self.options.activation)), out

    def norm(self, word: Word, channels: int, bias: bool = True) -> tuple[nn.Module, int]:
        """n, n1, n2, n3: the configured norm, batch, layer, instance."""
        (kind,) = word.numbers
        if kind is not None and kind > len(NORM_KINDS):
            raise word.error("is not a norm; use n (the configured norm), n1 (batch), n2 (layer) or n3 (instance)")
        return make_norm(self.options.norm if kind is None else NORM_KINDS[kind - 1], channels), channels

    def activation(self, word: Word, channels: int, bias: bool = True) -> tuple[nn.Module, int]:
        """f: the configured activation."""
        return make_activation(self.options.activation), channels

    def pool(self, word: Word, channels: int, bias: bool = True) -> tuple[nn.Module, int]:
        """m, a: MaxPool2d, AvgPool2d."""
        kernel, stride, pad = word.numbers
        kernel = kernel or 2
        pad = (kernel - 1) // 2 if pad is None else pad
        if pad > kernel // 2:
            raise word.error(f"has padding {pad}; a pool's padding must be at most half its kernel ({kernel // 2})")
        cls = nn.MaxPool2d if word.letters == "m" else nn.AvgPool2d
        return cls(kernel, stride or 2, pad), channels

    def dropout(self, word: Word, channels: int, bias: bool = True) -> tuple[nn.Module, int]:
        """d, d1, d2: Dropout, Dropout, Dropout2d (p 0 until set)."""
        (kind,) = word.numbers
        if kind not in (None, 1, 2):
            raise word.error("is not a dropout; use d or d1 (Dropout: elements) or d2 (Dropout2d: whole channels)")
        return (nn.Dropout2d(0.0) if kind == 2 else nn.Dropout(0.0)), channels

    def block(self, word: Word, channels: int, bias: bool = True) -> tuple[nn.Module, int]:
        """r, b: ResBlock with and without its skip."""
        out, kernel, stride = word.numbers
        out = out or channels
        return ResBlock(channels, out, kernel or 3, stride or 1, self.options, skip=word.letters == "r"), out


TOKENS: dict[str, Spec] = {
    "c": Spec(Builder.conv, ("channels", "kernel", "stride", "padding")),
    "cnf": Spec(Builder.conv_norm_act, ("channels", "kernel", "stride", "padding")),
    "n": Spec(Builder.norm, ("kind",)),
    "f": Spec(Builder.activation, ()),
    "m": Spec(Builder.pool, ("kernel", "stride", "padding")),
    "a": Spec(Builder.pool, ("kernel", "stride", "padding")),
    "d": Spec(Builder.dropout, ("kind",)),
    "r": Spec(Builder.block, ("channels", "kernel", "stride")),
    "b": Spec(Builder.block, ("channels", "kernel", "stride")),
}


# ---- the model ---------------------------------------------------------------------------------------

class CNN(BaseModel):
    """A CNN from a block string (see this module's docstring), with a classifier head when num_classes is given."""

    def __init__(
        self,
        input: int = 1,
        blocks: str = "(cnf32 cnf32 m) (cnf64 cnf64 m)",
        num_classes: int | None = None,
        pool: str | None = "avg",
        flat: bool = True,
        dropout: float | list[float] = 0.0,
        drop_path: float | list[float] = 0.0,
        input_size: list[int] | None = None,
        **block_options: Any,
    ):
        """input: image channels; num_classes: a linear head to that many outputs (null: none, the features are
        the output); pool ("avg", "max" or null) then a flatten turn the feature map into features unless flat is
        false (the (N, C, H, W) map is the output; no head); input_size ([C, H, W]) makes print(model) a layer
        table; block_options: the fields of BlockOptions (norm, activation, norm_before, ...), named arguments."""
        super().__init__()
        options = BlockOptions(**block_options)
        if pool is not None:
            _check_choice("pool", pool, tuple(POOLS))
        if num_classes is not None and pool is None:
            raise UserError("arch.args.pool: null flattens the whole feature map, whose size the head cannot know; "
                            "use 'avg' or 'max' with num_classes")
        if num_classes is not None and not flat:
            raise UserError("arch.args.flat: false keeps the feature map, which a linear head cannot take; set flat "
                            "to true or num_classes to null")
        self.input_size = None if input_size is None else _with_batch(input_size)
        if self.input_size is not None and self.input_size[1] != input:
            raise UserError(f"arch.args.input_size: {input_size} has {self.input_size[1]} channels but arch.args.input "
                            f"is {input}; make them agree")
        layers, channels = Builder(options).sequence(parse(blocks), input)
        self.blocks = nn.Sequential(*layers)
        head: list[nn.Module] = []
        if flat:
            head += [POOLS[pool](1)] if pool else []
            head += [nn.Flatten()]
        if num_classes is not None:
            head += [nn.Linear(channels, num_classes)]
        self.head = nn.Sequential(*head) if head else nn.Identity()
        _set_p(self, DROPOUTS, dropout, "arch.args.dropout", "d tokens")
        _set_p(self, DropPath, drop_path, "arch.args.drop_path", "r blocks whose skip is the identity")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))

    def table(self, input_size: Sequence[int] | None = None) -> str:
        """The layer table (shapes, parameters, share) for an input of input_size ([C, H, W] or [N, C, H, W])."""
        size = self.input_size if input_size is None else _with_batch(input_size)
        if size is None:
            raise ValueError("CNN.table needs an input_size, e.g. model.table([1, 8, 8])")
        return layer_table(self, size)

    def __str__(self) -> str:
        if self.input_size is None:
            return super().__str__()
        return self.table()


CNN.__init__.__signature__ = signature_with(CNN.__init__, BlockOptions)  # the options are named arguments


def _with_batch(size: Sequence[int]) -> tuple[int, ...]:
    """(N, C, H, W) from [C, H, W] (N = 1) or [N, C, H, W]."""
    size = tuple(int(s) for s in size)
    if len(size) not in (3, 4):
        raise UserError(f"arch.args.input_size: {list(size)} is not an image size; write [C, H, W], e.g. [1, 8, 8]")
    return size if len(size) == 4 else (1, *size)


# ---- dropout and drop-path probabilities -----------------------------------------------------------------

def set_dropout(model: nn.Module, p: float | Sequence[float]) -> int:
    """Set p of model's dropout layers in order (a list: one value per layer, its last value repeating); returns
    how many were set."""
    return _set_p(model, DROPOUTS, p, "dropout p", "dropout layers")


def set_drop_path(model: nn.Module, p: float | Sequence[float]) -> int:
    """Set the drop-path p of model's residual blocks whose skip is the identity, in order (a list: one value per
    block, its last value repeating); returns how many were set."""
    return _set_p(model, DropPath, p, "drop-path p", "r blocks whose skip is the identity")


def _set_p(model: nn.Module, kind: type | tuple[type, ...], p: float | Sequence[float], key: str, what: str) -> int:
    """Set .p of model's layers of kind from p; bad values raise UserError naming key."""
    values = [p] if isinstance(p, (int, float)) else list(p)
    layers = [m for m in model.modules() if isinstance(m, kind)]
    if not values or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in values):
        raise UserError(f"{key}: {p!r}; give a probability in [0, 1] or a list of them")
    if len(values) > max(len(layers), 1) or (not layers and any(values)):
        raise UserError(f"{key}: {p!r} gives {len(values)} value(s) but the model has {len(layers)} {what}")
    for i, layer in enumerate(layers):
        layer.p = float(values[min(i, len(values) - 1)])
    return len(layers)
