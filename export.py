"""Export a trained model for serving and check it against PyTorch:
python export.py -r CHECKPOINT --format onnx|pt2|safetensors [--out FILE] [--dynamic-batch] [--input PATH].
Every file carries the run's preprocessing and class names in its metadata (run/artifact.py)."""
from __future__ import annotations

import argparse

from utils.cli import select_devices

# written beside the checkpoint unless --out says
FILE_NAMES = {"onnx": "model.onnx", "pt2": "model.pt2", "safetensors": "model.safetensors"}
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # requirements-export.txt
INSTALL = "pip install -r requirements-export.txt"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export a checkpoint's model to ONNX, a torch.export program or its "
                                                 "weights alone (safetensors), with the run's preprocessing and class "
                                                 "names in the file's metadata, and check the file's outputs against "
                                                 "PyTorch's.")
    parser.add_argument("-r", "--resume", required=True,
                        help="checkpoint file, or run directory (its model_best.pth, else its newest)")
    parser.add_argument("--last", action="store_true",
                        help="with a run directory: the newest checkpoint rather than model_best.pth")
    parser.add_argument("--format", required=True, choices=sorted(FILE_NAMES),
                        help="onnx (the dynamo-based exporter; run it with onnxruntime), pt2 (torch.export.save) or "
                             "safetensors (the weights to predict with, the EMA average where the run kept one)")
    parser.add_argument("--out", help="the file to write (default: model.onnx, model.pt2 or model.safetensors beside "
                                      "the checkpoint)")
    parser.add_argument("--dynamic-batch", action="store_true",
                        help="any batch size (default: the example's batch size is fixed in the file; not for "
                             "safetensors, which holds weights only)")
    parser.add_argument("-d", "--device", help="GPU index to export on, e.g. 0 (sets CUDA_VISIBLE_DEVICES), or cpu")
    parser.add_argument("--tolerance", type=float,
                        help="the largest absolute difference from PyTorch that verifies (default 1e-4; 1e-2 for "
                             "float16/bfloat16 outputs)")
    parser.add_argument("--opset", type=int, help="with --format onnx: the ONNX opset (default: the exporter's)")
    parser.add_argument("--batch-size", type=int, default=2,
                        help="samples of the run's data in the example input (default 2)")
    parser.add_argument("--input", metavar="PATH",
                        help="take the example input from these files, read as predict.py --input reads them (the "
                             "run's data loader's inference_source; no training data needed); default: the run's test "
                             "split, else its training data")
    return parser


if __name__ == "__main__":
    # As in train.py and test.py: --help and -d act before the imports below, which import torch.
    select_devices(build_parser().parse_args().device)

import contextlib  # noqa: E402  (the imports that must wait for the lines above)
import copy  # noqa: E402
import importlib  # noqa: E402
import io  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import torch  # noqa: E402
from torch.utils import _pytree as pytree  # noqa: E402

from logger import get_logger, setup_logging  # noqa: E402
from parse_config import ConfigParser  # noqa: E402
from run import artifact_metadata, build_data, choose_device, first_inputs, open_inputs, trained_model  # noqa: E402
from trainer.trainer import to_device  # noqa: E402
from utils.checkpoint import EXPORT, checkpoint_to_use  # noqa: E402
from utils.distributed import SINGLE  # noqa: E402
from utils.errors import UserError, exit_cli  # noqa: E402

# torch.onnx writes the weights into one file up to this size and beside it above (an ONNX file is a protobuf,
# limited to 2 GB; torch.onnx keeps room for the graph): we ask for it at the same size, so that we can say so.
EXTERNAL_DATA_BYTES = 1536 * 1024**2
TOLERANCE, HALF_TOLERANCE = 1e-4, 1e-2  # float32 (and float64) outputs; float16/bfloat16 outputs
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # torch.onnx colours parts of its messages
_MORE = re.compile(r"For more information, run with .*$")  # torch's pointer to its logs, in a first line
_CALL = re.compile(r'The following call raised this error:\s*\n\s*File "([^"]+)", line (\d+), in (\S+)\n\s*(.+)')


