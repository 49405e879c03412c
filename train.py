"""Train a model described by a config: python train.py -c config.json [key.path=value ...]."""
from __future__ import annotations

import argparse
import collections
import inspect
import os
import signal

from utils.errors import run_cli

# Custom CLI options, as in the original template: add your own (flags, type, config target).
CustomArgs = collections.namedtuple("CustomArgs", "flags type target")
OPTIONS = [
    CustomArgs(["--lr", "--learning_rate"], type=float, target="optimizer;args;lr"),
    CustomArgs(["--bs", "--batch_size"], type=int, target="data_loader;args;batch_size"),
]


def build_parser(options: list[CustomArgs]) -> argparse.ArgumentParser:
    """The train.py command line: config, resume, device, run id, custom options and overrides."""
    parser = argparse.ArgumentParser(description="Train a model from a config file.")
    parser.add_argument("-c", "--config", help="config file path (with -r: settings merged onto the checkpoint's)")
    parser.add_argument("-r", "--resume", help="checkpoint file, or run directory (its newest checkpoint)")
    parser.add_argument("-d", "--device", help="GPU indices to use, e.g. 0,1 (sets CUDA_VISIBLE_DEVICES), or cpu")
    parser.add_argument("--run-id", help="name of the run directory (default: a timestamp)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the config, build everything, print the model summary and exit")
    parser.add_argument("--list", metavar="KIND", choices=["arch", "data_loader", "optimizer", "lr_scheduler",
                                                           "loss", "metric"],
                        help="print the names usable for KIND and exit")
    for opt in options:
        parser.add_argument(*opt.flags, type=opt.type, help=f"sets {opt.target.replace(';', '.')}")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="override a config value (JSON, else a string); +key.path=value adds a new key")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser(OPTIONS).parse_intermixed_args(argv)
    if args.device and args.device != "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = args.device  # before anything initialises CUDA
    from logger import setup_logging
    from parse_config import ConfigParser
    from utils import distributed
    from utils.registry import REGISTRIES, load_user_modules

    setup_logging(None)  # console only until the run directory exists (and no handler of an earlier run)
    if args.list:
        load_user_modules()
        print("\n".join(REGISTRIES[args.list].names()))
        return
    config = ConfigParser.from_args(args, OPTIONS)
    cfg_trainer = config["trainer"]
    ctx = distributed.init(cfg_trainer["dist_backend"], cfg_trainer["dist_timeout"])
    try:
        _train(args, config, ctx)
    finally:
        distributed.shutdown()


def _train(args, config, ctx) -> None:
    """Build everything in dependency order, then train (under torchrun: this rank's part)."""
    from logger import MetricsFile, get_logger, make_writer, setup_logging
    from trainer import Trainer
    from trainer.trainer import logged_keys
    from utils import distributed
    from utils.checkpoint import Checkpointer
    from utils.interrupt import TrainingInterrupted
    from utils.monitor import Monitor
    from utils.registry import ARCHS, DATA_LOADERS, LR_SCHEDULERS, OPTIMIZERS
    from utils.util import prepare_device, seed_everything

    cfg_trainer = config["trainer"]
    seed_everything(config["seed"])
    data_loader = config.init_obj("data_loader", DATA_LOADERS)
    record_classes(config, data_loader)
    valid_data_loader = data_loader.split_validation()
    if ctx.enabled:
        device, device_ids = distributed.device_of(ctx, config["n_gpu"]), []
        shard(data_loader, valid_data_loader, ctx)
    else:
        device, device_ids = prepare_device(config["n_gpu"], force_cpu=args.device == "cpu")
    model = place_model(config.init_obj("arch", ARCHS), device, device_ids, cfg_trainer, ctx)
    criterion, metrics = config.build_loss(), config.build_metrics()
    optimizer = config.init_obj("optimizer", OPTIMIZERS, param_groups(model, config["optimizer"]["no_decay_bias_norm"]))
    lr_scheduler = config.init_obj("lr_scheduler", LR_SCHEDULERS, optimizer) if config["lr_scheduler"] else None
    monitor = Monitor(cfg_trainer["monitor"], cfg_trainer["early_stop"])
    monitor.check_keys(logged_keys(metrics, valid_data_loader is not None))
    if args.dry_run:
        print_summary(model, data_loader, device)
        return

    run = distributed.broadcast(config.make_run_dirs() if ctx.is_main else None)  # chosen once, by rank 0
    writes = ctx.is_main  # only rank 0 writes logs, event files, metrics.jsonl and checkpoints
    setup_logging(run.log_dir if writes else None, verbosity=cfg_trainer["verbosity"] if writes else 0)
    logger = get_logger("train", cfg_trainer["verbosity"])
    logger.info("Run directory: %s (logs: %s)", run.checkpoint_dir, run.log_dir)
    trainer = Trainer(
        model, criterion, metrics, optimizer, device=device, epochs=cfg_trainer["epochs"],
        data_loader=data_loader, valid_data_loader=valid_data_loader, lr_scheduler=lr_scheduler,
        scheduler_interval=(config["lr_scheduler"] or {}).get("interval", "epoch"),
        len_epoch=cfg_trainer["len_epoch"], log_step=cfg_trainer["log_step"], monitor=monitor,
        checkpointer=Checkpointer(run.checkpoint_dir, cfg_trainer["save_period"], cfg_trainer["keep_last"])
        if writes else None,
        save_every_steps=cfg_trainer["save_every_steps"], nonfinite_loss=cfg_trainer["nonfinite_loss"],
        writer=make_writer(run.log_dir, cfg_trainer["tensorboard"] and writes),
        metrics_file=MetricsFile(run.log_dir / "metrics.jsonl" if writes else None), config=config.config,
        channels_last=cfg_trainer["channels_last"], amp=cfg_trainer["amp"],
        accumulate_steps=cfg_trainer["accumulate_steps"], clip_grad_norm=cfg_trainer["clip_grad_norm"],
        progress=cfg_trainer["verbosity"] > 0 and writes, log_images=cfg_trainer["log_images"],
        log_histograms=cfg_trainer["log_histograms"], logger=get_logger("trainer", cfg_trainer["verbosity"]),
        dist=ctx,
    )
    if config.checkpoint is not None:
        resume(trainer, config, logger)
    try:
        trainer.train()
    except TrainingInterrupted as stop:
        logger.warning("Stopped by %s after global step %d. Resume with:\n    python train.py -r %s",
                       signal.Signals(stop.signum).name, trainer.global_step, run.checkpoint_dir)
        raise SystemExit(stop.exit_code) from None


