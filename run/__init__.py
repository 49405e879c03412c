"""A run assembled below the commands: train.py, test.py, predict.py, export.py, tune.py and the benchmarks are
thin command-line layers over this package, and no command imports another.

    devices.py   choose_device: the one device chooser (torchrun ranks, n_gpu, -d cpu, one GPU for inference)
    data.py      build_data: training and validation loaders, or the test split; each rank's share
    model.py     build_model, place_model (device, activation checkpointing, compile, DDP/DataParallel),
                 trained_model (from a checkpoint)
    build.py     build_trainer: data, model, loss, metrics, optimizer, schedule, trainer; build_evaluator
    artifact.py  artifact_metadata: what an exported file carries (preprocessing, class names, arch)
    inputs.py    open_inputs: what --input names (the test split, or files through the loader's inference_source)
    training.py  load_config (with -r), finished, assemble (seeded, built, checked), open_run, resume, fast_dev_run,
                 removed_if_it_fails_at_start (no run directory left by a failed start)
    manifest.py  open_manifest: what run.json records of a start (command, git state, software, data fingerprint)

Importing it imports parse_config, which registers the user's models, losses, metrics, data loaders and trainers.
"""
from run.artifact import artifact_metadata
from run.build import build_evaluator, build_trainer, param_groups
from run.data import build_data, build_test_split, whole_split_args
from run.devices import choose_device
from run.inputs import Inputs, first_inputs, open_inputs
from run.model import build_model, load_trained_weights, place_model, trained_model
from run.training import (AUTO, DIST_DEFAULTS, FAST_DEV_RUN, assemble, fast_dev_run, finished, load_config,
                          open_run, removed_if_it_fails_at_start, resume)

__all__ = ["AUTO", "DIST_DEFAULTS", "FAST_DEV_RUN", "Inputs", "artifact_metadata", "assemble", "build_data",
           "build_evaluator", "build_model", "build_test_split", "build_trainer", "choose_device", "fast_dev_run",
           "finished", "first_inputs", "load_config", "load_trained_weights", "open_inputs", "open_run", "param_groups",
           "place_model", "removed_if_it_fails_at_start", "resume", "trained_model", "whole_split_args"]
