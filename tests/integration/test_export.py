"""export.py end to end: the shipped models trained tiny, exported to ONNX, to torch.export programs and to
safetensors weights through export.main, checked by export.py's own verification and again here with onnxruntime,
torch.export.load and safetensors, each file's metadata (preprocessing, class names, arch) read back as a serving
user reads it; the EMA average as the safetensors weights; a model the exporter cannot take, missing ONNX packages, a
file that does not verify, large weights as external data, --input (the example batch from files, read as predict.py
reads them, on a machine without the run's data), and the examples of docs/export.md run as they are written, the
image script against predict.py."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

import export
import predict
import train
from run import build_model, trained_model
from conftest import ROOT, tiny_config
from data_loader.data_loaders import ImageFolderDataLoader
from fake_data import write_cifar, write_image, write_image_folder, write_mnist
from utils.checkpoint import find_checkpoint
from utils.errors import UserError, run_cli
from utils.registry import ARCHS
from utils.weights import load_weights, read_weights

pytestmark = pytest.mark.usefixtures("restore_logging")

QUICK = ["trainer.epochs=1", "trainer.verbosity=0", "trainer.tensorboard=false", "--run-id", "x"]


def _train(config: Path | dict, save: Path, *overrides: str) -> Path:
    """Train one tiny epoch; returns the run directory."""
    if isinstance(config, dict):
        path = save.parent / "config.json"
        path.write_text(json.dumps(config))
        config = path
    name = json.loads(Path(config).read_text())["name"]
    train.main(["-c", str(config), f"trainer.save_dir={save}", *QUICK, *overrides])
    return save / "models" / name / "x"


def digits(tmp: Path) -> Path:
    return _train(tiny_config(tmp / "saved"), tmp / "saved")


def mnist(tmp: Path) -> Path:
    write_mnist(tmp / "data", n_train=20, n_test=10)
    return _train(ROOT / "configs/mnist.json", tmp / "saved", f"data_loader.args.data_dir={tmp / 'data'}",
                  "data_loader.args.num_workers=0", "data_loader.args.batch_size=8")


def image_folder(tmp: Path) -> Path:
    """configs/image_folder.json's CNN, without a test split: export.py takes the training data's first batch."""
    write_image_folder(tmp / "train", {"a": 4, "b": 4, "c": 4})
    return _train(ROOT / "configs/image_folder.json", tmp / "saved", f"data_loader.args.data_dir={tmp / 'train'}",
                  "data_loader.args.test_dir=null", "data_loader.args.num_workers=0", "data_loader.args.batch_size=4")


def resnet18(tmp: Path) -> Path:
    write_cifar(tmp / "data", n_train=16, n_test=4)
    return _train(ROOT / "configs/resnet18_cifar10.json", tmp / "saved", "arch.weights=null",
                  f"data_loader.args.data_dir={tmp / 'data'}", "data_loader.args.num_workers=0",
                  "data_loader.args.batch_size=8")


def grey_folder(tmp: Path) -> Path:
    """configs/image_folder.json's loader in grey (mode L) with a [height, width] Resize and no crop, a small CNN."""
    write_image_folder(tmp / "train", {"a": 5, "b": 5}, size=(20, 16))
    resize = json.dumps([{"type": "Resize", "args": {"size": [20, 18]}}])
    return _train(ROOT / "configs/image_folder.json", tmp / "saved", f"data_loader.args.data_dir={tmp / 'train'}",
                  "data_loader.args.test_dir=null", "data_loader.args.num_workers=0", "data_loader.args.batch_size=4",
                  "+data_loader.args.mode=L", f"data_loader.args.transforms={resize}",
                  f"data_loader.args.eval_transforms={resize}", "arch.args.input=1", "arch.args.num_classes=2",
                  "arch.args.blocks=(cnf8 m) d", "metrics=[\"accuracy\"]", "lr_scheduler=null")


