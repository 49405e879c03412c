"""Train a model described by a config: python train.py -c config.json [key.path=value ...]."""
from __future__ import annotations

import argparse
import collections

from utils.cli import select_devices

# Custom CLI options, as in the original template: add your own (flags, type, config target).
CustomArgs = collections.namedtuple("CustomArgs", "flags type target")
OPTIONS = [
    CustomArgs(["--lr", "--learning_rate"], type=float, target="optimizer;args;lr"),
    CustomArgs(["--bs", "--batch_size"], type=int, target="data_loader;args;batch_size"),
    CustomArgs(["--init-from"], type=str, target="arch;weights"),  # a new run from these weights (fine-tuning)
]
LISTABLE = ["arch", "data_loader", "optimizer", "lr_scheduler", "loss", "metric", "trainer", "logger"]


def build_parser(options: list[CustomArgs]) -> argparse.ArgumentParser:
    """The train.py command line: config, resume, device, run id, custom options and overrides."""
    parser = argparse.ArgumentParser(description="Train a model from a config file.")
    parser.add_argument("-c", "--config", action="append",
                        help="config file, JSON or YAML; give it again to merge several in order (with -r: settings "
                             "merged onto the checkpoint's)")
    parser.add_argument("-r", "--resume", help="checkpoint file, or run directory (its newest checkpoint); auto: "
                                               "with -c and --run-id, resume that run if it has a checkpoint, else "
                                               "start it")
    parser.add_argument("-d", "--device", help="GPU indices to use, e.g. 0,1 (sets CUDA_VISIBLE_DEVICES), or cpu")
    parser.add_argument("--run-id", help="name of the run directory (default: a timestamp)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the config, build everything, print the model summary and exit")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config, each value with its source (file and line, option, "
                             "override, default), and exit")
    parser.add_argument("--list", metavar="KIND", choices=LISTABLE, help="print the names usable for KIND and exit")
    parser.add_argument("--fast-dev-run", action="store_true",
                        help="train one batch, validate one batch and evaluate one test batch as test.py does; "
                             "write nothing")
    parser.add_argument("--find-lr", action="store_true",
                        help="sweep the learning rate, print a suggested one, write a plot and a CSV; train nothing")
    parser.add_argument("--lr-range", nargs=2, type=float, metavar=("MIN", "MAX"),
                        help="with --find-lr: the learning rates swept (default 1e-7 10)")
    parser.add_argument("--lr-steps", type=int, metavar="N",
                        help="with --find-lr: the steps of the sweep (default 200)")
    for opt in options:
        parser.add_argument(*opt.flags, type=opt.type, help=f"sets {opt.target.replace(';', '.')}")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="override a config value (JSON, else a string); +key.path=value adds a new key")
    return parser


if __name__ == "__main__":
    # Run as a script, --help and -d act before the imports below: those import torch, which --help should not
    # wait for and which must not start CUDA before CUDA_VISIBLE_DEVICES is set.
    select_devices(build_parser(OPTIONS).parse_intermixed_args().device)

import signal  # noqa: E402  (the imports that must wait for the lines above)
import sys  # noqa: E402

from base import BaseTrainer  # noqa: E402
from logger import get_logger, setup_logging  # noqa: E402
from logger.reporter import compact  # noqa: E402
from model.summary import layer_table  # noqa: E402
from run import (AUTO, DIST_DEFAULTS, FAST_DEV_RUN, assemble, fast_dev_run, finished, load_config,  # noqa: E402
                 open_run, removed_if_it_fails_at_start, resume)