def main(argv: list[str] | None = None) -> dict:
    """Load the checkpoint's model, take an example batch of its data (or of --input), export, and verify the file
    against PyTorch on that batch (and, with --dynamic-batch, on one of another size)."""
    args = build_parser().parse_args(argv)
    select_devices(args.device)
    setup_logging(None)
    check_args(args)
    if args.format == "onnx":
        require_onnx()  # before anything slow
    path, checkpoint, why = checkpoint_to_use(args.resume, EXPORT, args.last)
    print(f"Exporting {path} ({why})")
    device, _ = choose_device(checkpoint["config"].get("n_gpu", 1), args.device, one=True)
    config, model = trained_model(checkpoint, device)
    samples, classes = example_inputs(config, args.batch_size + 1, args.input)  # one more: the other batch size
    samples = to_device(samples, device)
    batches = [samples[:args.batch_size]] + ([samples] if args.dynamic_batch else [])
    out = Path(args.out) if args.out else path.with_name(FILE_NAMES[args.format])
    metadata, held = artifact_metadata(config, checkpoint, path, classes, samples.shape[1:])
    notes = export_model(model, batches[0], args.format, out, dynamic_batch=args.dynamic_batch, opset=args.opset,
                         metadata=metadata)
    batch = ("any batch size" if args.dynamic_batch else "the weights alone" if args.format == "safetensors"
             else f"batch size fixed at {args.batch_size}")
    print(f"Exported {path} to {out} ({args.format}, {_size(out)}; input {_shape(batches[0])}, {batch}){notes}")
    print(held)
    differences = verify(model, out, args.format, batches, args.tolerance)
    return {"file": str(out), "format": args.format, "checkpoint": str(path), "dynamic_batch": args.dynamic_batch,
            "differences": differences, "metadata": metadata}


def check_args(args: argparse.Namespace) -> None:
    problems = []
    if args.batch_size < 1:
        problems.append(f"--batch-size must be 1 or more, got {args.batch_size}")
    elif args.dynamic_batch and args.batch_size < 2 and args.format != "safetensors":
        problems.append("--dynamic-batch needs --batch-size 2 or more: torch.export takes a batch of 1 as fixed")
    if args.dynamic_batch and args.format == "safetensors":
        problems.append("--dynamic-batch applies to --format onnx and pt2: a .safetensors file holds weights, which "
                        "take any batch size")
    if args.tolerance is not None and not args.tolerance >= 0:
        problems.append(f"--tolerance must be 0 or more, got {args.tolerance}")
    if args.opset is not None and args.format != "onnx":
        problems.append("--opset applies to --format onnx only")
    if problems:
        raise UserError(problems)


def require_onnx() -> None:
    """The packages --format onnx needs (an optional extra), or one line saying how to install them."""
    missing = []
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"--format onnx needs {', '.join(missing)}, not installed here: {INSTALL}")


def example_inputs(config: ConfigParser, n: int, given: str | None = None) -> tuple[torch.Tensor, list[str] | None]:
    """(the first n inputs of what given names, opened as predict.py opens its --input; without it, of the run's test
    split (of its training data when it has none), built as test.py builds it; the class names predict.py would
    write for them, or None). Samples are repeated when there are fewer."""
    if given is not None:
        inputs = open_inputs(config, given, batch_size=n)
        return first_inputs(inputs, n), inputs.classes
    try:
        loader, _ = build_data(config, False, SINGLE)
    except UserError as e:
        get_logger("export").warning("No test split to take the example input from (%s); using the first batch "
                                     "of the training data instead.", "; ".join(e.problems))
        loader, _ = build_data(config, True, SINGLE)
    batch = next(iter(loader), None)
    if batch is None:
        raise UserError("the data loader gives no batch: export.py traces the model on a batch of the run's data")
    data = batch[0] if isinstance(batch, (list, tuple)) else batch
    if not isinstance(data, torch.Tensor):
        raise UserError(f"export.py exports models that take one tensor; the data loader's inputs are a "
                        f"{type(data).__name__}")
    if len(data) < n:
        data = data.repeat(math.ceil(n / len(data)), *[1] * (data.dim() - 1))
    names = config["data_loader"]["args"].get("classes") or getattr(loader, "classes", None)
    return data[:n], None if names is None else [str(name) for name in names]


