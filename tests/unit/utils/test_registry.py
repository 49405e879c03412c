"""Tests for utils/registry.py: the Registry object, and every registered arch, optimizer and scheduler built the
way the config builds it."""
from __future__ import annotations

import importlib.util
import inspect
import sys
import types
import warnings

import pytest
import torch
from torch import nn

import parse_config  # noqa: F401  (importing it registers the project's classes)
from config.arguments import check_args
from utils.errors import UserError
from utils.registry import ARCHS, DATA_LOADERS, LR_SCHEDULERS, METRICS, OPTIMIZERS, TRAINERS, Registry


# ---- the Registry object ----

def test_register_plain_decorator_and_named():
    reg = Registry("thing")

    @reg.register
    def first():
        pass

    @reg.register(name="renamed")
    def second():
        pass

    reg.register(len)
    assert reg.get("first", "x.type") is first
    assert reg.get("renamed", "x.type") is second and "second" not in reg
    assert reg.get("len", "x.type") is len
    assert reg.names() == ["first", "renamed", "len"]


def _spare():
    pass


def test_duplicate_name_raises_naming_both_places():
    reg = Registry("thing")

    def thing():
        pass

    reg.register(thing)
    reg.register(thing)  # the same object again (a module imported twice) is fine
    with pytest.raises(ValueError, match=r"thing name 'thing' is registered twice: .*"
                                         r"test_duplicate_name_raises_naming_both_places.<locals>.thing .*"
                                         r"test_registry\.py\) and .*_spare \(.*test_registry\.py\)"):
        reg.register(_spare, name="thing")
    assert reg.get("thing", "x") is thing


def test_register_module_takes_only_public_objects_defined_there():
    module = types.ModuleType("fake_models")
    exec("from os.path import join\nimport math\nfrom collections import OrderedDict\nCONSTANT = 3\n"
         "def build(): pass\ndef _helper(): pass\nclass Net: pass\nclass _Hidden: pass\n", vars(module))
    reg = Registry("thing")
    reg.register_module(module)
    assert reg.names() == ["build", "Net"]
    classes = Registry("thing")
    classes.register_module(module, inspect.isclass)
    assert classes.names() == ["Net"]


def test_user_names_come_first_and_win_over_a_library_name():
    reg = Registry("thing", [lambda: {"Zeta": 1, "Adam": 2}])
    mine = object()
    reg.register(mine, name="Adam")
    assert reg.names() == ["Adam", "Zeta"]
    assert reg.find("Adam") is mine and reg.find("Zeta") == 1
    assert not reg.from_library(mine) and reg.from_library(1)


