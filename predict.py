"""Predict with a checkpoint's model: python predict.py -r CHECKPOINT --input PATH [--out FILE]."""
from __future__ import annotations

import argparse
from pathlib import Path

from utils.cli import select_devices

DEFAULT_TOP_K = 5


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Predict with a checkpoint's model on new images or arrays.")
    parser.add_argument("-r", "--resume", required=True,
                        help="checkpoint file, or run directory (its model_best.pth, else its newest)")
    parser.add_argument("--last", action="store_true",
                        help="with a run directory: the newest checkpoint rather than model_best.pth")
    parser.add_argument("--input", required=True, metavar="PATH",
                        help="a file or folder that the run's data loader reads (the shipped ones: a folder of images "
                             "and its subfolders, a CSV of image files with a label column optional, a "
                             ".npy/.npz/.blosc2 file of samples), or the word test: the run's test split (a folder "
                             "named test: ./test)")
    parser.add_argument("--out", help="a .csv or .jsonl file (default: predictions.csv beside the checkpoint)")
    parser.add_argument("--batch-size", type=int, metavar="N",
                        help="inputs per batch (default: the run's data_loader.args.batch_size)")
    parser.add_argument("--top-k", type=int, metavar="K",
                        help=f"classes listed per input, most probable first (default {DEFAULT_TOP_K}, or all if "
                             "fewer)")
    parser.add_argument("-d", "--device", help="GPU index to use, e.g. 0 (sets CUDA_VISIBLE_DEVICES), or cpu")
    parser.add_argument("--strict", action="store_true", help="stop at an unreadable image file instead of skipping it")
    parser.add_argument("--num-workers", type=int, metavar="N",
                        help="processes reading image files (default 0; for --input test, the run's)")
    return parser


if __name__ == "__main__":
    # As in train.py: --help and -d act before the imports below, which import torch.
    select_devices(build_parser().parse_args().device)

import csv  # noqa: E402  (the imports that must wait for the lines above)
import json  # noqa: E402
import struct  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from logger import get_logger, setup_logging  # noqa: E402
from run import Inputs, choose_device, open_inputs, trained_model  # noqa: E402
from trainer.trainer import to_device  # noqa: E402
from utils.checkpoint import PREDICT, checkpoint_to_use  # noqa: E402
from utils.errors import UserError, exit_cli, first_line, project_location, raised_by_a_library  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    """Load the checkpoint's model, open --input through the run's data loader (its inference_source, or the test
    split), predict every input in batches and write one row per input as the batches come; returns the summary it
    prints."""
    args = build_parser().parse_args(argv)
    select_devices(args.device)
    setup_logging(None)
    check_flags(args)
    path, checkpoint, why = checkpoint_to_use(args.resume, PREDICT, args.last)
    print(f"Predicting with {path} ({why})")
    device, _ = choose_device(checkpoint["config"].get("n_gpu", 1), args.device, one=True)
    config, model = trained_model(checkpoint, device)
    inputs = open_inputs(config, args.input, args.batch_size, args.num_workers)
    out = Path(args.out) if args.out else path.with_name("predictions.csv")
    summary = predict(model, inputs, device, out, args.top_k, args.strict)
    report(summary, path)
    return summary


def check_flags(args: argparse.Namespace) -> None:
    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--top-k", args.top_k, 1),
                               ("--num-workers", args.num_workers, 0)):
        if value is not None and value < least:
            raise UserError(f"{flag} {value}: give a whole number from {least}")
    if args.out and Path(args.out).suffix.lower() not in (".csv", ".jsonl"):
        raise UserError(f"--out {args.out}: give a file name ending in .csv or .jsonl (JSON Lines)")


# ---- predicting and writing ----

def predict(model: torch.nn.Module, inputs: Inputs, device: torch.device, out: Path, top_k: int | None,
            strict: bool) -> dict:
    """Run the model over the batches, writing each batch's rows as it comes; skip (or with strict, stop at) an
    unreadable file."""
    logger = get_logger("predict")
    writer, skipped = None, 0
    try:
        for indices, data, labels, unreadable in tqdm(inputs.batches, total=inputs.n_batches, desc="predict",
                                                      unit="batch", leave=False, disable=None):
            for _, message in unreadable:
                if strict:
                    raise UserError(f"{message} (--strict stops at an unreadable file; without it, it is skipped)")
                logger.warning("Skipping %s", message)
            skipped += len(unreadable)
            if data is None:
                continue
            output = forward(model, data, device, inputs.source)
            if writer is None:
                writer = open_writer(output, inputs, out, top_k)
            writer.write(indices, output, labels)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise UserError(f"--input {inputs.source}: none of its {inputs.count} input(s) could be read; see the "
                        "warnings above")
    return {**writer.summary(), "skipped": skipped, "input": inputs.source}


