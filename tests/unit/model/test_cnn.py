"""Tests for model/cnn.py: the CNN described by a string of tokens, its layers, blocks and options, and its
printout."""
from __future__ import annotations


import pytest
import torch
import torchvision
from torch import nn

from config.arguments import check_args
from conftest import ROOT
from model.cnn import CNN, ChannelLayerNorm, DropPath, ResBlock, set_drop_path, set_dropout
from model.summary import layer_table
from parse_config import read_config
from utils.errors import UserError
from utils.registry import ARCHS

import parse_config  # noqa: E402,F401  (registers the project's classes)


RESNET18 = "(c64_7_2 n f m3_2) 2r r128_3_2 r r256_3_2 r r512_3_2 r"
CONFIGS = ["configs/cnn_blocks.json", "configs/resnet_digits.json"]


def body(blocks: str, input: int = 3, **kwargs) -> CNN:
    """A CNN without a head whose output is the feature map."""
    return CNN(input=input, blocks=blocks, **{"flat": False, **kwargs})


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- resnet18 ----

def test_resnet18_string_is_torchvision_resnet18_without_its_head():
    torch.manual_seed(0)
    model, reference = body(RESNET18), torchvision.models.resnet18(weights=None)
    assert n_params(model) == n_params(reference) - 512 * 1000 - 1000 == 11_176_512
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 512, 7, 7)
    # The same layers in the same order: torchvision's weights load one to one and give the same output.
    theirs = [v for k, v in reference.state_dict().items() if not k.startswith("fc.")]
    ours = model.state_dict()
    assert [v.shape for v in ours.values()] == [v.shape for v in theirs]
    model.load_state_dict(dict(zip(ours, theirs)))
    reference.avgpool, reference.fc = nn.Identity(), nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x).flatten(1), reference.eval()(x))


def test_without_num_classes_the_seed_documents_cnn_is_resnet18s_feature_extractor():
    """CNN(input=..., blocks=...) as the seed document writes it: pool, flatten, no head: 512 features."""
    torch.manual_seed(0)
    model, reference = CNN(input=3, blocks=RESNET18), torchvision.models.resnet18(weights=None)
    assert n_params(model) == 11_176_512 and isinstance(model.head[-1], nn.Flatten)
    theirs = [v for k, v in reference.state_dict().items() if not k.startswith("fc.")]
    model.load_state_dict(dict(zip(model.state_dict(), theirs)))
    reference.fc = nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.eval()(x)
        assert features.shape == (2, 512)
        torch.testing.assert_close(features, reference.eval()(x))


# ---- each token ----

TOKENS = [
    ("c64_7_2", nn.Conv2d, dict(in_channels=3, out_channels=64, kernel_size=(7, 7), stride=(2, 2), padding=(3, 3))),
    ("c", nn.Conv2d, dict(out_channels=3, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))),
    ("c_5", nn.Conv2d, dict(out_channels=3, kernel_size=(5, 5), padding=(2, 2))),
    ("c16_3_1_0", nn.Conv2d, dict(out_channels=16, padding=(0, 0))),
    ("n", nn.BatchNorm2d, dict(num_features=3)),
    ("n1", nn.BatchNorm2d, dict(num_features=3)),
    ("n2", ChannelLayerNorm, {}),
    ("n3", nn.InstanceNorm2d, dict(num_features=3, affine=True)),
    ("f", nn.ReLU, {}),
    ("gelu", nn.GELU, {}),
    ("SiLU", nn.SiLU, {}),
    ("swish", nn.SiLU, {}),
    ("hswish", nn.Hardswish, {}),
    ("relu6", nn.ReLU6, {}),
    ("leaky_relu", nn.LeakyReLU, {}),
    ("m", nn.MaxPool2d, dict(kernel_size=2, stride=2, padding=0)),
    ("m3_2", nn.MaxPool2d, dict(kernel_size=3, stride=2, padding=1)),
    ("a3_1_0", nn.AvgPool2d, dict(kernel_size=3, stride=1, padding=0)),
    ("a", nn.AvgPool2d, dict(kernel_size=2, stride=2, padding=0)),
    ("d", nn.Dropout, dict(p=0.0)),
    ("d1", nn.Dropout, dict(p=0.0)),
    ("d2", nn.Dropout2d, dict(p=0.0)),
    ("r", ResBlock, {}),
    ("b", ResBlock, dict(shortcut=None)),
]