def test_a_module_registered_later_is_imported_on_the_first_lookup_it_must_answer(tmp_path, monkeypatch):
    (tmp_path / "later_zoo.py").write_text("class Net: pass\nclass Other: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "later_zoo", raising=False)
    reg = Registry("thing", [lambda: {"Other": 1, "Zeta": 2}])
    mine = object()
    reg.register(mine, name="Net")
    reg.register_module_later("later_zoo", inspect.isclass)
    assert reg.find("Net") is mine and "later_zoo" not in sys.modules  # answered by the names before it
    other = reg.find("Other")
    assert "later_zoo" in sys.modules and other is sys.modules["later_zoo"].Other  # before the providers
    assert reg.find("Net") is mine  # the name registered before it wins over the module's own
    assert reg.names() == ["Net", "Other", "Zeta"] and not reg.from_library(other)


def test_two_modules_registered_later_that_share_a_name_raise(tmp_path, monkeypatch):
    for name in ("later_a", "later_b"):
        (tmp_path / f"{name}.py").write_text("def build(): pass\n")
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("thing")
    reg.register_module_later("later_a")
    reg.register_module_later("later_b")
    with pytest.raises(ValueError, match=r"'build' is registered twice: later_a\.build .* and later_b\.build"):
        reg.find("build")


def test_the_names_list_the_modules_registered_later(tmp_path, monkeypatch):
    (tmp_path / "later_list.py").write_text("def build(): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "later_list", raising=False)
    reg = Registry("thing")
    reg.register_module_later("later_list")
    assert reg.names() == ["build"] and "bulid" not in reg and reg.find("BUILD").__module__ == "later_list"


def test_find_exact_then_unique_case_insensitive():
    assert OPTIMIZERS.find("Adam") is torch.optim.Adam
    assert OPTIMIZERS.find("adam") is torch.optim.Adam  # only Adam folds to "adam"
    assert OPTIMIZERS.find("ADABELIEF").__name__ == "AdaBelief"
    assert OPTIMIZERS.find("Adamm") is None
    reg = Registry("thing", [lambda: {"Foo": 1, "FOO": 2}])
    assert reg.find("FOO") == 2 and reg.find("foo") is None  # ambiguous: no guess
    assert "Foo" in reg and "fOo" not in reg


def test_unknown_name_names_path_nearest_names_and_how_to_list():
    with pytest.raises(UserError, match=r"^optimizer\.type: unknown optimizer 'Adamm'\. Did you mean 'Adam'.*\? "
                                        r"List them all with: python train.py --list optimizer$"):
        OPTIMIZERS.get("Adamm", "optimizer.type")
    with pytest.raises(UserError, match=r"Did you mean 'StepLR'"):  # case-insensitive nearest names
        LR_SCHEDULERS.get("STEPRL", "lr_scheduler.type")
    with pytest.raises(UserError, match=r"unknown metric 'zzz'\. List them all with: python train.py --list metric"):
        METRICS.get("zzz", "metrics.0")


# ---- every registered name builds (STYLE 15) ----

ARCH_INPUTS = {"MnistModel": (2, 1, 28, 28)}  # LeNet's fully connected layer is sized for 28x28 MNIST
ARCH_OUTPUTS = {"CNN": 64}  # without num_classes the CNN gives its features (the default blocks end with 64 channels)


# The builders' archs need shapes (obs_shape, feature_dim, ...): tests/unit/model/test_builders.py builds each of them;
# torchvision's need larger images than digits: tests/unit/model/test_torchvision_models.py builds a sample of them.
CLASSIFIERS = [n for n in ARCHS.names()
               if ARCHS.find(n).__module__ not in ("model.builders", "model.torchvision_models")]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_arch_builds_with_defaults_and_runs_forward(name, digits_batch):
    model = ARCHS.get(name, "arch.type")()
    x = torch.randn(ARCH_INPUTS[name]) if name in ARCH_INPUTS else digits_batch[0]
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (x.shape[0], ARCH_OUTPUTS.get(name, 10)) and torch.isfinite(out).all()
    assert "Trainable parameters:" in str(model)


def test_data_loaders_are_registered():
    assert {"DigitsDataLoader", "MnistDataLoader"} <= set(DATA_LOADERS.names())


def test_trainers_are_the_public_base_trainer_subclasses_of_the_trainer_package():
    from base import BaseTrainer
    from trainer import Trainer

    assert TRAINERS.names() == ["Trainer"] and TRAINERS.get("Trainer", "trainer.type") is Trainer
    assert "BaseTrainer" not in TRAINERS and BaseTrainer not in TRAINERS._entries.values()  # abstract: not offered
    with pytest.raises(UserError, match=r"trainer\.type: unknown trainer 'Trainr'.*--list trainer") as info:
        TRAINERS.get("Trainr", "trainer.type")
    assert "Did you mean 'Trainer'?" in str(info.value)


# ---- optimizers: every one steps with default args, except these ----

def _einops_missing() -> bool:
    return importlib.util.find_spec("einops") is None


# name -> (exception, message pattern) with default args, on nn.Linear(4, 2)'s parameters and a plain step().
# Each genuinely needs something a one-line config cannot give; test_optimizers_that_need_setup proves the setup.
NEEDS_SETUP = {
    # a closure passed to step()
    "LBFGS": (TypeError, "closure"),
    "AliG": (Exception, "requires closure"),
    # required constructor arguments (check_args reports them; see test_required_optimizer_args_are_reported)
    "BSAM": (TypeError, "num_data"),  # and a closure
    "Ranger21": (TypeError, "num_iterations"),
    # second-order: the backward pass must keep the graph (loss.backward(create_graph=True))
    "AdaHessian": (RuntimeError, "does not require grad"),
    "SophiaH": (RuntimeError, "does not require grad"),
    # take the model itself instead of its parameters (LOMO/AdaLOMO also replace backward by fused_backward)
    "AdaLOMO": (AttributeError, "named_parameters"),
    "LOMO": (AttributeError, "parameters"),
    "AdamMini": (AttributeError, "named_parameters"),
    # Muon variants: parameter groups flagged with use_muon (matrices) or not (biases, heads)
    "AdaGO": (RuntimeError, "__contains__"),
    "AdaMuon": (RuntimeError, "__contains__"),
    "MuonClip": (RuntimeError, "__contains__"),
    "NorMuon": (RuntimeError, "__contains__"),
    "DistributedMuon": (RuntimeError, "__contains__"),  # and an initialised torch.distributed process group
    # only 2-D parameters (weight matrices, no biases)
    "Muon": (ValueError, "2D"),
    "SpectralSphere": (ValueError, "2D"),
    # sparse gradients only (nn.Embedding(sparse=True))
    "SparseAdam": (RuntimeError, "dense gradients"),
}
if _einops_missing():
    NEEDS_SETUP["DeMo"] = (ImportError, "einops")  # an optional dependency of pytorch_optimizer


def _loss(model: nn.Module) -> torch.Tensor:
    return model(torch.linspace(-1, 1, 12).reshape(3, 4)).pow(2).sum()


def _default_step(cls) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = cls(model.parameters())
    _loss(model).backward()
    optimizer.step()
    return model


OPTIMIZER_NAMES = OPTIMIZERS.names()


def test_optimizer_registry_holds_torch_and_pytorch_optimizer():
    assert len(OPTIMIZER_NAMES) > 100
    assert {"SGD", "Adam", "AdamW", "LBFGS", "AdaBelief", "Lion", "Ranger21"} <= set(OPTIMIZER_NAMES)
    assert set(NEEDS_SETUP) <= set(OPTIMIZER_NAMES), "an expected failure is no longer registered: update NEEDS_SETUP"


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_every_optimizer_steps_with_default_args(name):
    cls = OPTIMIZERS.get(name, "optimizer.type")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name in NEEDS_SETUP:
            error, pattern = NEEDS_SETUP[name]
            with pytest.raises(error, match=pattern):
                _default_step(cls)
            return
        model = _default_step(cls)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _closure_step(cls, **kwargs):
    model = nn.Linear(4, 2)
    optimizer = cls(model.parameters(), **kwargs)

    def closure():
        optimizer.zero_grad()
        loss = _loss(model)
        loss.backward()
        return loss

    closure()
    optimizer.step(closure)


def _args_step(cls, **kwargs):
    model = nn.Linear(4, 2)
    optimizer = cls(model.parameters(), **kwargs)
    _loss(model).backward()
    optimizer.step()


def _second_order_step(cls):
    model = nn.Linear(4, 2)
    optimizer = cls(model.parameters())
    _loss(model).backward(create_graph=True)
    optimizer.step()


def _alig_step(cls):
    model = nn.Linear(4, 2)
    optimizer = cls(model.parameters(), max_lr=0.1)
    loss = _loss(model)
    loss.backward()
    optimizer.step(lambda: float(loss))


def _model_step(cls):
    model = nn.Linear(4, 2)
    optimizer = cls(model)
    _loss(model).backward()
    optimizer.step()


def _fused_backward_step(cls):
    model = nn.Linear(4, 2)
    cls(model).fused_backward(_loss(model), lr=0.01)


def _muon_groups_step(cls):
    model = nn.Linear(4, 2)
    optimizer = cls([{"params": [model.weight], "use_muon": True}, {"params": [model.bias], "use_muon": False}])
    _loss(model).backward()
    optimizer.step()


def _matrix_step(cls, **kwargs):
    model = nn.Linear(4, 2, bias=False)
    optimizer = cls(model.parameters(), **kwargs)
    _loss(model).backward()
    optimizer.step()


def _sparse_step(cls):
    embedding = nn.Embedding(5, 2, sparse=True)
    optimizer = cls(embedding.parameters())
    embedding(torch.tensor([1, 3])).sum().backward()
    optimizer.step()


SETUPS = {
    "LBFGS": _closure_step, "AliG": _alig_step, "BSAM": lambda cls: _closure_step(cls, num_data=3),
    "Ranger21": lambda cls: _args_step(cls, num_iterations=10), "AdaHessian": _second_order_step,
    "SophiaH": _second_order_step, "AdaLOMO": _fused_backward_step, "LOMO": _fused_backward_step,
    "AdamMini": _model_step, "AdaGO": _muon_groups_step, "AdaMuon": _muon_groups_step,
    "MuonClip": _muon_groups_step, "NorMuon": _muon_groups_step, "Muon": _matrix_step,
    "SpectralSphere": lambda cls: _matrix_step(cls, solver_max_iterations=2), "SparseAdam": _sparse_step,
}


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_optimizers_that_need_setup_work_with_it(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        SETUPS[name](OPTIMIZERS.get(name, "optimizer.type"))


def test_required_optimizer_args_are_reported():
    assert check_args(OPTIMIZERS.find("Ranger21"), {}, "optimizer.args", 1) == [
        "optimizer.args: Ranger21 needs the argument 'num_iterations'; add it to optimizer.args"]
    assert check_args(OPTIMIZERS.find("BSAM"), {"num_data": 100}, "optimizer.args", 1) == []


# ---- learning-rate schedulers ----

# name -> values for exactly the arguments its signature requires (check_args must name these, no more)
SCHEDULER_REQUIRED = {
    "StepLR": {"step_size": 2},
    "MultiStepLR": {"milestones": [1, 2]},
    "ExponentialLR": {"gamma": 0.9},
    "CosineAnnealingLR": {"T_max": 10},
    "CosineAnnealingWarmRestarts": {"T_0": 5},
    "CyclicLR": {"base_lr": 0.01, "max_lr": 0.1},
    "OneCycleLR": {"max_lr": 0.1},  # and total_steps (or epochs and steps_per_epoch): see test_config
    "CosineAnnealingWarmupRestarts": {"first_cycle_steps": 10},
    "REXScheduler": {"total_steps": 10},
    "get_chebyshev_schedule": {"num_epochs": 10},
    "get_wsd_schedule": {"num_warmup_steps": 2, "num_stable_steps": 2, "num_decay_steps": 2},
}
SCHEDULER_EXTRA = {"OneCycleLR": {"total_steps": 10}}  # required at run time, though optional in the signature


def test_schedulers_that_need_python_objects_are_not_offered():
    names = set(LR_SCHEDULERS.names())
    assert {"StepLR", "ReduceLROnPlateau", "OneCycleLR", "get_wsd_schedule"} <= names
    assert not names & {"LambdaLR", "MultiplicativeLR", "SequentialLR", "ChainedScheduler"}
    assert set(SCHEDULER_REQUIRED) <= names


@pytest.mark.parametrize("name", LR_SCHEDULERS.names())
def test_every_scheduler_builds_or_names_its_missing_args(name):
    obj = LR_SCHEDULERS.get(name, "lr_scheduler.type")
    required = SCHEDULER_REQUIRED.get(name, {})
    problems = check_args(obj, {}, "lr_scheduler.args", 1)
    assert problems == [f"lr_scheduler.args: {name} needs the argument {arg!r}; add it to lr_scheduler.args"
                        for arg in required]
    assert check_args(obj, required, "lr_scheduler.args", 1) == []
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = obj(optimizer, **required, **SCHEDULER_EXTRA.get(name, {}))
    for _ in range(3):
        optimizer.step()
        scheduler.step(1.0) if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) else scheduler.step()
    assert all(group["lr"] >= 0 for group in optimizer.param_groups)
    assert isinstance(scheduler.state_dict(), dict)  # checkpointable