from trainer.lr_finder import find_lr, finder_options  # noqa: E402
from utils import distributed  # noqa: E402
from utils.checkpoint import unwrap  # noqa: E402
from utils.errors import UserError, exit_cli  # noqa: E402
from utils.interrupt import StopTraining  # noqa: E402
from utils.registry import REGISTRIES  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    """Parse, build everything in dependency order, open the run directory, resume if asked, train."""
    args = build_parser(OPTIONS).parse_intermixed_args(argv)
    select_devices(args.device)
    setup_logging(None)  # console only until the run directory exists (and no handler of an earlier run)
    if args.list:
        print("\n".join(REGISTRIES[args.list].names()))
        return
    if args.resume and args.init_from:
        raise UserError("--init-from starts a new run from weights; -r continues a run: give one of them")
    if args.fast_dev_run and (args.resume or args.dry_run):
        extra = "-r" if args.resume else "--dry-run"
        raise UserError(f"--fast-dev-run checks a config from scratch; leave out {extra}")
    # Under torchrun the process group starts before -r is read (only one machine may hold the run), with the
    # default backend and timeout; distributed.init restarts it if the config names others.
    dist = distributed.init(*DIST_DEFAULTS)
    try:
        finder = finder_options(args, sys.argv[1:] if argv is None else argv, dist)  # None without --find-lr
        config, checkpoint, dist = load_config(args, OPTIONS, dist)
        if args.print_config:
            if dist.is_main:
                print(config.describe())
            return
        done = finished(checkpoint, config) if checkpoint is not None and not args.dry_run else None
        if done:  # status 0: a job that requeues itself re-runs its command after the run has ended
            if dist.is_main:
                print(done)
            return
        if args.fast_dev_run:
            config["trainer"].update(FAST_DEV_RUN)  # one epoch of one training batch and one validation batch
        trainer, dist = assemble(config, args.device, dist)  # seeded, built, its first batch checked
        if args.dry_run:
            print_summary(trainer)
            return
        if args.fast_dev_run:
            fast_dev_run(trainer, config)
            return
        if finder is not None:  # a learning-rate sweep instead of a run: only the finder's results are written
            find_lr(trainer, finder, config["name"])
            return
        # a failed start leaves no directory; one that an earlier --resume auto start left (no checkpoint) is kept
        earlier = args.resume == AUTO and config.named_run_dirs().checkpoint_dir.is_dir()
        command = ["train.py", *(sys.argv[1:] if argv is None else argv)]  # for run.json
        with (open_run(config, trainer, dist, command) as run,
              removed_if_it_fails_at_start(run, trainer, new=checkpoint is None and not earlier)):
            if checkpoint is not None:
                resume(trainer, checkpoint, config)
            train(trainer, "the same command" if args.resume == AUTO else f"python train.py -r {run.checkpoint_dir}")
    finally:
        distributed.shutdown()


def train(trainer: BaseTrainer, resume_with: str) -> None:
    """trainer.train(); stopped by a signal, say how to resume (resume_with: the command) and exit with the signal's
    status; stopped by trainer.max_time, say how to resume and return (exit 0)."""
    logger = get_logger("train")
    say = logger.warning if trainer.dist.is_main else logger.info  # once for the job (other ranks log quietly)
    try:
        trainer.train()
    except StopTraining as stop:
        if stop.reason == StopTraining.SIGNAL:
            say("Stopped by %s after global step %d. Resume with:\n    %s", signal.Signals(stop.signum).name,
                trainer.global_step, resume_with)
            raise SystemExit(stop.exit_code) from None
        # trainer.max_time: a planned stop, exit 0, so that a scheduled job can requeue itself
        say("trainer.max_time (%s) reached after global step %d; saved %s. Resume with:\n    %s",
            trainer.settings.max_time, trainer.global_step, stop.checkpoint, resume_with)


def print_summary(trainer: BaseTrainer) -> None:
    """The layer table for two samples of the data loader: shapes, parameters and their share."""
    data, _ = next(iter(trainer.data_loader))
    print(layer_table(unwrap(trainer.model), input_data=data[:2].to(trainer.device)))
    print("Config is valid; everything was built. Dry run: nothing was trained or written.")


if __name__ == "__main__":
    exit_cli(main)