def record_classes(config, data_loader) -> None:
    """Keep the loader's class names (label i = classes[i]) in the run's config when it takes them back as
    data_loader.args.classes, so that test.py and resume map labels exactly as this run does."""
    classes = getattr(data_loader, "classes", None)
    if classes is not None and "classes" in inspect.signature(type(data_loader)).parameters:
        config["data_loader"]["args"]["classes"] = list(classes)


def param_groups(model, no_decay_bias_norm: bool) -> list:
    """The trainable parameters; with no_decay_bias_norm, 1-D ones (biases, norm weights) in a group without
    weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not no_decay_bias_norm:
        return params
    return [{"params": [p for p in params if p.ndim > 1]},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def shard(data_loader, valid_data_loader, ctx) -> None:
    """Give each rank its share of every batch, for training and validation."""
    from utils.errors import UserError

    for loader in (data_loader, valid_data_loader):
        if loader is None:
            continue
        if not hasattr(loader, "shard"):
            raise UserError(f"data_loader.type: {type(loader).__name__} cannot be split between torchrun's "
                            f"processes; derive it from base.BaseDataLoader")
        loader.shard(ctx.rank, ctx.world_size)


def place_model(model, device, device_ids: list[int], cfg_trainer: dict, ctx):
    """The model on its device (channels_last, compiled if asked), in DDP under torchrun, in DataParallel
    on several GPUs otherwise."""
    import torch

    from utils.errors import UserError

    model = model.to(device, memory_format=torch.channels_last) if cfg_trainer["channels_last"] else model.to(device)
    if cfg_trainer["compile"] is not False:
        model = torch.compile(model, **(cfg_trainer["compile"] if isinstance(cfg_trainer["compile"], dict) else {}))
    if ctx.enabled:
        if cfg_trainer["sync_batchnorm"]:
            if device.type != "cuda":
                raise UserError("trainer.sync_batchnorm needs GPUs (torch's SyncBatchNorm does not run on the CPU); "
                                "set it to false")
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                         else None)
    return torch.nn.DataParallel(model, device_ids=device_ids) if len(device_ids) > 1 else model


def resume(trainer, config, logger) -> None:
    """Load the checkpoint into the trainer, saying what differs from the config it was trained with."""
    from parse_config import differing_keys

    old = config.checkpoint["config"]
    changed = differing_keys(old, config.config, ("arch", "data_loader", "seed"))
    if changed:
        logger.warning("Resuming with settings that differ from the checkpoint's: %s", ", ".join(changed))
    same_optimizer = old["optimizer"]["type"] == config["optimizer"]["type"]
    if not same_optimizer:
        logger.warning("optimizer.type differs from the checkpoint's (%s); its optimizer state is not loaded.",
                       old["optimizer"]["type"])
    trainer.load_state_dict(config.checkpoint, load_optimizer=same_optimizer)
    new_lr, old_lr = config["optimizer"]["args"].get("lr"), old["optimizer"]["args"].get("lr")
    if same_optimizer and new_lr is not None and new_lr != old_lr:
        trainer.set_lr(new_lr)
        logger.info("Learning rate changed from %s to %s for the resumed run.", old_lr, new_lr)
    logger.info("Resumed from %s: continuing at epoch %d of %d.", config.resume, trainer.start_epoch, trainer.epochs)


def print_summary(model, data_loader, device) -> None:
    """The layer table for two samples of the data loader: shapes, parameters and their share."""
    from model.summary import layer_table
    from utils.checkpoint import unwrap

    data, _ = next(iter(data_loader))
    print(layer_table(unwrap(model), input_data=data[:2].to(device)))
    print("Config is valid; everything was built. Dry run: nothing was trained or written.")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