@torch.no_grad()
def forward(model: torch.nn.Module, data: Any, device: torch.device, source: str) -> torch.Tensor:
    """The model's output for a batch, as float32; inputs it cannot take are a UserError with their shape."""
    try:
        output = model(to_device(data, device))
    except RuntimeError as e:
        if not raised_by_a_library(e):
            raise
        shape = list(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
        raise UserError(f"--input {source}: the model cannot take inputs of shape {shape}: {first_line(e)}"
                        f"{project_location(e)}; give inputs shaped as the run's training inputs") from None
    if not isinstance(output, torch.Tensor):
        raise UserError(f"arch.type {type(model).__name__} returns a {type(output).__name__}, not one tensor; "
                        "predict.py writes one tensor per input")
    return output.float()


def open_writer(output: torch.Tensor, inputs: Inputs, out: Path, top_k: int | None) -> ClassRows | RawOutputs:
    """Class rows when the first batch's output is class scores (2-D, several columns), else raw outputs."""
    if output.ndim == 2 and output.shape[1] > 1:
        n = output.shape[1]
        if top_k is not None and top_k > n:
            raise UserError(f"--top-k {top_k}: the model scores {n} classes; give at most {n}")
        return ClassRows(out, inputs, min(top_k or DEFAULT_TOP_K, n), probability_kind(output))
    return RawOutputs(out, inputs, output)


PROBABILITIES = {"log": "exp of the outputs (they are log-probabilities)",
                 "softmax": "softmax of the outputs (logits)",
                 "as is": "the outputs (they are probabilities)"}


def probability_kind(output: torch.Tensor) -> str:
    """How a run's outputs become probabilities, judged on its first batch: "log" when every row of exp(output)
    sums to 1 and no output is positive, "as is" when the rows are already probabilities, else "softmax"."""
    def sums_to_one(p: torch.Tensor) -> bool:
        return bool(torch.allclose(p.sum(1), torch.ones(len(p), device=p.device), atol=1e-3))

    if (output <= 0).all() and sums_to_one(output.exp()):
        return "log"
    if ((output >= 0) & (output <= 1)).all() and sums_to_one(output):
        return "as is"
    return "softmax"


def open_file(path: Path, binary: bool = False):
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "wb") if binary else open(path, "w", newline="", encoding="utf-8")
    except OSError as e:
        raise UserError(f"--out {path}: cannot write it: {e.strerror}") from None


class Rows:
    """A CSV (header from the first row; a list value spread over numbered columns) or JSON Lines file, opened
    once and appended to a batch at a time."""

    def __init__(self, path: Path):
        self.path, self.file, self.csv = path, open_file(path), None

    def write(self, rows: list[dict]) -> None:
        if self.path.suffix.lower() == ".jsonl":
            self.file.writelines(json.dumps(row) + "\n" for row in rows)
            return
        rows = [_flat(row) for row in rows]
        if self.csv is None:
            self.csv = csv.DictWriter(self.file, fieldnames=list(rows[0]), lineterminator="\n")
            self.csv.writeheader()
        self.csv.writerows(rows)

    def close(self) -> None:
        self.file.close()


def _flat(row: dict) -> dict:
    """{"top_k": [{"class": c, "probability": p}, ...]} as top1_class, top1_prob, ... columns."""
    flat = {k: v for k, v in row.items() if k != "top_k"}
    for i, entry in enumerate(row.get("top_k", []), 1):
        flat[f"top{i}_class"], flat[f"top{i}_prob"] = entry["class"], entry["probability"]
    return flat


