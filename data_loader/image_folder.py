"""torchvision's ImageFolder with a class order that can be given (saved from training)."""
from __future__ import annotations

import os
from typing import Callable, Sequence

from torchvision.datasets import ImageFolder

from utils.errors import UserError


class ClassFolder(ImageFolder):
    """ImageFolder whose classes are the given names in that order, or else the sorted folder names."""

    def __init__(self, root: str, classes: Sequence[str] | None, **kwargs):
        self.given_classes = None if classes is None else list(classes)
        super().__init__(root, **kwargs)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        if self.given_classes is None:
            return super().find_classes(directory)
        return self.given_classes, {name: i for i, name in enumerate(self.given_classes)}


def image_folder(root: str, classes: Sequence[str] | None, loader: Callable, where: str) -> ClassFolder:
    """The images under root/<class name>/; with classes given, a class may have no folder but every folder
    must be a class."""
    if not os.path.isdir(root):
        raise UserError(f"{where}: no directory {root} (relative paths are from the working directory)")
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if classes is not None and (unknown := sorted(set(folders) - set(classes))):
        raise UserError(f"{where}: folder {os.path.join(root, unknown[0])} is not one of the classes in "
                        f"data_loader.args.classes {list(classes)}")
    try:
        return ClassFolder(root, classes, loader=loader, allow_empty=classes is not None)
    except FileNotFoundError as e:
        raise UserError(f"{where}: {e}; expected {root}/<class name>/<image file>") from None
