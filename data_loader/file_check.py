"""The cheap check of image files before training: each file's size, its header (PIL's Image.open, which decodes no
pixels) and, where the format has one, its end marker, so that an empty, truncated or non-image file is found at the
start, every one at once, rather than stopping an epoch when its turn comes. It reads a few KiB a file, in threads.

Unreadable means what reading the image for training would fail on: an empty file, a file that is not an image PIL
can open (a text file named .jpg, an unknown format), a header PIL refuses (an image too large: a decompression
bomb), and a file cut short (a PNG without its IEND chunk, a JPEG without its end-of-image marker, a BMP or WebP
shorter than its header says). Damage inside the pixel data of a complete file is not looked for: only decoding
every image would find it (read_image then names the file when its turn comes).
"""
from __future__ import annotations

import os
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from logger import get_logger
from utils.errors import UserError

TAIL = 1024  # bytes read at a file's end for its end marker (a JPEG may carry padding after it)
SHOWN = 5  # names shown in the error or the warning
THREADS = min(16, 4 * (os.cpu_count() or 1))  # a cold disk keeps them waiting; a warm one leaves PIL (GIL-bound)


def image_problem(path: str) -> str | None:
    """Why the image file at path cannot be read (a few words), or None when the cheap check finds nothing."""
    from PIL import Image, UnidentifiedImageError

    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file"
        with Image.open(path) as image:
            image_format = image.format
            with open(path, "rb") as f:
                head = f.read(16)
                f.seek(max(0, size - TAIL))
                tail = f.read()
    except UnidentifiedImageError:
        return "not an image"
    except Image.DecompressionBombError as e:
        return f"too large: {e}"
    except (OSError, ValueError, SyntaxError, struct.error) as e:  # what PIL's header parsers raise on damage
        return "truncated in its header" if "truncat" in str(e).lower() else f"damaged header: {e}"
    return _cut_short(image_format, head, tail, size)


def _cut_short(image_format: str | None, head: bytes, tail: bytes, size: int) -> str | None:
    """'truncated: ...' when a file of size bytes lacks its format's end (tail: its last bytes), else None."""
    if image_format == "PNG" and b"IEND\xaeB`\x82" not in tail:
        return "truncated: no PNG end chunk (IEND)"
    if image_format in ("JPEG", "MPO") and b"\xff\xd9" not in tail:
        return "truncated: no JPEG end marker"
    if image_format == "BMP" and len(head) >= 6:
        declared = struct.unpack("<I", head[2:6])[0]  # bfSize; some writers leave it 0
        if declared > size:
            return f"truncated: {size} of the {declared} bytes its header declares"
    if image_format == "WEBP" and len(head) >= 8:
        declared = struct.unpack("<I", head[4:8])[0] + 8  # the RIFF chunk's size and its 8-byte header
        if declared > size:
            return f"truncated: {size} of the {declared} bytes its header declares"
    return None


def unreadable_images(paths: Sequence[str], threads: int = THREADS) -> list[tuple[int, str]]:
    """(index, reason) of each of paths that the cheap check finds unreadable, in order."""
    if threads <= 1 or len(paths) < 64:
        problems = map(image_problem, paths)
    else:
        with ThreadPoolExecutor(threads) as pool:
            problems = list(pool.map(image_problem, paths, chunksize=256))
    return [(i, problem) for i, problem in enumerate(problems) if problem is not None]


def readable_samples(samples: list[tuple[str, int]], skip: bool, where: str, root: str) -> list[tuple[str, int]]:
    """samples ((image path, label) pairs) without the unreadable ones: with skip, left out with a warning naming
    the count and the first of them; without, a UserError naming them and both fixes. where: the config key of the
    files (data_loader.args.data_dir); root: the folder names are shown relative to."""
    bad = unreadable_images([path for path, _ in samples])
    if not bad:
        return samples
    shown = ", ".join(f"{_relative(samples[i][0], root)} ({reason})" for i, reason in bad[:SHOWN])
    more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
    counted = f"{len(bad)} of the {len(samples)} image files"
    if not skip:
        raise UserError(f"{where}: {counted} cannot be read: {shown}{more}; replace or remove them, or set "
                        f"data_loader.args.skip_unreadable=true to train without them")
    if len(bad) == len(samples):
        raise UserError(f"{where}: none of its {len(samples)} image files can be read: {shown}{more}")
    get_logger("data").warning("%s: leaving out %s, which cannot be read (data_loader.args.skip_unreadable): %s%s",
                               where, counted, shown, more)
    left_out = {i for i, _ in bad}
    return [sample for i, sample in enumerate(samples) if i not in left_out]


def _relative(path: str, root: str) -> str:
    relative = os.path.relpath(path, root)
    return path if relative.startswith("..") else relative