@pytest.mark.parametrize("token, cls, attrs", TOKENS, ids=[t[0] for t in TOKENS])
def test_each_token_builds_its_layer_with_its_hyper_parameters(token, cls, attrs):
    layer = body(token).blocks[0]
    assert type(layer) is cls
    for name, value in attrs.items():
        assert getattr(layer, name) == value, name
    assert body(token)(torch.randn(2, 3, 8, 8)).shape[1] == getattr(layer, "out_channels", 3)


def test_cnf_is_conv_norm_activation_and_the_defaults_follow_norm_and_activation():
    conv, norm, act = body("cnf16_3_2").blocks[0]
    assert (conv.out_channels, conv.stride, conv.bias) == (16, (2, 2), None)
    assert isinstance(norm, nn.BatchNorm2d) and norm.num_features == 16 and isinstance(act, nn.ReLU)
    conv, norm, act = body("cnf8", norm="layer", activation="gelu").blocks[0]
    assert isinstance(norm, ChannelLayerNorm) and isinstance(act, nn.GELU)
    layers = body("n f n3", norm="instance", activation="tanh").blocks
    assert [type(m) for m in layers] == [nn.InstanceNorm2d, nn.Tanh, nn.InstanceNorm2d]


def test_a_conv_has_a_bias_unless_a_norm_follows_it():
    layers = body("c8 n c8 f 2c8 n c8").blocks
    assert [m.bias is not None for m in layers if isinstance(m, nn.Conv2d)] == [False, True, True, False, True]


def test_channel_layer_norm_normalises_each_pixel_over_the_channels():
    norm, x = ChannelLayerNorm(6), torch.randn(2, 6, 5, 5) * 3 + 1
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2), norm.bias.uniform_(-1, 1)
        mean, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
        expected = (x - mean) / torch.sqrt(var + 1e-5) * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(norm(x), expected)
        group = nn.GroupNorm(1, 6)
        group.weight.copy_(norm.weight), group.bias.copy_(norm.bias)
        assert not torch.allclose(group(x), norm(x), atol=1e-3)


# ---- counts and groups ----

def test_count_prefixes_and_nested_groups_repeat_fresh_layers_and_thread_channels():
    model = body("2(c8 3(n f)) 2r c16 2c32", input=1)
    kinds = [type(m).__name__ for m in model.blocks]
    assert kinds == ["Sequential", "Sequential", "ResBlock", "ResBlock", "Conv2d", "Conv2d", "Conv2d"]
    first, second = model.blocks[0], model.blocks[1]
    assert [type(m).__name__ for m in first] == ["Conv2d", "Sequential", "Sequential", "Sequential"]
    assert [type(m).__name__ for m in first[1]] == ["BatchNorm2d", "ReLU"]
    assert (first[0].in_channels, second[0].in_channels) == (1, 8)  # the second repeat starts from 8 channels
    assert first[0] is not second[0] and first[1][0] is not first[2][0]
    assert [(m.in_channels, m.out_channels) for m in model.blocks[4:]] == [(8, 16), (16, 32), (32, 32)]
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 32, 8, 8)


# ---- residual blocks ----