RUNS = {"digits": digits, "mnist": mnist, "image_folder": image_folder, "resnet18": resnet18,
        "grey_folder": grey_folder}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs(kind) -> the run directory of that shipped model trained one tiny epoch (once per module)."""
    made: dict[str, Path] = {}

    def run(kind: str) -> Path:
        if kind not in made:
            made[kind] = RUNS[kind](tmp_path_factory.mktemp(kind))
        return made[kind]
    return run


def file_metadata(path: Path, fmt: str) -> dict[str, str]:
    """The metadata an exported file carries, read as a serving user reads it (docs/export.md), apart from export.py."""
    if fmt == "onnx":
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta() \
            .custom_metadata_map
    if fmt == "safetensors":
        with safe_open(str(path), "np") as f:
            return f.metadata()
    extra = {"preprocessing": ""}
    torch.export.load(path, extra_files=extra)  # fills in every extra file the archive holds
    return extra


IMAGE = {"input": "image", "scale": 1 / 255, "dtype": "float32", "layout": "NCHW"}
PREPROCESSING = {  # what each run's loader says of its inputs
    "digits": {"input": "array", "dtype": "float32"},
    "mnist": {**IMAGE, "mode": "L", "mean": [0.1307], "std": [0.3081]},
    "image_folder": {**IMAGE, "mode": "RGB", "resize": 72, "interpolation": "bilinear", "center_crop": [64, 64],
                     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "resnet18": {**IMAGE, "mode": "RGB", "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]},
}
CLASSES = {"digits": None, "mnist": 10, "image_folder": ["a", "b", "c"], "resnet18": 10}


def batch_dimension(path: Path, fmt: str, shape: tuple[int, ...]) -> str | int:
    """What the exported file says of its input's first dimension (checked apart from export.py): its fixed size,
    or "dynamic" when the file runs a batch of another size."""
    if fmt == "onnx":
        first = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].shape[0]
        return first if isinstance(first, int) else "dynamic"
    module = torch.export.load(path).module()
    try:
        module(torch.zeros(shape[0] + 2, *shape[1:]))
    except Exception:  # torch.export's guards refuse a batch of another size
        return shape[0]
    return "dynamic"


SLOW = pytest.mark.slow  # every ONNX export takes seconds (torch.onnx builds its operator table each time), the first
                        # one in a session ten more; the CNN and resnet18 train for seconds
CASES = [  # (run, format, --dynamic-batch)
    pytest.param("digits", "onnx", True, marks=SLOW), pytest.param("digits", "pt2", True),
    pytest.param("mnist", "onnx", True, marks=SLOW), pytest.param("mnist", "pt2", False),
    pytest.param("image_folder", "onnx", False, marks=SLOW), pytest.param("image_folder", "pt2", True, marks=SLOW),
    pytest.param("resnet18", "onnx", True, marks=SLOW), pytest.param("resnet18", "pt2", False, marks=SLOW),
    pytest.param("digits", "safetensors", False), pytest.param("image_folder", "safetensors", False, marks=SLOW),
]


@pytest.mark.parametrize("kind, fmt, dynamic", CASES)
def test_a_shipped_model_exports_and_verifies(runs, kind, fmt, dynamic, capsys):
    run = runs(kind)
    capsys.readouterr()
    results = export.main(["-r", str(run), "--format", fmt, "-d", "cpu", *(["--dynamic-batch"] if dynamic else [])])
    out = capsys.readouterr().out

    path = run / f"model.{fmt}"
    assert results["file"] == str(path) and path.is_file() and not path.with_name(path.name + ".data").exists()
    assert list(results["differences"]) == ([2, 3] if dynamic else [2])  # the other batch size proves it dynamic
    assert all(d < 1e-4 for d in results["differences"].values()), results
    assert f"to {path}" in out and "Verified with" in out and "tolerance 0.0001" in out
    assert ("No test split" in out) == (kind == "image_folder")  # its run has none: the training data's batch

    _, checkpoint = find_checkpoint(run)
    config, _ = trained_model(checkpoint, torch.device("cpu"))
    x, _ = export.example_inputs(config, 2)
    metadata = file_metadata(path, fmt)
    assert metadata == results["metadata"]
    assert json.loads(metadata["preprocessing"]) == pytest.approx(PREPROCESSING[kind])
    classes = json.loads(metadata.get("classes", "null"))
    assert classes == CLASSES[kind] or len(classes) == CLASSES[kind]
    assert json.loads(metadata["arch"]) == {"type": config["arch"]["type"], "args": config["arch"]["args"]}
    assert json.loads(metadata["input_shape"]) == list(x.shape[1:]) and metadata["weights"] == "model"
    assert metadata["format_version"] == "1" and metadata["epoch"] == "1"
    assert "Its metadata: preprocessing (" in out and "weights: the model's (the run kept no EMA)" in out
    if fmt != "safetensors":
        assert batch_dimension(path, fmt, tuple(x.shape)) == ("dynamic" if dynamic else 2)


def test_the_example_batch_of_an_input_is_its_first_inputs_read_as_predict_reads_them(runs, tmp_path, capsys):
    _, checkpoint = find_checkpoint(runs("digits"))
    config, _ = trained_model(checkpoint, torch.device("cpu"))
    x = np.arange(3 * 64, dtype=np.uint8).reshape(3, 1, 8, 8)
    np.save(tmp_path / "x.npy", x)
    assert torch.equal(export.example_inputs(config, 2, str(tmp_path / "x.npy"))[0], torch.from_numpy(x[:2]).float())
    assert torch.equal(export.example_inputs(config, 4, str(tmp_path / "x.npy"))[0],
                       torch.from_numpy(x[[0, 1, 2, 0]]).float())  # repeated when there are fewer
    (tmp_path / "pictures").mkdir()
    argv = ["-r", str(runs("digits")), "--format", "pt2", "--out", str(tmp_path / "m.pt2")]
    assert run_cli(export.main, [*argv, "--input", str(tmp_path / "pictures")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: --input {tmp_path / 'pictures'}: data_loader.type DigitsDataLoader takes arrays, not image files: "
        "give a .npy/.npz/.blosc2 file of samples shaped and scaled as the loader serves them, or --input test"]
    assert not (tmp_path / "m.pt2").exists()


@SLOW
def test_input_takes_the_example_batch_from_files_on_a_machine_without_the_runs_data(runs, tmp_path, capsys):
    _, checkpoint = find_checkpoint(runs("image_folder"))
    args = checkpoint["config"]["data_loader"]["args"]
    args["data_dir"] = args["test_dir"] = str(tmp_path / "not here")  # a serving machine: the checkpoint alone
    torch.save(checkpoint, tmp_path / "checkpoint.pth")
    for i in range(3):
        write_image(tmp_path / "new" / f"{i}.png", size=(10, 14), seed=50 + i)
    (tmp_path / "new" / "0.png").write_bytes(b"not a PNG")  # skipped, as predict.py skips it
    argv = ["-r", str(tmp_path / "checkpoint.pth"), "--format", "pt2", "--out", str(tmp_path / "m.pt2")]
    capsys.readouterr()

    assert run_cli(export.main, argv) == 2  # without --input it needs the run's data
    assert "data_loader.args.data_dir: no directory" in capsys.readouterr().err
    results = export.main([*argv, "--input", str(tmp_path / "new"), "--dynamic-batch"])
    out = capsys.readouterr().out
    assert results["differences"][2] < 1e-4 and "No test split" not in out and "Skipping" in out

    config, _ = trained_model(checkpoint, torch.device("cpu"))
    example, classes = export.example_inputs(config, 3, str(tmp_path / "new"))
    assert classes == ["a", "b", "c"]  # the run's, from its checkpoint's config
    source = ImageFolderDataLoader.inference_source(str(tmp_path / "new"), args)
    (batch,) = source.batches(8, 0)
    assert batch.indices == [1, 2] and torch.equal(example, batch.inputs[[0, 1, 0]])  # read ones, repeated to 3


@SLOW
def test_input_takes_the_example_batch_from_an_array_file_for_onnx(runs, tmp_path):
    x = np.random.RandomState(0).rand(5, 1, 8, 8).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    results = export.main(["-r", str(runs("digits")), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                           "--input", str(tmp_path / "x.npy"), "--batch-size", "4", "--dynamic-batch"])
    assert set(results["differences"]) == {4, 5} and max(results["differences"].values()) < 1e-4
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    _, checkpoint = find_checkpoint(runs("digits"))
    _, model = trained_model(checkpoint, torch.device("cpu"))
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x})[0], expected, atol=1e-4)


class DataDependent(nn.Module):
    """Branches on the values of its input: torch.export cannot trace that."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        if x.sum() > 0:
            return self.linear(x.flatten(1))
        return -self.linear(x.flatten(1))


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=SLOW), "pt2"])
def test_a_model_that_cannot_be_exported_is_one_error_line(runs, fmt, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(ARCHS._entries, "DataDependent", DataDependent)  # as if defined in model/model.py
    _, checkpoint = find_checkpoint(runs("digits"))
    checkpoint["config"]["arch"] = {**checkpoint["config"]["arch"], "type": "DataDependent", "args": {}}
    checkpoint["state_dict"] = DataDependent().state_dict()
    torch.save(checkpoint, tmp_path / "checkpoint.pth")
    capsys.readouterr()

    assert run_cli(export.main, ["-r", str(tmp_path / "checkpoint.pth"), "--format", fmt]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err  # none of the exporter's graphs, logs or traceback
    assert err.startswith(f"error: DataDependent cannot be exported to {fmt}: GuardOnDataDependentSymNode: ")
    assert "data-dependent" in err and "test_export.py" in err and "if x.sum() > 0:" in err


def test_without_the_onnx_packages_onnx_says_what_to_install_and_pt2_still_works(runs, monkeypatch, capsys):
    for name in export.ONNX_PACKAGES:
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    run = runs("digits")
    assert run_cli(export.main, ["-r", str(run), "--format", "onnx", "--out", str(run / "no.onnx")]) == 2
    err = capsys.readouterr().err
    assert err == ("error: --format onnx needs onnx, onnxscript, onnxruntime, not installed here: "
                   "pip install -r requirements-export.txt\n")
    assert not (run / "no.onnx").exists()
    assert export.main(["-r", str(run), "--format", "pt2", "--out", str(run / "alone.pt2")])["differences"][2] < 1e-4


def test_a_file_that_does_not_match_pytorch_fails_and_stays(runs, tmp_path):
    _, checkpoint = find_checkpoint(runs("digits"))
    config, model = trained_model(checkpoint, torch.device("cpu"))
    x, _ = export.example_inputs(config, 2)
    export.export_model(model, x, "pt2", tmp_path / "model.pt2")
    with torch.no_grad():
        model.features[0].bias += 0.5  # the model has changed since the export
        changed = (torch.export.load(tmp_path / "model.pt2").module()(x) - model(x)).abs().max().item()
    assert changed > 0.01
    with pytest.raises(UserError, match=rf"model.pt2 did not verify: the largest absolute difference from PyTorch, "
                                        rf"{changed:.3g} on a batch of 2, is above the tolerance 0.0001 \(the file is "
                                        rf"kept; --tolerance sets the limit\)$"):
        export.verify(model, tmp_path / "model.pt2", "pt2", [x])
    assert (tmp_path / "model.pt2").is_file()
    assert export.verify(model, tmp_path / "model.pt2", "pt2", [x], tolerance=changed * 2) == {2: changed}


@SLOW
def test_weights_too_large_for_one_onnx_file_go_beside_it_and_it_says_so(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 0)  # as if the weights were over 1.5 GB
    results = export.main(["-r", str(runs("digits")), "--format", "onnx", "--out", str(tmp_path / "big.onnx")])
    out = capsys.readouterr().out
    assert "are in big.onnx.data beside it, keep the two together" in out
    assert (tmp_path / "big.onnx.data").stat().st_size > (tmp_path / "big.onnx").stat().st_size
    assert results["differences"][2] < 1e-4  # onnxruntime found the weights beside the file


def test_flags_that_do_not_fit_are_one_error_each(capsys):
    assert run_cli(export.main, ["-r", "nowhere", "--format", "pt2", "--opset", "18", "--dynamic-batch",
                                 "--batch-size", "1", "--tolerance", "-1"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --dynamic-batch needs --batch-size 2 or more: torch.export takes a batch of 1 as fixed",
        "error: --tolerance must be 0 or more, got -1.0",
        "error: --opset applies to --format onnx only"]


DOCS_EXAMPLE = re.compile(r"<!-- onnxruntime example[^>]*-->\n```python\n(.*?)```", re.S)


@SLOW
def test_the_onnxruntime_example_of_docs_export_runs_on_an_exported_file(runs, tmp_path):
    code = DOCS_EXAMPLE.search((ROOT / "docs" / "export.md").read_text()).group(1)
    assert len(code.strip().splitlines()) == 5
    export.main(["-r", str(runs("digits")), "--format", "onnx", "--dynamic-batch", "--out", str(tmp_path / "m.onnx")])
    code, replaced = re.subn(r'InferenceSession\("[^"]+"\)', f'InferenceSession({str(tmp_path / "m.onnx")!r})', code)
    assert replaced == 1
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"\[\d\]\n", result.stdout)  # one predicted digit


def test_safetensors_holds_the_ema_average_that_loads_back_strict_and_starts_a_new_run(runs, tmp_path, capsys):
    _, checkpoint = find_checkpoint(runs("digits"))
    average = {k: t + 0.5 if t.is_floating_point() else t for k, t in checkpoint["state_dict"].items()}
    checkpoint["ema"] = {"state_dict": average, "updates": 10}  # as a run with trainer.ema writes it
    torch.save(checkpoint, tmp_path / "ema.pth")
    run = tmp_path / "ema.pth"
    results = export.main(["-r", str(run), "--format", "safetensors", "--out", str(tmp_path / "w.safetensors")])
    assert "weights: the EMA average (trainer.ema)" in capsys.readouterr().out
    weights = load_file(str(tmp_path / "w.safetensors"))
    average, raw = checkpoint["ema"]["state_dict"], checkpoint["state_dict"]
    assert weights.keys() == average.keys() == raw.keys()
    assert all(torch.equal(weights[k], average[k]) for k in weights)  # the average, not the trained weights
    assert not all(torch.equal(weights[k], raw[k]) for k in weights)
    assert file_metadata(tmp_path / "w.safetensors", "safetensors") == results["metadata"]
    assert results["metadata"]["weights"] == "ema"

    config, _ = trained_model(checkpoint, torch.device("cpu"))
    build_model(config).load_state_dict(weights, strict=True)
    state, source = read_weights(tmp_path / "w.safetensors", config["arch"]["type"])  # arch.weights, --init-from
    model = build_model(config)
    load_weights(model, state, source, strict=True)
    assert all(torch.equal(t, average[k]) for k, t in model.state_dict().items())
    assert run_cli(export.main, ["-r", str(run), "--format", "safetensors", "--dynamic-batch"]) == 2
    assert "--dynamic-batch applies to --format onnx and pt2" in capsys.readouterr().err


IMAGE_SCRIPT = re.compile(r"<!-- image example[^>]*-->\n```python\n(.*?)```", re.S)


@SLOW
def test_the_docs_image_script_prepares_a_users_file_from_the_onnx_metadata_as_predict_does(runs, tmp_path):
    """A grey run resized to [height, width]: docs/export.md's script, with the ONNX file alone, agrees with
    predict.py on the user's own image files; the safetensors file carries the same metadata, and its weights with
    its arch give predict.py's probabilities."""
    run = runs("grey_folder")
    export.main(["-r", str(run), "--format", "onnx", "--dynamic-batch"])
    export.main(["-r", str(run), "--format", "safetensors"])
    metadata = file_metadata(run / "model.onnx", "onnx")
    assert metadata == file_metadata(run / "model.safetensors", "safetensors")
    assert json.loads(metadata["preprocessing"]) == pytest.approx({**IMAGE, "mode": "L", "resize": [20, 18],
                                                                   "interpolation": "bilinear", "mean": [0.449],
                                                                   "std": [0.226]})
    files = [tmp_path / "new" / "photo.jpg", tmp_path / "new" / "wide.png"]
    write_image(files[0], size=(33, 21), seed=7)  # RGB: the script, as the loader, reads it grey
    write_image(files[1], size=(40, 12), seed=8, mode="L")
    assert run_cli(predict.main, ["-r", str(run), "--input", str(tmp_path / "new"), "--out",
                                  str(tmp_path / "p.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]

    code = IMAGE_SCRIPT.search((ROOT / "docs" / "export.md").read_text()).group(1)
    done = subprocess.run([sys.executable, "-c", code, str(run / "model.onnx"), *map(str, files)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # not in the project: it imports none of it
    assert done.returncode == 0, done.stderr
    printed = [line.split() for line in done.stdout.splitlines()]
    assert [Path(file).name for file, _, _ in printed] == [row["file"] for row in rows] == ["photo.jpg", "wide.png"]
    assert [name for _, name, _ in printed] == [row["class"] for row in rows]
    assert [float(p) for _, _, p in printed] == pytest.approx([row["probability"] for row in rows], abs=1e-4)

    arch = json.loads(metadata["arch"])
    model = ARCHS.get(arch["type"], "arch.type")(**arch["args"]).eval()
    model.load_state_dict(load_file(str(run / "model.safetensors")), strict=True)
    _, checkpoint = find_checkpoint(run)
    source = ImageFolderDataLoader.inference_source(str(tmp_path / "new"), checkpoint["config"]["data_loader"]["args"])
    (batch,) = source.batches(8, 0)
    with torch.no_grad():
        probabilities = model(batch.inputs).softmax(1).max(1).values.tolist()
    assert probabilities == pytest.approx([row["probability"] for row in rows], abs=1e-5)