def export_model(model: torch.nn.Module, x: torch.Tensor, fmt: str, out: Path, *, dynamic_batch: bool = False,
                 opset: int | None = None, metadata: dict[str, str] | None = None) -> str:
    """Write model, traced on the example batch x, to out as ONNX or a torch.export program, or its weights to a
    safetensors file, with metadata (ONNX metadata_props, torch.export extra files, safetensors metadata); returns a
    note for the report ('' or where the weights went). A model the exporter cannot trace is a UserError with its
    reason."""
    # Dim.DYNAMIC, not a named Dim: torch 2.11 refuses a named Dim's range (from 0) for a batch dimension that the
    # traced code takes as 2 or more, while DYNAMIC lets export narrow the range (the files still run a batch of 1)
    dynamic_shapes = ({0: torch.export.Dim.DYNAMIC},) if dynamic_batch else None
    external = fmt == "onnx" and weight_bytes(model) > EXTERNAL_DATA_BYTES
    metadata = metadata or {}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "safetensors":
            save_weights(model, out, metadata)
            return ""
        with torch.no_grad(), quiet():
            if fmt == "onnx":
                program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=dynamic_shapes,
                                            opset_version=opset, verbose=False)
                program.model.metadata_props.update(metadata)
                program.save(out, external_data=external)
            else:
                torch.export.save(torch.export.export(model, (x,), dynamic_shapes=dynamic_shapes), out,
                                  extra_files=metadata)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write the file: {e.strerror or e}") from None
    except Exception as e:  # whatever tracing the user's model raises: this exporter cannot take the model
        raise UserError(f"{type(model).__name__} cannot be exported to {fmt}: {exporter_reason(e)}") from None
    if external:
        return (f"; its weights ({weight_bytes(model) / 1e9:.1f} GB) are over what one ONNX file holds (2 GB): they "
                f"are in {out.name}.data beside it, keep the two together")
    return ""


def save_weights(model: torch.nn.Module, out: Path, metadata: dict[str, str]) -> None:
    """The model's weights (the inference weights trained_model loaded) to a safetensors file, on the CPU, each
    tensor its own copy (safetensors refuses tensors that share memory, as tied weights do)."""
    from safetensors.torch import save_file

    state = {name: t.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
             for name, t in model.state_dict().items()}
    save_file(state, str(out), metadata=metadata)


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


@contextlib.contextmanager
def quiet():
    """Keep what the exporters write to stderr (on failure: partial graphs and logs, dozens of lines) from the
    console, written out after a successful export only; and the exporters' info logs from it."""
    captured, root = io.StringIO(), logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the ONNX optimizer's info lines (the libraries' loggers inherit the root's level)
    try:
        with contextlib.redirect_stderr(captured):
            yield
    finally:
        root.setLevel(level)
    sys.stderr.write(captured.getvalue())


def exporter_reason(error: BaseException) -> str:
    """One line out of an exporter's exception: the innermost cause's type and first line (torch.onnx wraps
    torch.export's error in a page of advice), and the model's line that raised it when the message names it."""
    chain = [error]
    while chain[-1].__cause__ is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__)
    texts = [_ANSI.sub("", str(e)).strip() for e in chain]
    depth = max((i for i, text in enumerate(texts) if text), default=0)
    reason = f"{type(chain[depth]).__name__}: {_first_lines(texts[depth]) or '(no message)'}"
    call = _CALL.search("\n".join(texts))
    if call:
        file, line, function, code = call.groups()
        reason += f" (raised at {_relative(file)}:{line} in {function}: {code.strip()})"
    return reason


