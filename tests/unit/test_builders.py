"""Model zoo: activations by name, networks built from JSON config, distribution heads."""
from __future__ import annotations

import inspect
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import model  # noqa: F401  (registers the archs)
from model import builders
from model.activations import (
    Activation,
    CRReLU,
    L2Norm,
    REReLU,
    SiGLU,
    TanhExp,
    activation_names,
)
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
from model.distributions import (
    BernoulliResult,
    CategoricalResult,
    Distribution,
    NormalResult,
    cat_dist,
    stack_dist,
)
from utils.errors import UserError
from utils.registry import ARCHS

torch.manual_seed(0)

# ------------------------------------------------------------------ activations

TORCH_ACTIVATIONS = [
    name for name, obj in vars(torch.nn.modules.activation).items()
    if inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__ == "torch.nn.modules.activation"
    and name != "MultiheadAttention"
]
CUSTOM = ["REReLU", "SiGLU", "CRReLU", "TanhExp", "L2Norm"]
REQUIRED_ARGS = {"Threshold": {"threshold": 0.1, "value": -1.0}}


def test_activation_names_cover_torch_and_custom():
    names = set(activation_names())
    assert set(TORCH_ACTIVATIONS) | set(CUSTOM) <= names
    assert len(TORCH_ACTIVATIONS) > 20  # the scan found torch's activations


@pytest.mark.parametrize("name", sorted(set(TORCH_ACTIVATIONS) | set(CUSTOM)))
@pytest.mark.filterwarnings("ignore:Implicit dimension choice")
def test_every_activation_builds_and_runs(name):
    for spelling in (name, name.lower(), name.upper()):
        act = Activation(spelling, **REQUIRED_ARGS.get(name, {}))
        x = torch.randn(2, 4, 6, requires_grad=True)
        y = act(x)
        assert torch.isfinite(y).all()
        y.float().sum().backward()
    expected = getattr(nn, name, None) or getattr(__import__("model.activations", fromlist=[name]), name)
    assert type(act) is expected


@pytest.mark.parametrize("alias, cls", [("swish", nn.SiLU), ("leaky_relu", nn.LeakyReLU), ("Leaky-ReLU", nn.LeakyReLU),
                                        ("identity", nn.Identity), ("none", nn.Identity), ("gelu", nn.GELU)])
def test_activation_aliases(alias, cls):
    assert type(Activation(alias)) is cls


def test_activation_kwargs_are_passed():
    assert Activation("leakyrelu", negative_slope=0.3).negative_slope == 0.3
    assert Activation("siglu", dim=1).dim == 1


def test_unknown_activation_names_the_nearest():
    with pytest.raises(UserError, match=r"unknown name 'gleu'.*Did you mean .*'GELU'"):
        Activation("gleu")
    with pytest.raises(UserError, match="bad arguments"):
        Activation("relu", slope=2)


def test_rerelu_forward_is_relu_and_gradient_is_gelus():
    x = torch.linspace(-4, 4, 101, dtype=torch.float64, requires_grad=True)
    y = REReLU()(x)
    torch.testing.assert_close(y, torch.relu(x))
    (grad,) = torch.autograd.grad(y.sum(), x)
    x2 = x.detach().clone().requires_grad_()
    (gelu_grad,) = torch.autograd.grad(F.gelu(x2).sum(), x2)
    torch.testing.assert_close(grad, gelu_grad)
    assert not torch.allclose(grad, (x > 0).double())  # not ReLU's step gradient


def test_siglu_halves_the_dim():
    x = torch.randn(3, 8, dtype=torch.float64)
    a, b = x[:, :4], x[:, 4:]
    torch.testing.assert_close(SiGLU()(x), a * b / (1 + torch.exp(-b)))
    x = torch.randn(2, 6, 5)
    out = SiGLU(dim=1)(x)
    assert out.shape == (2, 3, 5)
    torch.testing.assert_close(out, x[:, :3] * torch.sigmoid(x[:, 3:]) * x[:, 3:])
    with pytest.raises(ValueError, match="odd size 5"):
        SiGLU()(x)


