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
LISTABLE = ["arch", "data_loader", "optimizer", "lr_scheduler", "loss", "metric", "trainer"]


def build_parser(options: list[CustomArgs]) -> argparse.ArgumentParser:
    """The train.py command line: config, resume, device, run id, custom options and overrides."""
    parser = argparse.ArgumentParser(description="Train a model from a config file.")
    parser.add_argument("-c", "--config", help="config file path (with -r: settings merged onto the checkpoint's)")
    parser.add_argument("-r", "--resume", help="checkpoint file, or run directory (its newest checkpoint)")
    parser.add_argument("-d", "--device", help="GPU indices to use, e.g. 0,1 (sets CUDA_VISIBLE_DEVICES), or cpu")
    parser.add_argument("--run-id", help="name of the run directory (default: a timestamp)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the config, build everything, print the model summary and exit")
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

import dataclasses  # noqa: E402  (the imports that must wait for the lines above)
import inspect  # noqa: E402
import itertools  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402

from base import BaseTrainer  # noqa: E402
from base.settings import TrainerSettings  # noqa: E402
from logger import get_logger, setup_logging  # noqa: E402
from logger.reporter import compact  # noqa: E402
from model.summary import layer_table  # noqa: E402
from parse_config import SCHEMA, ConfigParser, differing_keys  # noqa: E402
from trainer.checks import check_first_batch  # noqa: E402
from trainer.lr_finder import find_lr, finder_options  # noqa: E402
from utils import distributed  # noqa: E402
from utils.checkpoint import ModelWeights, RunDirs, find_checkpoint, inference_weights, unwrap  # noqa: E402
from utils.distributed import SINGLE, Dist  # noqa: E402
from utils.errors import UserError, exit_cli  # noqa: E402
from utils.interrupt import StopTraining  # noqa: E402
from utils.params import parameter_groups  # noqa: E402
from utils.registry import ARCHS, DATA_LOADERS, LR_SCHEDULERS, OPTIMIZERS, REGISTRIES, TRAINERS  # noqa: E402
from utils.schedule import LRSchedule  # noqa: E402
from utils.util import prepare_device, seed_everything  # noqa: E402

_DEFAULTS = {field.name: field.default for field in dataclasses.fields(TrainerSettings)}
DIST_DEFAULTS = (_DEFAULTS["dist_backend"], _DEFAULTS["dist_timeout"])  # the process group's start, before -r


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
        raise UserError(f"--fast-dev-run checks a config from scratch; leave out {'-r' if args.resume else '--dry-run'}")
    # Under torchrun the process group starts before -r is read (only one machine may hold the run), with the
    # default backend and timeout; distributed.init restarts it if the config names others.
    dist = distributed.init(*DIST_DEFAULTS)
    try:
        finder = finder_options(args, sys.argv[1:] if argv is None else argv, dist)  # None without --find-lr
        config, checkpoint, dist = load_config(args, dist)
        if args.fast_dev_run:
            config["trainer"].update(FAST_DEV_RUN)  # one epoch of one training batch and one validation batch
        settings = config.settings()
        dist = distributed.init(settings.dist_backend, settings.dist_timeout, main=dist.main)
        seed_everything(config["seed"])
        trainer = build(config, *choose_device(config["n_gpu"], args.device, dist), dist)
        check_first_batch(trainer)  # data that does not fit the model: one error, before anything is written
        if args.dry_run:
            print_summary(trainer)
            return
        if args.fast_dev_run:
            fast_dev_run(trainer, config)
            return
        if finder is not None:  # a learning-rate sweep instead of a run: only the finder's results are written
            find_lr(trainer, finder, config["name"])
            return
        run = open_run(config, trainer, dist)
        if checkpoint is not None:
            resume(trainer, checkpoint, config)
        train(trainer, run)
    finally:
        distributed.shutdown()


FAST_DEV_RUN = {"epochs": 1, "limit_train_batches": 1, "limit_val_batches": 1, "len_epoch": None, "overfit_batches": 0,
                "val_every_steps": None, "val_every_epochs": 1, "save_every_steps": None, "max_time": None}