def _first_lines(text: str) -> str:
    """The first line, less torch's pointer to its logs; with the line after it when it only announces one (torch
    .export's 'Constraints violated (batch)!' is followed by the reason)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    first = _MORE.sub("", lines[0]).strip()
    if first.endswith(("!", ":")) and len(lines) > 1:
        first += " " + lines[1].removeprefix("- ")
    return first


def verify(model: torch.nn.Module, out: Path, fmt: str, batches: list[torch.Tensor],
           tolerance: float | None = None) -> dict[int, float]:
    """Run the exported file (onnxruntime on the CPU, or torch.export.load) and PyTorch on each batch and compare
    every output tensor; returns {batch size: largest absolute difference}. Above the tolerance: a UserError."""
    run, runner = (onnx_runner(out) if fmt == "onnx" else pt2_runner(out) if fmt == "pt2"
                   else weights_runner(model, out))
    differences, half = {}, False
    for x in batches:
        with torch.no_grad(), exact_float32():
            expected = tensors(model(x))
            got = runner(x)
        half |= any(t.dtype in (torch.float16, torch.bfloat16) for t in expected)
        differences[len(x)] = largest_difference(expected, got, out, len(x))
    tolerance = tolerance if tolerance is not None else HALF_TOLERANCE if half else TOLERANCE
    found = ", ".join(f"{d:.2g} on a batch of {n}" for n, d in differences.items())
    print(f"Verified with {run} against PyTorch on {batches[0].device}: largest absolute difference {found} "
          f"(tolerance {tolerance:g})")
    worst_n, worst = max(differences.items(), key=lambda item: item[1])
    if worst > tolerance:
        raise UserError(f"{out} did not verify: the largest absolute difference from PyTorch, {worst:.3g} on a "
                        f"batch of {worst_n}, is above the tolerance {tolerance:g} (the file is kept; --tolerance "
                        f"sets the limit)")
    return differences


def onnx_runner(out: Path) -> tuple[str, Callable[[torch.Tensor], list[torch.Tensor]]]:
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types for a graph it cannot load
        raise UserError(f"{out} was written but onnxruntime cannot load it: {exporter_reason(e)}") from None
    name = session.get_inputs()[0].name
    return "onnxruntime (CPUExecutionProvider)", lambda x: [
        torch.from_numpy(a) for a in session.run(None, {name: x.detach().cpu().numpy()})]


def pt2_runner(out: Path) -> tuple[str, Callable[[torch.Tensor], list[torch.Tensor]]]:
    program = torch.export.load(out).module()
    return "torch.export.load", lambda x: tensors(program(x))


def weights_runner(model: torch.nn.Module, out: Path) -> tuple[str, Callable[[torch.Tensor], list[torch.Tensor]]]:
    """A copy of the model with every weight loaded from the file (strict: each one the model has, and no other)."""
    from safetensors.torch import load_file

    loaded = copy.deepcopy(model)
    loaded.load_state_dict(load_file(str(out)))  # copied onto the model's device
    return "the model loading the file (load_state_dict, strict)", lambda x: tensors(loaded(x))


def tensors(output) -> list[torch.Tensor]:
    """Every tensor in a model's output (a tensor, or tuples, lists and dicts of them), in torch.export's order."""
    return [leaf for leaf in pytree.tree_leaves(output) if isinstance(leaf, torch.Tensor)]


def largest_difference(expected: list[torch.Tensor], got: list[torch.Tensor], out: Path, n: int) -> float:
    """The largest absolute difference over every output tensor (NaN where PyTorch has none counts as infinite)."""
    if len(expected) != len(got) or any(e.shape != g.shape for e, g in zip(expected, got)):
        shapes = [tuple(t.shape) for t in expected], [tuple(t.shape) for t in got]
        raise UserError(f"{out} did not verify: on a batch of {n} PyTorch gives outputs of shapes {shapes[0]}, the "
                        f"exported model {shapes[1]} (the file is kept)")
    worst = 0.0
    for e, g in zip(expected, got):
        a, b = e.detach().cpu().double(), g.detach().cpu().double()
        same = (a == b) | (a.isnan() & b.isnan())  # equal infinities and NaN where PyTorch has NaN agree
        difference = (a - b).abs().masked_fill(same, 0).nan_to_num(nan=math.inf)
        worst = max(worst, difference.max().item() if difference.numel() else 0.0)
    return worst


@contextlib.contextmanager
def exact_float32():
    """Full float32 matmuls and convolutions on a GPU (no TF32), so that PyTorch's outputs are a fair reference."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                         allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def _shape(x: torch.Tensor) -> str:
    return f"{tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}"


def _size(path: Path) -> str:
    size = path.stat().st_size
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


def _relative(file: str) -> str:
    try:
        return str(Path(file).resolve().relative_to(Path.cwd()))
    except ValueError:
        return file


if __name__ == "__main__":
    exit_cli(main)