def test_residual_block_keeps_an_identity_skip_and_projects_when_the_shape_changes():
    same, wider = body("r r16", input=8).blocks
    strided = body("r8_3_2", input=8).blocks[0]
    assert isinstance(same.shortcut, nn.Identity) and isinstance(same.drop_path, DropPath)
    for block, stride in ((wider, 1), (strided, 2)):
        conv, norm = block.shortcut
        assert (conv.kernel_size, conv.stride, conv.bias) == ((1, 1), (stride, stride), None)
        assert isinstance(norm, nn.BatchNorm2d) and block.drop_path is None
    assert [type(m) for m in same.branch] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d]
    assert strided.branch[0].stride == (2, 2) and strided.branch[3].stride == (1, 1)
    late = body("r8_3_2", input=8, stride_first=False).blocks[0]
    assert late.branch[0].stride == (1, 1) and late.branch[3].stride == (2, 2)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        same.eval()
        torch.testing.assert_close(same(x), torch.relu(x + same.branch(x)))
        assert strided.eval()(x).shape == (2, 8, 3, 3)


@pytest.mark.parametrize("options, check", [
    (dict(norm_align=False), lambda b: len(b.shortcut) == 1 and b.shortcut[0].bias is not None),
    (dict(norm_inside=False), lambda b: [type(m) for m in b.branch] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d]
     and b.branch[0].bias is not None),
    (dict(norm_block="layer"), lambda b: isinstance(b.branch[4], ChannelLayerNorm) and b.branch[3].bias is None),
    (dict(norm_before=True), lambda b: isinstance(b.norm_before, nn.BatchNorm2d) and b.norm_before.num_features == 8),
    (dict(norm_after="instance", activation_after="gelu"), lambda b: [type(m) for m in b.after]
     == [nn.InstanceNorm2d, nn.GELU]),
    (dict(activation_after=False), lambda b: b.after is None),
    (dict(activation_inside="tanh"), lambda b: isinstance(b.branch[2], nn.Tanh)),
    (dict(activation="silu"), lambda b: isinstance(b.branch[2], nn.SiLU) and isinstance(b.after[0], nn.SiLU)),
])
def test_residual_block_options(options, check):
    block = body("r16", input=8, **options).blocks[0]
    assert check(block)
    assert block(torch.randn(2, 8, 4, 4)).shape == (2, 16, 4, 4)


def test_plain_block_b_is_the_residual_block_without_its_skip():
    block = body("b", input=4).blocks[0].eval()
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(block.branch(x)))
    assert block.shortcut is None and block.drop_path is None and block.scale is None


def test_drop_path_acts_only_in_training_and_only_on_identity_skips():
    torch.manual_seed(0)
    model = body("r r16 r", input=8)
    assert set_drop_path(model, 1.0) == 2  # r16 changes the shape: it has no drop path
    assert model.blocks[1].drop_path is None
    x = torch.randn(16, 8, 5, 5)
    model.eval()
    with torch.no_grad():
        dropped = model(x)
        set_drop_path(model, 0.0)
        torch.testing.assert_close(dropped, model(x))  # eval: drop path does nothing
        block = model.blocks[0].train()
        set_drop_path(block, 1.0)
        torch.testing.assert_close(block(x), torch.relu(x))  # the branch is dropped, the skip stays
        set_drop_path(block, 0.5)
        torch.manual_seed(1)
        out, branch = block(x), block.branch(x)
        kept = [torch.allclose(o, torch.relu(xi + 2 * b)) for o, xi, b in zip(out, x, branch)]
        dropped = [torch.allclose(o, torch.relu(xi)) for o, xi in zip(out, x)]
        assert all(k or d for k, d in zip(kept, dropped)) and any(kept) and any(dropped)


