"""Evaluate a checkpoint on its data loader's test split: python test.py -r CHECKPOINT [--out FILE]."""
from __future__ import annotations

import argparse
import inspect
import os
from pathlib import Path

from utils.errors import UserError, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate a checkpoint on the test split.")
    parser.add_argument("-r", "--resume", required=True, help="checkpoint file, or run directory (its newest)")
    parser.add_argument("-d", "--device", help="GPU indices to use, e.g. 0 (sets CUDA_VISIBLE_DEVICES), or cpu")
    parser.add_argument("--out", help="where to write the results as JSON "
                                      "(default: test_results.json beside the checkpoint)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.device and args.device != "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = args.device
    from logger import setup_logging
    from parse_config import ConfigParser
    from trainer import evaluate, loss_step
    from utils.checkpoint import find_checkpoint
    from utils.registry import ARCHS, DATA_LOADERS
    from utils.util import prepare_device, write_json

    setup_logging(None)
    path, checkpoint = find_checkpoint(args.resume)
    config = ConfigParser(checkpoint["config"])
    data_loader = config.init_obj("data_loader", DATA_LOADERS, **test_split_args(DATA_LOADERS.get(
        config["data_loader"]["type"], "data_loader.type")))
    device, _ = prepare_device(min(config["n_gpu"], 1), force_cpu=args.device == "cpu")
    model = config.init_obj("arch", ARCHS)
    model.load_state_dict(checkpoint["state_dict"])
    model.to(device)
    criterion, metrics = config.build_loss(), config.build_metrics()

    results = evaluate(model, data_loader, loss_step(model, criterion), metrics, device)
    results = {**results, "n_samples": _count(data_loader), "epoch": checkpoint["epoch"], "checkpoint": str(path)}
    for key, value in results.items():
        print(f"    {key:15s}: {value}")
    out = Path(args.out) if args.out else path.with_name("test_results.json")
    try:
        write_json(results, out)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write the results: {e.strerror}") from None
    print(f"Results written to {out}")
    return results


def test_split_args(loader_cls: type) -> dict:
    """Arguments that make a data loader serve its whole test split in a fixed order."""
    params = inspect.signature(loader_cls).parameters
    if "training" not in params:
        raise UserError(f"data_loader.type {loader_cls.__name__} has no 'training' argument, so test.py cannot "
                        f"ask it for the test split; add training=True to its __init__ (False = test split)")
    wanted = {"training": False, "shuffle": False, "validation_split": 0.0}
    return {k: v for k, v in wanted.items() if k in params}


def _count(loader) -> int:
    sampler = getattr(loader, "sampler", None)
    return len(sampler) if sampler is not None else len(loader.dataset)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