def fast_dev_run(trainer: BaseTrainer, config: ConfigParser) -> None:
    """Train and validate (one batch each: one_batch_each), then evaluate one batch of the test split as test.py
    would, with nothing written; the first error stops it."""
    logger = get_logger("train")
    trainer.train()  # its outputs were never opened: no run directory, checkpoint or event file
    try:
        evaluator = build(config, trainer.device, training=False)
    except UserError as e:  # a config without a test split trains fine; test.py would stop here
        logger.warning("Fast dev run: test.py could not build the test split: %s", e)
        evaluator = None
    if evaluator is not None:
        evaluator.model.load_state_dict(unwrap(trainer.model).state_dict())
        results = evaluator.evaluate(itertools.islice(evaluator.data_loader, 1), desc="test")
        logger.info("Fast dev run, one test batch: %s", ", ".join(f"{k} {compact(v)}" for k, v in results.items()))
    logger.info("Fast dev run passed: one batch each of training, validation%s ran; nothing was written.",
                " and the test split" if evaluator is not None else "")


def load_config(args: argparse.Namespace, dist: Dist = SINGLE) -> tuple[ConfigParser, dict | None, Dist]:
    """The validated config, and with -r the checkpoint it resumes (loaded here and passed on as data: the
    config object holds no tensors; config.resume is the checkpoint's path). Under torchrun the checkpoint is
    read by the lowest rank whose machine holds it and sent to the others; that rank writes the run (dist.main)."""
    path, checkpoint = None, None
    if args.resume:
        dist, (path, checkpoint) = distributed.read_on_one_rank(args.resume, find_checkpoint, dist)
    config = ConfigParser.from_args(args, OPTIONS, resume=path,
                                    checkpoint_config=checkpoint["config"] if checkpoint else None)
    return config, checkpoint, dist


def build(config: ConfigParser, device: torch.device, device_ids: list[int] = (), dist: Dist = SINGLE, *,
          training: bool = True) -> BaseTrainer:
    """The data, model, loss, metrics, optimizer, scheduler and the configured trainer, in dependency order.
    test.py builds through it too (training=False: the test split, no validation), so it evaluates exactly as
    validation does."""
    settings = config.settings()
    if not training:  # evaluation: nothing to monitor, and test.py prints only its results
        settings = dataclasses.replace(settings, monitor="off", verbosity=0)
    data_loader, valid_data_loader = build_data(config, training, dist)
    for loader in (data_loader, valid_data_loader):
        if hasattr(loader, "set_device"):  # in-memory images are converted there, after the copy
            loader.set_device(device)
    model = config.init_obj("arch", ARCHS)
    if training and config["arch"]["weights"] and config.resume is None:  # a new run starting from weights
        load_initial_weights(model, config["arch"])
    model = place_model(model, device, list(device_ids), settings, dist)
    criterion, metrics = config.build_loss(), config.build_metrics()
    optimizer = config.init_obj("optimizer", OPTIMIZERS, param_groups(model, config["optimizer"]["no_decay_bias_norm"],
                                                                      config["optimizer"]["param_groups"]))
    scheduler = config["lr_scheduler"]
    schedule = LRSchedule(config.init_obj("lr_scheduler", LR_SCHEDULERS, optimizer) if scheduler else None,
                          scheduler["interval"] if scheduler else "epoch")
    trainer_class = TRAINERS.get(settings.type, "trainer.type")
    return trainer_class(model, criterion, metrics, optimizer, settings, data_loader=data_loader,
                         valid_data_loader=valid_data_loader, lr_scheduler=schedule, device=device,
                         config=config.config, dist=dist)


def trained_model(checkpoint: dict, device: torch.device) -> tuple[ConfigParser, torch.nn.Module]:
    """(the run's config, its model) from a checkpoint alone, for inference (predict.py, export.py): the model its
    config describes, with the weights to predict with (the EMA average when the run kept one), on device, in eval
    mode; not compiled and not wrapped."""
    config = ConfigParser(checkpoint["config"])
    model = config.init_obj("arch", ARCHS)
    ModelWeights(model).load_state_dict(inference_weights(checkpoint))
    return config, model.to(device).eval()


def load_initial_weights(model: torch.nn.Module, arch: dict) -> None:
    """arch.weights into the new model, non-strict unless arch.weights_strict; the report goes to the log."""
    from utils.weights import load_weights, read_weights  # a run without arch.weights does not import it

    state, source = read_weights(arch["weights"], arch["type"])
    report = load_weights(model, state, source, strict=arch["weights_strict"], key_map=arch["weights_key_map"])
    get_logger("train").info(report.block())


