"""What an exported file carries beside the model (export.py): how to prepare its inputs, the class names, the arch
and where the weights came from, as text values under fixed keys: safetensors metadata, ONNX metadata_props and
torch.export extra files alike (docs/export.md#what-an-exported-file-carries)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence


from parse_config import ConfigParser
from utils.checkpoint import averaged
from utils.registry import DATA_LOADERS

FORMAT_VERSION = 1  # of these keys; a change that a reader must know of raises it


def artifact_metadata(config: ConfigParser, checkpoint: dict, source: Path, classes: Sequence[str] | None,
                      sample_shape: Sequence[int]) -> tuple[dict[str, str], str]:
    """(the metadata, one line on what it holds for export.py's report). Every value is text, the structured ones
    JSON: "format_version", "preprocessing" (the run's data loader's description of how a file becomes a model
    input; absent when the loader gives none), "classes" (absent when the run has no class names), "arch" (its type
    and args), "input_shape" (one sample's), "weights" ("ema": the average trainer.ema kept, else "model"), "epoch"
    and "source_checkpoint"."""
    loader_class = DATA_LOADERS.get(config["data_loader"]["type"], "data_loader.type")
    preprocessing, why_not = None, f"data_loader.type {loader_class.__name__} does not describe its inputs"
    try:
        preprocessing = loader_class.preprocessing(dict(config["data_loader"]["args"]))
    except (AttributeError, ValueError) as e:  # not a BaseDataLoader; steps a description cannot hold
        why_not = why_not if isinstance(e, AttributeError) else str(e)
    metadata = {"format_version": str(FORMAT_VERSION)}
    if preprocessing is not None:
        metadata["preprocessing"] = json.dumps(preprocessing)
    if classes is not None:
        metadata["classes"] = json.dumps([str(name) for name in classes])
    arch = config["arch"]
    metadata.update(arch=json.dumps({"type": arch["type"], "args": dict(arch["args"])}),
                    input_shape=json.dumps(list(sample_shape)), weights="ema" if averaged(checkpoint) else "model",
                    epoch=str(checkpoint.get("epoch")), source_checkpoint=str(source))
    held = [f"preprocessing ({loader_class.__name__})" if preprocessing is not None else
            f"no preprocessing ({why_not})", f"{len(classes)} class names" if classes is not None else "no class names",
            f"arch {arch['type']}"]
    weights = "the EMA average (trainer.ema)" if averaged(checkpoint) else "the model's (the run kept no EMA)"
    return metadata, f"Its metadata: {', '.join(held)}; weights: {weights}"
