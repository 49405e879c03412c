"""Evaluate a checkpoint on its data loader's test split: python test.py -r CHECKPOINT [--out FILE]."""
from __future__ import annotations

import argparse
from pathlib import Path

from utils.cli import select_devices


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate a checkpoint on the test split.")
    parser.add_argument("-r", "--resume", required=True, help="checkpoint file, or run directory (its newest)")
    parser.add_argument("-d", "--device", help="GPU indices to use, e.g. 0 (sets CUDA_VISIBLE_DEVICES), or cpu")
    parser.add_argument("--out", help="where to write the results as JSON "
                                      "(default: test_results.json beside the checkpoint)")
    return parser


if __name__ == "__main__":
    # As in train.py: --help and -d act before the imports below, which import torch.
    select_devices(build_parser().parse_args().device)

from logger import setup_logging  # noqa: E402  (the imports that must wait for the lines above)
from parse_config import ConfigParser  # noqa: E402
from train import build  # noqa: E402
from utils.checkpoint import ModelWeights, find_checkpoint  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402
from utils.util import prepare_device, write_json  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    """Build what the checkpoint's config describes, as train.py does, load its weights and evaluate them
    through the configured trainer's evaluation (its eval_step, AMP, channels_last)."""
    args = build_parser().parse_args(argv)
    select_devices(args.device)
    setup_logging(None)
    path, checkpoint = find_checkpoint(args.resume)
    config = ConfigParser(checkpoint["config"])
    device, _ = prepare_device(min(config["n_gpu"], 1), force_cpu=args.device == "cpu")
    trainer = build(config, device, training=False)
    ModelWeights(trainer.model).load_state_dict(checkpoint["state_dict"])
    results = trainer.evaluate(trainer.data_loader, desc="test")
    results = {**results, "n_samples": _count(trainer.data_loader), "epoch": checkpoint["epoch"],
               "checkpoint": str(path)}
    for key, value in results.items():
        print(f"    {key:15s}: {value}")
    out = Path(args.out) if args.out else path.with_name("test_results.json")
    try:
        write_json(results, out)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write the results: {e.strerror}") from None
    print(f"Results written to {out}")
    return results


def _count(loader) -> int:
    sampler = getattr(loader, "sampler", None)
    return len(sampler) if sampler is not None else len(loader.dataset)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