def test_crrelu_formula_and_learnable_eps():
    act = CRReLU()
    assert isinstance(act.eps, nn.Parameter) and act.eps.requires_grad
    assert act.eps.item() == pytest.approx(0.01)
    assert [p for p in act.parameters()] == [act.eps]
    with torch.no_grad():
        act.eps.fill_(0.5)
    x = torch.randn(50, dtype=torch.float64)
    expected = x.clamp(min=0) + 0.5 * x * torch.exp(-x ** 2 / 2)
    y = act(x.float())
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-6)
    y.sum().backward()
    torch.testing.assert_close(act.eps.grad.double(), (x * torch.exp(-x ** 2 / 2)).sum(), rtol=1e-4, atol=1e-5)


def test_tanhexp_formula_and_large_inputs():
    x = torch.linspace(-10, 5, 61, dtype=torch.float64)
    expected = torch.tensor([v * math.tanh(math.exp(v)) for v in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(TanhExp()(x), expected)
    big = TanhExp()(torch.tensor([100.0, 1000.0]))
    assert big.tolist() == [100.0, 1000.0]


def test_l2norm():
    x = torch.randn(4, 7, 3)
    torch.testing.assert_close(L2Norm()(x).norm(dim=-1), torch.ones(4, 7))
    torch.testing.assert_close(L2Norm(dim=1)(x).norm(dim=1), torch.ones(4, 3))


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
    from utils.config_validation import check_args

    args, in_shape, out_shape = ARCH_EXAMPLES[name]
    cls = ARCHS.get(name, "arch.type")
    assert cls is getattr(builders, name)
    assert check_args(cls, args, "arch.args") == []  # what train.py's validation checks
    net = cls(**json.loads(json.dumps(args)))
    assert net(torch.randn(in_shape)).shape == out_shape


# ------------------------------------------------------------------ distributions

def test_normal_head():
    head = Distribution(4, "normal")
    x = torch.randn(2, 3, 8, requires_grad=True)
    res = head(x)
    assert isinstance(res, NormalResult)
    assert res.mean.shape == res.std.shape == res.sample.shape == (2, 3, 4)
    assert (res.std > 0).all()
    torch.testing.assert_close(res.mean, x[..., :4])
    dist = res.get_distribution()
    assert isinstance(dist, torch.distributions.Independent) and isinstance(dist.base_dist, torch.distributions.Normal)
    expected = torch.distributions.Normal(res.mean, res.std).log_prob(res.sample).sum(-1)
    torch.testing.assert_close(dist.log_prob(res.sample), expected)
    res.sample.sum().backward()  # reparametrised
    assert x.grad[..., 4:].abs().sum() > 0
    with pytest.raises(UserError, match="reads 8 features, got 6"):
        head(torch.randn(2, 6))


def test_categorical_head_straight_through():
    head = Distribution(12, "categorical", n_groups=3)
    x = torch.randn(5, 12, requires_grad=True)
    res = head(x)
    assert isinstance(res, CategoricalResult)
    assert res.logits.shape == res.probs.shape == (5, 3, 4) and res.sample.shape == (5, 12)
    onehot = res.sample.reshape(5, 3, 4)
    assert ((onehot == 0) | (onehot == 1)).all() and (onehot.sum(-1) == 1).all()
    torch.testing.assert_close(res.probs.sum(-1), torch.ones(5, 3))
    dist = res.get_distribution()
    assert isinstance(dist.base_dist, torch.distributions.OneHotCategorical)
    logp = dist.log_prob(onehot)
    assert logp.shape == (5,)
    torch.testing.assert_close(logp, (onehot * res.probs.log()).sum((-1, -2)))
    # straight-through: the gradient of the one-hot sample is the gradient of probs
    w = torch.randn(12)
    (res.sample * w).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    (x2.reshape(5, 3, 4).softmax(-1).reshape(5, 12) * w).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    assert x.grad.abs().sum() > 0


def test_bernoulli_head():
    head = Distribution(8, "bernoulli", n_groups=2)
    x = torch.randn(4, 8, requires_grad=True)
    res = head(x)
    assert isinstance(res, BernoulliResult)
    assert res.logits.shape == (4, 2, 4) and res.sample.shape == (4, 8)
    assert ((res.sample == 0) | (res.sample == 1)).all()
    dist = res.get_distribution()
    assert isinstance(dist.base_dist, torch.distributions.Bernoulli)
    assert dist.log_prob(res.sample.reshape(4, 2, 4)).shape == (4,)
    res.sample.sum().backward()
    torch.testing.assert_close(x.grad, (torch.sigmoid(x) * (1 - torch.sigmoid(x))).detach())


def test_spherical_samples():
    cat = Distribution(12, "categorical", n_groups=3, spherical=True)(torch.randn(5, 12))
    assert set(cat.sample.unique().tolist()) == {-1.0, 1.0}
    ber = Distribution(8, "bernoulli", n_groups=2, spherical=True)(torch.randn(5, 8))
    torch.testing.assert_close(ber.sample.reshape(5, 2, 4).norm(dim=-1), torch.ones(5, 2))
    with pytest.raises(UserError, match="spherical applies to"):
        Distribution(4, "normal", spherical=True)


@pytest.mark.parametrize("kind", ["normal", "categorical", "bernoulli"])
def test_deterministic_mode(kind):
    x = torch.randn(6, 16)
    in_dim = 8 if kind == "normal" else 16
    head = Distribution(in_dim, kind, n_groups=1 if kind == "normal" else 4, deterministic=True)
    torch.manual_seed(1)
    a = head(x).sample
    torch.manual_seed(2)
    b = head(x).sample
    assert torch.equal(a, b)
    res = head(x)
    if kind == "normal":
        assert torch.equal(res.sample, res.mean)
    elif kind == "categorical":
        assert torch.equal(res.sample.reshape(res.probs.shape).argmax(-1), res.probs.argmax(-1))
    else:
        assert torch.equal(res.sample.reshape(res.probs.shape), res.probs.round())
    stochastic = Distribution(in_dim, kind, n_groups=1 if kind == "normal" else 4)
    assert not torch.equal(stochastic(x).sample, stochastic(x).sample)
    assert torch.equal(stochastic(x, deterministic=True).sample, a)


@pytest.mark.parametrize("kind", ["normal", "categorical", "bernoulli"])
def test_stack_and_cat(kind):
    head = Distribution(6 if kind == "normal" else 12, kind, n_groups=1 if kind == "normal" else 3)
    feats = 12
    results = [head(torch.randn(4, feats)) for _ in range(3)]
    stacked = stack_dist(results)
    assert type(stacked) is type(results[0])
    for field, value in vars(stacked).items():
        assert value.shape == (3, *getattr(results[0], field).shape)
        torch.testing.assert_close(value[1], getattr(results[1], field))
    joined = cat_dist(results)
    assert joined.sample.shape == (4, 3 * results[0].sample.shape[-1])
    if kind != "normal":
        assert joined.logits.shape == (4, 9, 4)  # groups joined, classes kept
        assert joined.get_distribution().log_prob(joined.sample.reshape(4, 9, 4)).shape == (4,)
    else:
        assert joined.mean.shape == (4, 18)
    with pytest.raises(ValueError, match="different kinds"):
        cat_dist([results[0], Distribution(4, "normal")(torch.randn(4, 8))] if kind != "normal"
                 else [results[0], Distribution(12, "bernoulli")(torch.randn(4, 12))])


def test_distribution_is_not_an_arch():
    assert "Distribution" not in ARCHS.names()
    with pytest.raises(UserError, match="unknown 'gauss'"):
        Distribution(4, "gauss")
    with pytest.raises(UserError, match="does not split into n_groups 5"):
        Distribution(12, "categorical", n_groups=5)
