"""Evaluate a checkpoint on its data loader's test split: python test.py -r CHECKPOINT [--out FILE]."""
from __future__ import annotations

import argparse
from pathlib import Path

from utils.cli import select_devices


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate a checkpoint on the test split.")
    parser.add_argument("-r", "--resume", required=True,
                        help="checkpoint file, or run directory (its model_best.pth, else its newest)")
    parser.add_argument("--last", action="store_true",
                        help="with a run directory: the newest checkpoint rather than model_best.pth")
    parser.add_argument("-d", "--device", help="GPU indices to use, e.g. 0 (sets CUDA_VISIBLE_DEVICES), or cpu")
    parser.add_argument("--out", help="where to write the results as JSON "
                                      "(default: test_results.json beside the checkpoint)")
    return parser


if __name__ == "__main__":
    # As in train.py: --help and -d act before the imports below, which import torch.
    select_devices(build_parser().parse_args().device)

import torch  # noqa: E402  (the imports that must wait for the lines above)

from logger import setup_logging  # noqa: E402
from logger.reporter import compact  # noqa: E402
from run import build_evaluator, choose_device  # noqa: E402
from trainer.trainer import to_device  # noqa: E402
from utils.class_report import format_table, report_metrics, take_report  # noqa: E402
from utils.checkpoint import EVALUATE, checkpoint_to_use  # noqa: E402
from utils.errors import UserError, exit_cli  # noqa: E402
from utils.util import write_json  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    """Build what the checkpoint's config describes, as train.py does, load its weights and evaluate them
    through the configured trainer's evaluation (its eval_step, AMP, channels_last)."""
    args = build_parser().parse_args(argv)
    select_devices(args.device)
    setup_logging(None)
    path, checkpoint, why = checkpoint_to_use(args.resume, EVALUATE, args.last)
    print(f"Evaluating {path} ({why})")
    device, _ = choose_device(checkpoint["config"].get("n_gpu", 1), args.device, one=True)
    _, trainer = build_evaluator(checkpoint, device)  # with the weights to predict with (EMA's, if the run kept them)
    configured = trainer.metric_ftns
    trainer.metric_ftns = {**configured, **_report_metrics(trainer)}  # evaluated in the same pass
    try:
        results = trainer.evaluate(trainer.data_loader, desc="test")
    finally:
        trainer.metric_ftns = configured
    report = take_report(results, trainer.classes)
    results = {**results, "n_samples": _count(trainer.data_loader), "epoch": checkpoint["epoch"],
               "checkpoint": str(path), **({"class_report": report} if report else {})}
    for key, value in results.items():
        if key != "class_report":
            print(f"    {key:15s}: {compact(value) if isinstance(value, (list, dict)) else value}")
    if report:
        print("\n".join(["Per class:", *format_table(report["per_class"]),
                         "Confusion matrix (rows: true class, columns: predicted): in the results file"]))
    out = Path(args.out) if args.out else path.with_name("test_results.json")
    try:
        write_json(results, out)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write the results: {e.strerror}") from None
    print(f"Results written to {out}")
    return results


def _report_metrics(trainer) -> dict:
    """The per-class report's metrics when the model classifies (judged by one batch of the split), else {}."""
    eval_step = getattr(trainer, "eval_step", None)
    batch = next(iter(trainer.data_loader), None)
    if eval_step is None or batch is None:
        return {}
    data, target = to_device(batch[0], trainer.device), to_device(batch[1], trainer.device)
    trainer.model.eval()
    with torch.no_grad():
        _, output = eval_step(data, target)
    return report_metrics(output, target)


def _count(loader) -> int:
    sampler = getattr(loader, "sampler", None)
    return len(sampler) if sampler is not None else len(loader.dataset)


if __name__ == "__main__":
    exit_cli(main)
