"""Tests for model/builders.py: networks built from JSON config (MLPs, conv nets, ResNets, a ViT, and encoders and
decoders around them)."""
from __future__ import annotations

import inspect
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import model  # noqa: F401  (registers the archs)
from model import builders
from model.builders import (
    MLP,
    AutoEncoder,
    ConvConfig,
    ConvNet,
    ConvNetConfig,
    Decoder,
    Encoder,
    LinearConfig,
    MLPConfig,
    MLPLayer,
    ResNet,
    ResNetConfig,
    ViT,
    ViTConfig,
)
from utils.errors import UserError
from utils.registry import ARCHS

torch.manual_seed(0)


# ------------------------------------------------------------------ configs from JSON

def test_configs_from_json_dicts():
    mlp = MLPConfig.from_value(json.loads(
        '{"hidden_dim": 32, "n_layers": 3, "output_activation": "Tanh",'
        ' "linear_cfg": {"activation": "SiLU", "norm": "layer", "dropout": 0.1}}'))
    assert isinstance(mlp.linear_cfg, LinearConfig) and mlp.linear_cfg.norm == "layer" and mlp.hidden_dim == 32
    assert MLPConfig(**json.loads('{"linear_cfg": {"bias": false}}')).linear_cfg.bias is False
    conv = ConvNetConfig.from_value(json.loads('{"channels": [8, 16], "conv_cfgs": {"stride": 2, "norm": "batch"}}'))
    assert [type(c) for c in conv.conv_cfgs] == [ConvConfig, ConvConfig] and conv.conv_cfgs[1].stride == 2
    conv = ConvNetConfig(**json.loads('{"channels": [8, 16], "conv_cfgs": [{"stride": 1}, {"stride": 2}]}'))
    assert [c.stride for c in conv.conv_cfgs] == [1, 2]
    assert ResNetConfig.from_value(json.loads('{"conv_channel": 8, "n_scaling": 1}')).n_scaling == 1
    assert ViTConfig.from_value(json.loads('{"patch_size": 2, "dim": 16}')).dim == 16


def test_config_mistakes_are_user_errors():
    with pytest.raises(UserError, match=r"MLP.cfg: unknown field 'hiden_dim'.*Did you mean 'hidden_dim'"):
        MLP(4, 2, {"hiden_dim": 8})
    with pytest.raises(UserError, match=r"linear_cfg: unknown field 'activaton'"):
        MLPConfig.from_value({"linear_cfg": {"activaton": "ReLU"}})
    with pytest.raises(UserError, match=r"one ConvConfig per layer \(2"):
        ConvNetConfig(channels=[8, 16], conv_cfgs=[{}])
    with pytest.raises(UserError, match=r"unknown backbone 'ResNt'.*Did you mean 'ResNet"):
        Encoder(4, [1, 8, 8], {"type": "ResNt"})
    with pytest.raises(UserError, match=r"unknown value 'btch'.*Did you mean 'batch'"):
        ConvNet(1, {"channels": [4], "conv_cfgs": {"norm": "btch"}})
    with pytest.raises(UserError, match=r"head: unknown value 'mpl'"):
        Encoder(4, [1, 8, 8], head="mpl")