def build_data(config: ConfigParser, training: bool, dist: Dist) -> tuple:
    """(training loader, validation loader or None), or (test-split loader, None); each rank's share under DDP."""
    if training:
        data_loader = config.init_obj("data_loader", DATA_LOADERS)
        record_classes(config, data_loader)
        loaders = (data_loader, data_loader.split_validation())
        overfit = config["trainer"]["overfit_batches"]
        if overfit:
            if not hasattr(data_loader, "first_batches"):
                raise UserError(f"trainer.overfit_batches: {type(data_loader).__name__} cannot serve its first batches "
                                f"alone; derive it from base.BaseDataLoader, or set trainer.overfit_batches to 0")
            loaders = data_loader.first_batches(overfit)
    else:
        loader_class = DATA_LOADERS.get(config["data_loader"]["type"], "data_loader.type")
        loaders = (config.init_obj("data_loader", DATA_LOADERS, **test_split_args(loader_class)), None)
    if dist.enabled:
        shard(loaders, dist)
    return loaders


def choose_device(n_gpu: int, flag: str | None, dist: Dist) -> tuple[torch.device, list[int]]:
    """(this process's device, GPU ids for DataParallel): under torchrun each rank's own GPU, else n_gpu's."""
    if dist.enabled:
        return distributed.device_of(dist, n_gpu), []
    return prepare_device(n_gpu, force_cpu=flag == "cpu")


def open_run(config: ConfigParser, trainer: BaseTrainer, dist: Dist) -> RunDirs:
    """The run directory (the main rank creates it, or reuses it on resume); logs, TensorBoard, metrics.jsonl
    and checkpoints go there, written by that rank only."""
    run = distributed.broadcast(config.make_run_dirs() if dist.is_main else None, src=dist.main)  # chosen once
    verbosity = config["trainer"]["verbosity"]
    setup_logging(run.log_dir if dist.is_main else None, verbosity=verbosity if dist.is_main else 0)
    get_logger("trainer", verbosity)
    if dist.is_main:
        trainer.outputs.open(run, trainer.settings)
    get_logger("train", verbosity).info("Run directory: %s (logs: %s)", run.checkpoint_dir, run.log_dir)
    return run


def train(trainer: BaseTrainer, run: RunDirs) -> None:
    """trainer.train(); stopped by a signal, say how to resume and exit with the signal's status; stopped by
    trainer.max_time, say how to resume and return (exit 0)."""
    try:
        trainer.train()
    except StopTraining as stop:
        if stop.reason == StopTraining.SIGNAL:
            get_logger("train").warning("Stopped by %s after global step %d. Resume with:\n    python train.py -r %s",
                                        signal.Signals(stop.signum).name, trainer.global_step, run.checkpoint_dir)
            raise SystemExit(stop.exit_code) from None
        # trainer.max_time: a planned stop, exit 0, so that a scheduled job can requeue itself
        get_logger("train").warning("trainer.max_time (%s) reached after global step %d; saved %s. Resume with:\n"
                                    "    python train.py -r %s", trainer.settings.max_time, trainer.global_step,
                                    stop.checkpoint, run.checkpoint_dir)


def record_classes(config: ConfigParser, data_loader) -> None:
    """Keep the loader's class names (label i = classes[i]) in the run's config when it takes them back as
    data_loader.args.classes, so that test.py and resume map labels exactly as this run does."""
    classes = getattr(data_loader, "classes", None)
    if classes is not None and "classes" in inspect.signature(type(data_loader)).parameters:
        config["data_loader"]["args"]["classes"] = list(classes)


def test_split_args(loader_class: type) -> dict:
    """Arguments that make a data loader serve its whole test split in a fixed order."""
    params = inspect.signature(loader_class).parameters
    if "training" not in params:
        raise UserError(f"data_loader.type {loader_class.__name__} has no 'training' argument, so test.py cannot "
                        f"ask it for the test split; add training=True to its __init__ (False = test split)")
    wanted = {"training": False, "shuffle": False, "validation_split": 0.0}
    return {k: v for k, v in wanted.items() if k in params}


