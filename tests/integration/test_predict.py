"""predict.py end to end on tiny runs: a folder of images agrees with test.py and with the model run apart, so does
an ImageCsv run's own test CSV (and a CSV of files relative to itself), a user's own loader through its
inference_source, the test split, arrays, an unreadable file, memory that does not grow with the folder, JSON Lines
and top-k, raw outputs of an autoencoder, and the error lines."""
from __future__ import annotations

import csv
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import predict
import test as test_script
import train
from base import BaseDataLoader
from data_loader.inputs import InferenceSource, image_files_source, read_pixels
from data_loader.transforms import image_pipeline
from run import build_data, trained_model
from conftest import ROOT, run_cli, run_dir, tiny_config
from fake_data import write_image, write_image_csv, write_image_folder
from utils.checkpoint import find_checkpoint
from utils.distributed import SINGLE
from utils.errors import run_cli as run_in_process
from utils.registry import DATA_LOADERS

pytestmark = pytest.mark.usefixtures("restore_logging")  # train.main and predict.main set up logging

CLASSES = ["cat", "dog", "emu"]
CPU = torch.device("cpu")


def rows_of(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run directory, test folder) of configs/image_folder.json trained one epoch on generated PNGs."""
    root = tmp_path_factory.mktemp("image_run")
    write_image_folder(root / "train", {"cat": 8, "dog": 6, "emu": 6})
    write_image_folder(root / "test", {"cat": 3, "dog": 2, "emu": 3}, size=(10, 14))
    train.main(["-c", str(ROOT / "configs/image_folder.json"), "--run-id", "x", f"trainer.save_dir={root}",
                f"data_loader.args.data_dir={root / 'train'}", f"data_loader.args.test_dir={root / 'test'}",
                "trainer.epochs=1", "trainer.verbosity=0", "trainer.tensorboard=false",
                "data_loader.args.num_workers=0", "arch.args.blocks=(cnf8 m) d", "-d", "cpu"])
    return run_dir(root, "x", "ImageFolder_CNN")[0], root / "test"


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run directory, test CSV) of configs/image_csv.json trained one epoch on generated PNGs, its CSVs in a folder
    of their own: their file names are relative to data_loader.args.img_dir, not to the CSVs."""
    root = tmp_path_factory.mktemp("csv_run")
    (root / "lists").mkdir()
    write_image_csv(root / "images", root / "lists" / "train.csv", ["cat", "dog"] * 12)
    write_image_csv(root / "images", root / "lists" / "test.csv", ["dog", "cat", "cat"] * 10, first=100)
    train.main(["-c", str(ROOT / "configs/image_csv.json"), "--run-id", "x", f"trainer.save_dir={root}",
                f"data_loader.args.annotations_file={root / 'lists' / 'train.csv'}",
                f"data_loader.args.test_annotations_file={root / 'lists' / 'test.csv'}",
                f"data_loader.args.img_dir={root / 'images'}", "data_loader.args.num_workers=0",
                "data_loader.args.batch_size=8", "trainer.epochs=1", "trainer.verbosity=0", "trainer.tensorboard=false",
                "arch.args.blocks=(cnf8 m) d", "-d", "cpu"])
    return run_dir(root, "x", "ImageCsv_CNN")[0], root / "lists" / "test.csv"


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits_run")
    (root / "config.json").write_text(json.dumps(tiny_config(root / "saved", tensorboard=False)))
    train.main(["-c", str(root / "config.json"), "--run-id", "d", "-d", "cpu"])
    return run_dir(root / "saved", "d")[0]


def digits_samples(n: int = 50) -> torch.Tensor:
    from data_loader.data_loaders import DigitsDataLoader

    return DigitsDataLoader(training=False).dataset.tensors[0][:n]


def model_of(run: Path):
    _, checkpoint = find_checkpoint(run)
    return trained_model(checkpoint, CPU)