def test_mlp_any_leading_dims_and_shape_check():
    m = MLP([1, 8, 8], 10, json.loads('{"hidden_dim": 16, "n_layers": 2, "linear_cfg": {"norm": "batch"}}'))
    assert m(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    assert m(torch.randn(2, 3, 1, 8, 8)).shape == (2, 3, 10)
    layer = MLPLayer(6, 3, {"n_layers": 0})
    assert len([mod for mod in layer.modules() if isinstance(mod, nn.Linear)]) == 1
    with pytest.raises(UserError, match=r"trailing dims should be \[1, 8, 8\]; set arch.args.input_dim"):
        m(torch.randn(5, 64))


# ------------------------------------------------------------------ encoders and decoders

BACKBONES = {
    "convnet": {"type": "ConvNetConfig", "channels": [8, 16], "conv_cfgs": {"stride": 2, "norm": "group"}},
    "resnet": {"type": "ResNetConfig", "conv_channel": 8, "n_res_blocks": 1, "n_scaling": 2, "norm": "batch"},
    "vit": {"type": "ViTConfig", "patch_size": 4, "dim": 16, "depth": 1, "heads": 2, "mlp_dim": 32},
}


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("head", ["mlp", "linear", "none"])
def test_encoder_heads_backbones_and_leading_dims(backbone, head):
    args = {"feature_dim": 12, "obs_shape": [1, 8, 8], "backbone_cfg": BACKBONES[backbone], "head": head,
            "head_cfg": {"hidden_dim": 16, "n_layers": 1} if head == "mlp" else None}
    if head == "none":  # feature_dim must be the flattened backbone output: read it from the error
        with pytest.raises(UserError, match=r"set feature_dim to (\d+)") as info:
            Encoder(**args)
        args["feature_dim"] = int(info.value.args[0].rsplit(" ", 1)[1])
    enc = Encoder(**json.loads(json.dumps(args))).eval()
    x = torch.randn(2, 3, 1, 8, 8)
    z = enc(x)
    assert z.shape == (2, 3, args["feature_dim"])
    torch.testing.assert_close(z.reshape(6, -1), enc(x.reshape(6, 1, 8, 8)))
    assert enc(x[0, 0]).shape == (args["feature_dim"],)  # no batch dim at all


@pytest.mark.parametrize("channels, strides, flat", [([32, 64], [2, 2], 256), ([8], [1], 512), ([8, 16], [2, 2], 64),
                                                     ([4, 4], [1, 2], 64)])
def test_encoder_feature_size_mismatch_names_the_right_size(channels, strides, flat):
    cfg = {"channels": channels, "conv_cfgs": [{"stride": s} for s in strides]}
    with pytest.raises(UserError, match=rf"flattens to {flat} features but the head was built for 999; "
                                        rf"set head_in_dim to {flat}"):
        Encoder(10, [1, 8, 8], cfg, head_in_dim=999)
    with pytest.raises(UserError, match=rf"flattens to {flat} features but feature_dim is 10; "
                                        rf".*set feature_dim to {flat}"):
        Encoder(10, [1, 8, 8], cfg, head="none")
    Encoder(10, [1, 8, 8], cfg, head_in_dim=flat)  # the right size is accepted
    assert Encoder(flat, [1, 8, 8], cfg, head="none")(torch.randn(2, 1, 8, 8)).shape == (2, flat)


def test_encoder_input_shape_errors():
    with pytest.raises(UserError, match=r"cannot process an input of shape \[1, 8, 8\]"):
        Encoder(4, [1, 8, 8], {"channels": [4] * 5, "conv_cfgs": {"stride": 2, "padding": 0}})
    with pytest.raises(UserError, match="obs_shape must be"):
        Encoder(4, [8, 8])
    with pytest.raises(UserError, match="Encoder.feature_dim must be a positive integer, got 0"):
        Encoder(0, [1, 8, 8])
    with pytest.raises(UserError, match="Decoder.feature_dim must be a positive integer"):
        Decoder(-1, [1, 8, 8])
    with pytest.raises(UserError, match="MLP: input_dim and output_dim must be a positive integer, got 0"):
        MLP([1, 0, 8], 4)
    with pytest.raises(UserError, match=r"trailing dims should be \[1, 8, 8\]"):
        Encoder(4, [1, 8, 8])(torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize("upsample", ["convtranspose", "pixelshuffle"])
@pytest.mark.parametrize("head", ["mlp", "linear"])
def test_decoder_upsampling_modes(upsample, head):
    cfg = json.loads('{"channels": [16, 8, 4], "conv_cfgs": [{"stride": 2, "norm": "batch"}, {"stride": 2},'
                     ' {"stride": 1, "activation": "GELU"}]}')
    dec = Decoder(6, [3, 12, 16], cfg, head=head, upsample=upsample, output_activation="Sigmoid")
    assert dec.first_shape == (16, 3, 4)
    kinds = {type(m) for m in dec.modules()}
    assert (nn.ConvTranspose2d in kinds) == (upsample == "convtranspose")
    assert (nn.PixelShuffle in kinds) == (upsample == "pixelshuffle")
    out = dec(torch.randn(2, 5, 6))
    assert out.shape == (2, 5, 3, 12, 16)
    assert ((out > 0) & (out < 1)).all()  # output_activation applied, the last conv bare
    assert not isinstance(dec.backbone[-1], (nn.ReLU, nn.GELU, nn.BatchNorm2d))


@pytest.mark.parametrize("kernel, padding", [(3, 1), (4, 1), (5, 2), (1, 0)])
def test_decoder_convtranspose_kernels_double_exactly(kernel, padding):
    conv = {"kernel_size": kernel, "stride": 2, "padding": padding}
    dec = Decoder(4, [1, 8, 8], {"channels": [4], "conv_cfgs": conv})
    assert dec(torch.randn(3, 4)).shape == (3, 1, 8, 8)


def test_decoder_errors():
    with pytest.raises(UserError, match="cannot upsample exactly 2x with ConvTranspose2d; use padding 1"):
        Decoder(4, [1, 8, 8], {"channels": [4], "conv_cfgs": {"stride": 2, "padding": 0}})
    with pytest.raises(UserError, match=r"first feature map \[4, 4, 4\] of 64 values, but feature_dim is 10; "
                                        r"set feature_dim to 64"):
        Decoder(10, [1, 8, 8], {"channels": [4], "conv_cfgs": {"stride": 2}}, head="none")
    with pytest.raises(UserError, match="upsamples by 4, which does not divide"):
        Decoder(4, [1, 6, 6], {"channels": [4, 4], "conv_cfgs": {"stride": 2}})
    with pytest.raises(UserError, match="ViTConfig cannot decode"):
        Decoder(4, [1, 8, 8], {"type": "vit"})
    Decoder(64, [1, 8, 8], {"channels": [4], "conv_cfgs": {"stride": 2}}, head="none")


def test_resnet_down_and_up():
    down = ResNet(3, {"conv_channel": 4, "n_scaling": 2, "scale_factor": 2, "n_res_blocks": 1})
    assert down(torch.randn(2, 3, 16, 16)).shape == (2, 4, 4, 4)
    assert any(isinstance(m, nn.PixelUnshuffle) for m in down.modules())
    assert sum(isinstance(m, builders._ResBlock) for m in down.modules()) == 3  # 1 per stage + 1 at the end
    up = ResNet(4, {"conv_channel": 4, "n_scaling": 1, "scale_factor": 4, "n_res_blocks": 1}, direction="up",
                out_channels=3)
    assert up(torch.randn(2, 4, 4, 4)).shape == (2, 3, 16, 16)
    assert any(isinstance(m, nn.PixelShuffle) for m in up.modules())
    dec = Decoder(10, [3, 16, 16], {"type": "ResNetConfig", "conv_channel": 4, "n_scaling": 2, "n_res_blocks": 1})
    assert dec.first_shape == (4, 4, 4) and dec(torch.randn(2, 10)).shape == (2, 3, 16, 16)


@pytest.mark.parametrize("pool, shape", [("cls", (2, 16)), ("mean", (2, 16)), ("none", (2, 16, 16))])
def test_vit_forward_shape_and_gradients(pool, shape):
    vit = ViT([3, 16, 16], {"patch_size": 4, "dim": 16, "depth": 2, "heads": 4, "mlp_dim": 32, "pool": pool,
                            "activation": "GELU"})
    assert sum(isinstance(m, nn.TransformerEncoderLayer) for m in vit.modules()) == 2
    x = torch.randn(2, 3, 16, 16)
    out = vit(x)
    assert out.shape == shape
    (out * torch.randn(shape)).sum().backward()  # not out.sum(): a LayerNorm'd vector sums to a constant
    assert vit.patch.weight.grad is not None and vit.pos.grad.abs().sum() > 0
    with pytest.raises(UserError, match="patch_size: 5 does not divide"):
        ViT([3, 16, 16], {"patch_size": 5})


def test_vit_classifier_learns_a_toy_task():
    """The ViT encoder is a working model: it fits bright-left vs bright-right images."""
    torch.manual_seed(0)
    x = torch.randn(32, 1, 8, 8)
    y = torch.randint(0, 2, (32,))
    x[y == 1, :, :, :4] += 2.0
    x[y == 0, :, :, 4:] += 2.0
    enc = Encoder(2, [1, 8, 8], {"type": "vit", "patch_size": 4, "dim": 16, "depth": 1, "heads": 2,
                                 "mlp_dim": 32}, head="linear")
    opt = torch.optim.Adam(enc.parameters(), lr=3e-3)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(enc(x), y).backward()
        opt.step()
    assert (enc(x).argmax(1) == y).float().mean() > 0.95


def test_autoencoder_mirrors_the_encoder():
    ae = AutoEncoder([1, 8, 8], 6, encoder={"backbone_cfg": {"channels": [8, 16], "conv_cfgs": {"stride": 2}}})
    assert ae.decoder.first_shape == (16, 2, 2)
    x = torch.randn(4, 1, 8, 8)
    assert ae(x).shape == x.shape and ae.encode(x).shape == (4, 6)
    with pytest.raises(UserError, match="set feature_dim once"):
        AutoEncoder([1, 8, 8], 6, encoder={"feature_dim": 3})
    with pytest.raises(UserError, match=r"Decoder has no argument 'upsampel'.*Did you mean 'upsample'"):
        AutoEncoder([1, 8, 8], 6, decoder={"upsampel": "pixelshuffle"})


# Example args for every arch builders.py registers (a new arch must add one here).
ARCH_EXAMPLES = {
    "MLPLayer": ({"input_dim": 64, "output_dim": 10}, (3, 64), (3, 10)),
    "MLP": ({"input_dim": [1, 8, 8], "output_dim": 10, "cfg": {"hidden_dim": 16}}, (3, 1, 8, 8), (3, 10)),
    "ConvNet": ({"in_channels": 1, "cfg": {"channels": [4, 8]}}, (3, 1, 8, 8), (3, 8, 2, 2)),
    "ResNet": ({"in_channels": 1, "cfg": {"conv_channel": 4, "n_scaling": 1}}, (3, 1, 8, 8), (3, 4, 4, 4)),
    "ViT": ({"obs_shape": [1, 8, 8], "cfg": {"dim": 16, "heads": 2, "depth": 1}}, (3, 1, 8, 8), (3, 16)),
    "Encoder": ({"feature_dim": 5, "obs_shape": [1, 8, 8]}, (3, 1, 8, 8), (3, 5)),
    "Decoder": ({"feature_dim": 5, "obs_shape": [1, 8, 8]}, (3, 5), (3, 1, 8, 8)),
    "AutoEncoder": ({"obs_shape": [1, 8, 8], "feature_dim": 5}, (3, 1, 8, 8), (3, 1, 8, 8)),
}
REGISTERED = [n for n in builders.__all__ if inspect.isclass(getattr(builders, n))
              and issubclass(getattr(builders, n), nn.Module)]


def test_every_registered_builder_has_an_example():
    assert sorted(REGISTERED) == sorted(ARCH_EXAMPLES)


@pytest.mark.parametrize("name", REGISTERED)
def test_every_arch_builds_through_the_registry(name):
    from config.arguments import check_args

    args, in_shape, out_shape = ARCH_EXAMPLES[name]
    cls = ARCHS.get(name, "arch.type")
    assert cls is getattr(builders, name)
    assert check_args(cls, args, "arch.args") == []  # what train.py's validation checks
    net = cls(**json.loads(json.dumps(args)))
    assert net(torch.randn(in_shape)).shape == out_shape