def param_groups(model: torch.nn.Module, no_decay_bias_norm: bool, groups: list[dict] = ()) -> list:
    """The trainable parameters; with no_decay_bias_norm, 1-D ones (biases, norm weights) in a group without
    weight decay; with optimizer.param_groups entries (groups), named groups with their own options after the
    default one (utils/params.py). Parameters trainer.freeze names are in: the trainer freezes them later."""
    if groups:
        plain = unwrap(model)
        return parameter_groups(list(plain.named_parameters()), groups, no_decay_bias_norm, type(plain).__name__)
    params = [p for p in model.parameters() if p.requires_grad]
    if not no_decay_bias_norm:
        return params
    return [{"params": [p for p in params if p.ndim > 1]},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def shard(loaders, dist: Dist) -> None:
    """Give each rank its share of every batch, for training and validation."""
    for loader in loaders:
        if loader is None:
            continue
        if not hasattr(loader, "shard"):
            raise UserError(f"data_loader.type: {type(loader).__name__} cannot be split between torchrun's "
                            f"processes; derive it from base.BaseDataLoader")
        loader.shard(dist.rank, dist.world_size)


def place_model(model: torch.nn.Module, device: torch.device, device_ids: list[int], settings: TrainerSettings,
                dist: Dist) -> torch.nn.Module:
    """The model on its device (channels_last, compiled if asked), in DDP under torchrun, in DataParallel
    on several GPUs otherwise."""
    memory_format = torch.channels_last if settings.channels_last else torch.preserve_format
    model = model.to(device, memory_format=memory_format)
    if settings.compile is not False:
        model = torch.compile(model, **(settings.compile if isinstance(settings.compile, dict) else {}))
    if dist.enabled:
        if settings.sync_batchnorm:
            if device.type != "cuda":
                raise UserError("trainer.sync_batchnorm needs GPUs (torch's SyncBatchNorm does not run on the CPU); "
                                "set it to false")
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                         else None)
    return torch.nn.DataParallel(model, device_ids=device_ids) if len(device_ids) > 1 else model


def resume(trainer: BaseTrainer, checkpoint: dict, config: ConfigParser) -> None:
    """Load the checkpoint into the trainer, saying what differs from the config it was trained with."""
    logger = get_logger("train")
    old = checkpoint["config"]
    changed = differing_keys(old, config.config, ("arch", "data_loader", "seed"))
    if changed:
        logger.warning("Resuming with settings that differ from the checkpoint's: %s", ", ".join(changed))
    # a changed grouping (or a group's options, which the saved state would override) starts the optimizer afresh
    regrouped = [key for key in ("type", "param_groups", "no_decay_bias_norm")
                 if old["optimizer"].get(key, SCHEMA["optimizer"][key][1]) != config["optimizer"][key]]
    same_optimizer = not regrouped
    if not same_optimizer:
        logger.warning("%s %s from the checkpoint's%s; its optimizer state is not loaded.",
                       ", ".join(f"optimizer.{key}" for key in regrouped), "differ" if regrouped[1:] else "differs",
                       f" ({old['optimizer']['type']})" if "type" in regrouped else "")
    trainer.load_state_dict(checkpoint, load_optimizer=same_optimizer)
    new_lr, old_lr = config["optimizer"]["args"].get("lr"), old["optimizer"]["args"].get("lr")
    if same_optimizer and new_lr is not None and new_lr != old_lr:
        trainer.schedule.set_lr(new_lr)
        logger.info("Learning rate changed from %s to %s for the resumed run.", old_lr, new_lr)
    read_by = f" (read by rank {trainer.dist.main}, sent to the others)" if trainer.dist.enabled else ""
    logger.info("Resumed from %s%s: continuing at epoch %d of %d.", config.resume, read_by, trainer.start_epoch,
                trainer.epochs)


def print_summary(trainer: BaseTrainer) -> None:
    """The layer table for two samples of the data loader: shapes, parameters and their share."""
    data, _ = next(iter(trainer.data_loader))
    print(layer_table(unwrap(trainer.model), input_data=data[:2].to(trainer.device)))
    print("Config is valid; everything was built. Dry run: nothing was trained or written.")


if __name__ == "__main__":
    exit_cli(main)