@pytest.mark.slow
def test_a_folder_of_images_agrees_with_test_py_and_with_the_model_run_apart(image_run, tmp_path, capsys):
    run, test_dir = image_run
    tested = test_script.main(["-r", str(run), "--out", str(tmp_path / "t.json")])
    capsys.readouterr()
    summary = predict.main(["-r", str(run), "--input", str(test_dir), "--batch-size", "3"])
    out = capsys.readouterr().out
    assert summary["accuracy"] == pytest.approx(tested["accuracy"], abs=1e-6) and summary["predicted"] == 8
    assert "accuracy" in out and "Probabilities: softmax" in out
    rows = rows_of(run / "predictions.csv")  # the default output, beside the checkpoint

    # The same images as test.py reads them (its loader, its order), through the model loaded apart.
    config, model = model_of(run)
    loader, _ = build_data(config, False, SINGLE)
    with torch.no_grad():
        expected = torch.cat([model(x).argmax(1) for x, _ in loader]).tolist()
    files = [Path(p).relative_to(test_dir).as_posix() for p, _ in loader.dataset.samples]
    assert [r["file"] for r in rows] == files
    assert [r["class"] for r in rows] == [CLASSES[i] for i in expected]
    assert [r["label"] for r in rows] == [f.split("/")[0] for f in files]
    assert {r["top1_class"] for r in rows} <= set(CLASSES) and set(rows[0]) >= {"top3_class", "top3_prob"}
    assert all(float(r["probability"]) == float(r["top1_prob"]) >= float(r["top2_prob"]) for r in rows)


def split_outputs(run: Path) -> torch.Tensor:
    """The model's outputs on the run's test split, as test.py reads it, with the model loaded apart."""
    config, model = model_of(run)
    loader, _ = build_data(config, False, SINGLE)
    with torch.no_grad():
        return torch.cat([model(x) for x, _ in loader])


@pytest.mark.slow
def test_the_runs_own_test_csv_agrees_with_test_py_exactly(csv_run, tmp_path, capsys):
    run, test_csv = csv_run
    tested = test_script.main(["-r", str(run), "--out", str(tmp_path / "t.json")])
    summary = predict.main(["-r", str(run), "--input", str(test_csv), "--out", str(tmp_path / "p.csv")])
    capsys.readouterr()
    assert summary["predicted"] == summary["labelled"] == tested["n_samples"] == 30 and summary["skipped"] == 0
    rows = rows_of(tmp_path / "p.csv")
    correct = sum(r["class"] == r["label"] for r in rows)
    # the same inputs predicted right: test.py's float32 batch means (10/30 is 0.3333333432674408) hold the same count
    assert summary["accuracy"] == correct / 30 and round(tested["accuracy"] * 30) == correct
    assert summary["accuracy"] == pytest.approx(tested["accuracy"], rel=1e-6)
    outputs = split_outputs(run)
    assert [r["class"] for r in rows] == [["cat", "dog"][i] for i in outputs.argmax(1).tolist()]
    probabilities = outputs.softmax(1).max(1).values.tolist()  # the same inputs, bit for bit: the same outputs
    assert [float(r["probability"]) for r in rows] == pytest.approx(probabilities, abs=1e-6)
    assert [r["file"] for r in rows] == [f"img{100 + i}.png" for i in range(30)]  # as the CSV lists them
    assert [r["label"] for r in rows] == ["dog", "cat", "cat"] * 10


@pytest.mark.slow
def test_a_csv_of_files_relative_to_itself_gives_the_same_predictions(csv_run, tmp_path):
    run, test_csv = csv_run
    images = test_csv.parent.parent / "images"
    (tmp_path / "new" / "sub").mkdir(parents=True)
    shutil.copy(images / "img100.png", tmp_path / "new" / "sub" / "a.png")  # names img_dir does not hold
    shutil.copy(images / "img101.png", tmp_path / "new" / "b.png")
    (tmp_path / "new" / "list.csv").write_text(f"file\nsub/a.png\nb.png\n{images / 'img102.png'}\n")
    summary = predict.main(["-r", str(run), "--input", str(tmp_path / "new" / "list.csv"),
                            "--out", str(tmp_path / "p.csv")])
    rows = rows_of(tmp_path / "p.csv")
    assert summary["predicted"] == 3 and summary["skipped"] == 0 and "accuracy" not in summary
    outputs = split_outputs(run)[:3]
    assert [r["class"] for r in rows] == [["cat", "dog"][i] for i in outputs.argmax(1).tolist()]
    assert [float(r["probability"]) for r in rows] == pytest.approx(outputs.softmax(1).max(1).values.tolist(),
                                                                    abs=1e-6)
    assert [r["file"] for r in rows] == ["sub/a.png", "b.png", str(images / "img102.png")]


# ---- a user's own data loader ----

DIGIT_PIXELS = image_pipeline(None, [0.5], [0.5], "eval")  # a uint8 1 x 8 x 8 image -> the model's input