class ClassRows:
    """One row per input: its name, label (when known), predicted class and probability, and the top k; the
    accuracy over the labelled inputs."""

    def __init__(self, out: Path, inputs: Inputs, k: int, kind: str):
        self.rows, self.inputs, self.k, self.kind = Rows(out), inputs, k, kind
        self.count = self.labelled = self.correct = 0
        classes = inputs.classes
        self.name = (lambda i: classes[i] if i < len(classes) else i) if classes else (lambda i: i)
        print(f"Probabilities: {PROBABILITIES[kind]}.")

    def write(self, indices: list[int], output: torch.Tensor, labels: torch.Tensor | None) -> None:
        probabilities = output.exp() if self.kind == "log" else output.softmax(1) if self.kind == "softmax" else output
        values, classes = probabilities.topk(self.k, dim=1)
        values, classes = values.cpu().tolist(), classes.cpu().tolist()
        truth = None if labels is None else labels.cpu().tolist()
        rows = []
        for n, index in enumerate(indices):
            row = {self.inputs.key: self.inputs.names[index]}
            if truth is not None:
                row["label"] = self.name(truth[n])
            top = [{"class": self.name(c), "probability": round(p, 6)} for c, p in zip(classes[n], values[n])]
            rows.append({**row, **top[0], "top_k": top})
        self.rows.write(rows)
        self.count += len(indices)
        if truth is not None:
            self.labelled += len(truth)
            self.correct += sum(c[0] == t for c, t in zip(classes, truth))

    def close(self) -> None:
        self.rows.close()

    def summary(self) -> dict:
        accuracy = {"accuracy": self.correct / self.labelled, "labelled": self.labelled} if self.labelled else {}
        return {"predicted": self.count, **accuracy, "probabilities": self.kind, "out": str(self.rows.path)}


class RawOutputs:
    """Outputs that are not class scores (regression, images): the raw values in a .npy file beside an index file
    that names each row's input."""

    def __init__(self, out: Path, inputs: Inputs, first: torch.Tensor):
        self.index, self.inputs = Rows(out), inputs
        self.array = NpyWriter(out.with_suffix(".npy"), (inputs.count, *first.shape[1:]))
        print(f"The model's outputs are not class scores (each {list(first.shape[1:]) or 'a number'}): raw outputs "
              f"go to {self.array.path}, row i for row i of {out}.")

    def write(self, indices: list[int], output: torch.Tensor, labels: torch.Tensor | None) -> None:
        self.index.write([{self.inputs.key: self.inputs.names[i]} for i in indices])
        self.array.write(output.cpu().numpy())

    def close(self) -> None:
        self.index.close()
        self.array.close()

    def summary(self) -> dict:
        return {"predicted": self.array.rows, "out": str(self.index.path), "outputs": str(self.array.path)}


class NpyWriter:
    """A float32 .npy file written a batch at a time: its header is sized for the most rows there can be
    (shape[0]) and rewritten in place with the rows written, so nothing is held but the batch."""

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.path, self.shape, self.rows = path, shape, 0
        self.file = open_file(path, binary=True)
        self.size = len(_npy_header(shape))
        self.file.write(_npy_header(shape))

    def write(self, array: np.ndarray) -> None:
        if tuple(array.shape[1:]) != self.shape[1:]:
            raise UserError(f"the model's outputs changed shape between batches ({list(self.shape[1:])} then "
                            f"{list(array.shape[1:])}); predict.py writes outputs of one shape")
        self.file.write(np.ascontiguousarray(array, dtype="<f4").tobytes())
        self.rows += len(array)

    def close(self) -> None:
        self.file.seek(0)
        self.file.write(_npy_header((self.rows, *self.shape[1:]), self.size))
        self.file.close()


def _npy_header(shape: tuple[int, ...], size: int | None = None) -> bytes:
    """The header of a version 1.0 .npy file of float32 values in C order, padded to size bytes (default: the
    shortest multiple of 64)."""
    text = repr({"descr": "<f4", "fortran_order": False, "shape": tuple(shape)}).encode("latin1")
    size = size or -(-(len(text) + 11) // 64) * 64
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", size - 10) + text + b" " * (size - 11 - len(text)) + b"\n"


def report(summary: dict, checkpoint: Path) -> None:
    print(f"Predicted {summary['predicted']} input(s) of {summary['input']} with {checkpoint}")
    if "accuracy" in summary:
        print(f"    accuracy       : {summary['accuracy']:.6g} ({summary['labelled']} labelled inputs)")
    if summary["skipped"]:
        print(f"skipped {summary['skipped']} unreadable file(s)")
    if "outputs" in summary:
        print(f"Raw outputs written to {summary['outputs']}; their inputs, row by row, to {summary['out']}")
    else:
        print(f"Predictions written to {summary['out']}")


if __name__ == "__main__":
    exit_cli(main)