def test_learnable_scale_scalar_and_vector():
    x = torch.randn(2, 8, 4, 4)
    scalar = body("r", input=8, scale="scalar").blocks[0].eval()
    assert scalar.scale.shape == () and scalar.scale.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(scalar(x), torch.relu(x))  # initial scale 0: the block starts as the identity
    vector = body("r", input=8, scale="vector", scale_init=1.0).blocks[0]
    assert vector.scale.shape == (8, 1, 1) and torch.all(vector.scale == 1)
    vector(x).sum().backward()
    assert vector.scale.grad is not None and vector.scale.grad.abs().sum() > 0
    assert n_params(body("r", input=8, scale="vector")) == n_params(body("r", input=8)) + 8
    assert body("b", input=8, scale="vector").blocks[0].scale is None  # no skip: nothing to scale against


# ---- dropout and drop-path probabilities ----

def test_set_dropout_and_set_drop_path_take_a_float_or_a_list_whose_last_value_repeats():
    model = body("d r d2 r r d", input=4)
    dropouts = [m for m in model.modules() if isinstance(m, (nn.Dropout, nn.Dropout2d))]
    paths = [m.drop_path for m in model.blocks if isinstance(m, ResBlock)]
    assert set_dropout(model, 0.3) == 3 and [m.p for m in dropouts] == [0.3] * 3
    assert set_dropout(model, [0.1, 0.2]) == 3 and [m.p for m in dropouts] == [0.1, 0.2, 0.2]
    assert set_drop_path(model, [0.05]) == 3 and [m.p for m in paths] == [0.05] * 3
    assert set_drop_path(model, [0.0, 0.1, 0.2]) == 3 and [m.p for m in paths] == [0.0, 0.1, 0.2]
    built = body("d r d2 r", input=4, dropout=[0.5, 0.25], drop_path=0.1)
    assert [m.p for m in built.modules() if isinstance(m, (nn.Dropout, nn.Dropout2d, DropPath))] == [
        0.5, 0.1, 0.25, 0.1]
    with pytest.raises(UserError, match=r"dropout p: \[0.1, 0.2, 0.3, 0.4\] gives 4 value\(s\) but the model has 3"):
        set_dropout(model, [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(UserError, match=r"drop-path p: 1.5; give a probability in \[0, 1\]"):
        set_drop_path(model, 1.5)
    with pytest.raises(UserError, match=r"arch.args.dropout: 0.5 gives 1 value\(s\) but the model has 0 d tokens"):
        body("c8", dropout=0.5)


# ---- mistakes ----

@pytest.mark.parametrize("blocks, message", [
    ("c64 n q64", r"arch.args.blocks: token 3 'q64' is not a known layer \(c, cnf, n, f, m, a, d, r, b\)"),
    ("c64 gleu", r"token 2 'gleu' is not a known layer .* Did you mean .*'gelu'"),
    ("(c64 n", r"arch.args.blocks: '\(' at character 0 is never closed; add a '\)'"),
    ("c64) n", r"arch.args.blocks: '\)' at character 3 has no matching '\('"),
    ("c8 ()", r"the group at character 3 is empty"),
    ("0(c8 n)", r"the group at character 0 is repeated 0 times"),
    ("c64 c64_x", r"token 2 'c64_x' has 'x' for \[kernel\], not a whole number; write c\[channels\]_\[kernel\]_"),
    ("c8 m2_2_0_1", r"token 2 'm2_2_0_1' has too many numbers; write m\[kernel\]_\[stride\]_\[padding\]"),
    ("c0", r"token 1 'c0' has \[channels\] 0; it must be at least 1"),
    ("c8 r16_3_0", r"token 2 'r16_3_0' has \[stride\] 0"),
    ("0r", r"token 1 '0r' is repeated 0 times"),
    ("n4", r"token 1 'n4' is not a norm; use n .*n1 \(batch\), n2 \(layer\) or n3 \(instance\)"),
    ("d3", r"token 1 'd3' is not a dropout; use d or d1 .* or d2"),
    ("c8 3 r", r"token 2 '3' has no layer letter; a count goes right before a token or group"),
    ("m3_2_2", r"token 1 'm3_2_2' has padding 2; a pool's padding must be at most half its kernel"),
    ("f_1", r"token 1 'f_1' has too many numbers; write f$"),
])
def test_bad_block_strings_name_the_token_and_its_position(blocks, message):
    with pytest.raises(UserError, match=message):
        CNN(input=3, blocks=blocks)


@pytest.mark.parametrize("args, message", [
    (dict(norm="batchnorm"), r"arch.args.norm: 'batchnorm' is not one of 'batch', 'layer', 'instance'"),
    (dict(norm_after="group"), r"arch.args.norm_after: 'group' is not one of"),
    (dict(activation="relux"), r"arch.args.activation: 'relux' is not an activation; .* Did you mean 'relu'"),
    (dict(activation_inside="nope"), r"arch.args.activation_inside: 'nope' is not an activation"),
    (dict(pool="mean"), r"arch.args.pool: 'mean' is not one of 'avg', 'max'"),
    (dict(pool=None, num_classes=10), r"arch.args.pool: null flattens the whole feature map"),
    (dict(flat=False, num_classes=10), r"arch.args.flat: false keeps the feature map, which a linear head cannot"),
    (dict(scale="matrix"), r"arch.args.scale: 'matrix' is not one of 'none', 'scalar', 'vector'"),
    (dict(input_size=[8, 8]), r"arch.args.input_size: \[8, 8\] is not an image size"),
    (dict(input_size=[3, 8, 8]), r"arch.args.input_size: \[3, 8, 8\] has 3 channels but arch.args.input is 1"),
])
def test_bad_options_name_the_argument(args, message):
    with pytest.raises(UserError, match=message):
        CNN(**args)


# ---- head ----

def test_num_classes_adds_global_pooling_flatten_and_a_linear_head():
    x = torch.randn(3, 1, 8, 8)
    model = CNN(input=1, blocks="cnf8 m", num_classes=7)
    pool, flatten, linear = model.head
    assert isinstance(pool, nn.AdaptiveAvgPool2d) and isinstance(flatten, nn.Flatten)
    assert (linear.in_features, linear.out_features) == (8, 7) and model(x).shape == (3, 7)
    assert isinstance(CNN(input=1, blocks="cnf8 m", num_classes=7, pool="max").head[0], nn.AdaptiveMaxPool2d)
    assert body("cnf8 m", input=1)(x).shape == (3, 8, 4, 4) and isinstance(body("c").head, nn.Identity)
    assert body("cnf8 m", input=1, flat=True)(x).shape == (3, 8)
    assert body("cnf8 m", input=1, flat=True, pool=None)(x).shape == (3, 8 * 4 * 4)


def test_cnn_is_built_through_the_registry_from_a_config():
    for path in CONFIGS:
        arch = read_config(ROOT / path)["arch"]
        cls = ARCHS.get(arch["type"], "arch.type")
        assert cls is CNN and check_args(cls, arch["args"], "arch.args") == []
        model = cls(**arch["args"])
        assert model.eval()(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    problems = check_args(CNN, {"blocks": 3, "dropout": "high", "colour": 1}, "arch.args")
    assert any("arch.args.blocks: CNN expects" in p for p in problems)
    assert any("arch.args.dropout: CNN expects" in p for p in problems)
    assert any("arch.args.colour: CNN has no argument" in p for p in problems)


# ---- printout ----

def test_print_shows_the_layer_table_when_the_model_knows_its_input_size():
    model = CNN(input_size=[1, 8, 8])
    text = str(model)
    assert text == model.table() == layer_table(model, (1, 1, 8, 8))
    assert "1x1x8x8 -> 1x32x8x8" in text and "Trainable parameters:" in text
    assert "Trainable parameters:" in str(CNN()) and "->" not in str(CNN())
    assert "2x1x8x8 -> 2x64" in CNN().table([2, 1, 8, 8])  # no num_classes: the pooled features
    assert "2x1x8x8 -> 2x10" in CNN(num_classes=10).table([2, 1, 8, 8])