def digit_images() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as uint8 grey 8 x 8 images (pixels 0..240) and their labels."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.as_tensor(x * 15, dtype=torch.uint8).reshape(-1, 1, 8, 8), torch.as_tensor(y)


class PlainDigitPictures(BaseDataLoader):
    """A user's loader in data_loader/data_loaders.py: digits as 8 x 8 grey pictures, without inference_source."""

    def __init__(self, batch_size: int = 128, shuffle: bool = True, validation_split: float = 0.1,
                 num_workers: int = 0, training: bool = True):
        images, labels = digit_images()
        images, labels = (images[:1500], labels[:1500]) if training else (images[1500:], labels[1500:])
        dataset = torch.utils.data.TensorDataset(torch.stack([DIGIT_PIXELS(x) for x in images]), labels)
        super().__init__(dataset, batch_size, shuffle, validation_split, num_workers)


class DigitPictures(PlainDigitPictures):
    """The same loader with the one method that gives it predict.py support."""

    @classmethod
    def inference_source(cls, path: str, args: dict) -> InferenceSource:
        return image_files_source(path, functools.partial(read_pixels, mode="L"), DIGIT_PIXELS)


@pytest.mark.slow
def test_a_users_loader_gets_predict_py_from_its_inference_source(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(DATA_LOADERS._entries, "DigitPictures", DigitPictures)  # as if in data_loader/data_loaders.py
    config = tiny_config(tmp_path / "saved", tensorboard=False)
    config["data_loader"] = {"type": "DigitPictures", "args": {"batch_size": 128}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    train.main(["-c", str(tmp_path / "config.json"), "--run-id", "u", "-d", "cpu"])
    run = run_dir(tmp_path / "saved", "u")[0]

    images, labels = digit_images()
    from PIL import Image

    lines = ["file,label"]
    for i in range(1500, 1520):
        Image.fromarray(images[i, 0].numpy(), "L").save(tmp_path / f"d{i}.png")
        lines.append(f"d{i}.png,{labels[i].item()}")
    (tmp_path / "digits.csv").write_text("\n".join(lines) + "\n")
    summary = predict.main(["-r", str(run), "--input", str(tmp_path / "digits.csv"), "--out", str(tmp_path / "p.csv")])
    _, model = model_of(run)
    with torch.no_grad():
        expected = model(torch.stack([DIGIT_PIXELS(x) for x in images[1500:1520]])).argmax(1)
    rows = rows_of(tmp_path / "p.csv")
    assert [int(r["class"]) for r in rows] == expected.tolist() and summary["predicted"] == 20
    assert summary["accuracy"] == pytest.approx((expected == labels[1500:1520]).double().mean().item())

    # The same run whose loader has no inference_source: one line saying what to do.
    monkeypatch.setitem(DATA_LOADERS._entries, "DigitPictures", PlainDigitPictures)
    capsys.readouterr()
    assert run_in_process(predict.main, ["-r", str(run), "--input", str(tmp_path / "digits.csv")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"error: --input {tmp_path / 'digits.csv'}: data_loader.type PlainDigitPictures does not say how "
                     "to turn files into model inputs; give --input test (its test split), or write "
                     "PlainDigitPictures.inference_source (see docs/predictions.md)"]
    assert predict.main(["-r", str(run), "--input", "test", "--out", str(tmp_path / "t.csv")])["predicted"] == 297


@pytest.mark.slow
def test_input_test_equals_test_py_on_digits(digits_run, tmp_path, capsys):
    tested = test_script.main(["-r", str(digits_run), "--out", str(tmp_path / "t.json")])
    summary = predict.main(["-r", str(digits_run), "--input", "test", "--out", str(tmp_path / "p.csv")])
    assert "Probabilities: exp of the outputs (they are log-probabilities)" in capsys.readouterr().out
    assert summary["predicted"] == tested["n_samples"] == 360 and summary["probabilities"] == "log"
    assert summary["accuracy"] == pytest.approx(tested["accuracy"], abs=1e-6)
    rows = rows_of(tmp_path / "p.csv")
    assert [r["index"] for r in rows[:3]] == ["0", "1", "2"] and len(rows) == 360


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_arrays_give_the_models_argmax(digits_run, tmp_path, suffix):
    x = digits_samples()
    path = tmp_path / f"x{suffix}"
    np.save(path, x.numpy()) if suffix == ".npy" else np.savez(path, x=x.numpy(), y=np.arange(50) % 10)
    summary = predict.main(["-r", str(digits_run), "--input", str(path), "--out", str(tmp_path / "p.csv"),
                            "--batch-size", "16"])
    _, model = model_of(digits_run)
    with torch.no_grad():
        expected = model(x).argmax(1).tolist()
    rows = rows_of(tmp_path / "p.csv")
    assert [int(r["class"]) for r in rows] == expected and [r["index"] for r in rows] == [str(i) for i in range(50)]
    if suffix == ".npz":  # its y gives the labels
        assert summary["accuracy"] == pytest.approx(np.mean(np.array(expected) == np.arange(50) % 10))
    else:
        assert "accuracy" not in summary and "label" not in rows[0]


@pytest.mark.slow
def test_an_unreadable_image_is_skipped_and_counted_or_stops_with_strict(image_run, tmp_path, capsys):
    run, test_dir = image_run
    folder = tmp_path / "images"
    shutil.copytree(test_dir, folder)
    (folder / "dog" / "bad.png").write_bytes(b"this is not a PNG")
    (folder / "notes.txt").write_text("not an image")
    summary = predict.main(["-r", str(run), "--input", str(folder), "--out", str(tmp_path / "p.csv"),
                            "--num-workers", "2", "--batch-size", "4"])
    out = capsys.readouterr().out
    assert summary["skipped"] == 1 and summary["predicted"] == 8
    assert "Skipping" in out and "bad.png" in out and "skipped 1 unreadable file(s)" in out
    assert "bad.png" not in {r["file"] for r in rows_of(tmp_path / "p.csv")}

    argv = ["-r", str(run), "--input", str(folder), "--out", str(tmp_path / "s.csv"), "--strict"]
    assert run_in_process(predict.main, argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "bad.png" in lines[0] and "--strict" in lines[0]


def test_raw_outputs_stream_to_a_npy_file_whose_header_is_rewritten_with_the_rows_written(tmp_path):
    writer = predict.NpyWriter(tmp_path / "o.npy", (100_000, 2, 3))  # room for 100,000 rows; 6 written
    for i in range(3):
        writer.write(np.full((2, 2, 3), i, dtype=np.float32))
    with pytest.raises(predict.UserError, match="changed shape between batches"):
        writer.write(np.zeros((2, 3, 3), dtype=np.float32))
    writer.close()
    outputs = np.load(tmp_path / "o.npy")
    assert outputs.shape == (6, 2, 3) and outputs.dtype == np.float32
    assert outputs[:, 0, 0].tolist() == [0, 0, 1, 1, 2, 2]


def test_probabilities_from_logits_log_probabilities_or_probabilities():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]])
    assert predict.probability_kind(logits) == "softmax"
    assert predict.probability_kind(logits.log_softmax(1)) == "log"
    assert predict.probability_kind(logits.softmax(1)) == "as is"
    assert predict.probability_kind(torch.zeros(2, 3)) == "softmax"  # rows of exp sum to 3: not log-probabilities


MEASURE = """
import resource, sys
import predict
for n in sys.argv[2:]:
    predict.main(["-r", sys.argv[1], "--input", n, "--out", n + ".csv", "--batch-size", "100", "-d", "cpu"])
    print("peak MiB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, flush=True)  # KiB on Linux
"""


@pytest.mark.slow
def test_memory_does_not_grow_with_the_number_of_images(image_run, tmp_path):
    # Each image becomes a 3x64x64 float32 input (48 KiB, the run's eval_transforms): holding 3,000 would take
    # 140 MiB more than holding 300. One fresh process predicts 300 images, then 3,000; its peak resident memory
    # after each (getrusage) may grow by a few MiB only.
    run, _ = image_run
    sources = [tmp_path / f"src{i}.png" for i in range(10)]
    for i, source in enumerate(sources):
        write_image(source, size=(8, 8), seed=i)
    folders = [tmp_path / "n300", tmp_path / "n3000"]
    for folder, n in zip(folders, (300, 3000)):
        folder.mkdir()
        for i in range(n):
            os.link(sources[i % 10], folder / f"{i:05d}.png")
    result = subprocess.run([sys.executable, "-c", MEASURE, str(run), *map(str, folders)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    peaks = [float(line.split()[-1]) for line in result.stdout.splitlines() if line.startswith("peak MiB")]
    assert len(rows_of(tmp_path / "n3000.csv")) == 3000 and len(peaks) == 2
    assert peaks[1] - peaks[0] < 30, peaks  # measured: 7 MiB; 145 MiB when every batch is kept


@pytest.mark.slow
def test_jsonl_output_with_top_k(image_run, tmp_path):
    run, test_dir = image_run
    summary = predict.main(["-r", str(run), "--input", str(test_dir), "--out", str(tmp_path / "p.jsonl"),
                            "--top-k", "2"])
    rows = rows_of(tmp_path / "p.jsonl")
    assert len(rows) == summary["predicted"] == 8 and rows[0]["file"] == "cat/0.png" and rows[0]["label"] == "cat"
    for row in rows:
        top = row["top_k"]
        assert [t["class"] for t in top][0] == row["class"] and len(top) == 2
        assert top[0]["probability"] >= top[1]["probability"] and top[0]["probability"] + top[1]["probability"] <= 1
        assert {t["class"] for t in top} <= set(CLASSES)
    predict.main(["-r", str(run), "--input", str(test_dir), "--out", str(tmp_path / "p3.csv"), "--top-k", "3"])
    assert [k for k in rows_of(tmp_path / "p3.csv")[0] if k.startswith("top")][-1] == "top3_prob"


@pytest.mark.slow
def test_an_autoencoder_writes_raw_outputs_beside_an_index(tmp_path, capsys):
    config = json.loads((ROOT / "configs/autoencoder_digits.json").read_text())
    train.main(["-c", str(ROOT / "configs/autoencoder_digits.json"), "--run-id", "ae", f"trainer.save_dir={tmp_path}",
                "trainer.epochs=1", "trainer.limit_train_batches=2", "trainer.verbosity=0", "trainer.tensorboard=false",
                "-d", "cpu"])
    run = run_dir(tmp_path, "ae", config["name"])[0]
    capsys.readouterr()
    summary = predict.main(["-r", str(run), "--input", "test", "--out", str(tmp_path / "ae.csv")])
    assert "not class scores" in capsys.readouterr().out and summary["outputs"] == str(tmp_path / "ae.npy")
    outputs = np.load(tmp_path / "ae.npy")
    _, model = model_of(run)
    from data_loader.data_loaders import DigitsDataLoader

    with torch.no_grad():
        expected = model(DigitsDataLoader(training=False).dataset.tensors[0]).numpy()
    assert outputs.shape == expected.shape == (360, 1, 8, 8)
    np.testing.assert_allclose(outputs, expected, atol=1e-5)
    assert [r["index"] for r in rows_of(tmp_path / "ae.csv")] == [str(i) for i in range(360)]


@pytest.mark.slow
def test_mistakes_are_one_line_naming_the_flag_or_path(digits_run, image_run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    write_image(tmp_path / "pictures" / "a.png")
    np.save(tmp_path / "x.npy", digits_samples(4).numpy())
    digits, images = str(digits_run), str(image_run[0])
    cases = [
        (digits, ["--input", str(tmp_path / "nowhere")], "--input", "no such file or folder"),
        (images, ["--input", str(tmp_path / "empty")], "--input", "no image files"),
        (digits, ["--input", str(tmp_path / "notes.txt")], "--input", "unknown kind of file '.txt'"),
        (digits, ["--input", str(tmp_path / "pictures")], "--input", "DigitsDataLoader takes arrays, not image files"),
        (digits, ["--input", str(tmp_path / "x.npy"), "--top-k", "11"], "--top-k 11", "give at most 10"),
        (images, ["--input", str(tmp_path / "x.npy")], "--input", "the model cannot take inputs of shape [4, 1, 8, 8]"),
        (digits, ["--input", "test", "--top-k", "0"], "--top-k 0", "from 1"),
        (digits, ["--input", "test", "--out", str(tmp_path / "p.txt")], "--out", ".csv or .jsonl"),
        (digits, ["--input", str(tmp_path / "x.npy"), "--batch-size", "0"], "--batch-size 0", "from 1"),
    ]
    for run, argv, names, fix in cases:
        assert run_in_process(predict.main, ["-r", run, "--out", str(tmp_path / "o.csv"), *argv]) == 2, argv
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0] and fix in lines[0], lines

    # predict.py run as a script: the same line on stderr, and the exit status
    result = run_cli("predict.py", "-r", str(tmp_path / "none.pth"), "--input", "test", "-d", "cpu")
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "none.pth" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
