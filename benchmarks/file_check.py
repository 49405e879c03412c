"""The cost of the image-file check that image loaders run before training (data_loader/file_check.py), on a
generated folder: files per second of the check in one thread and in its threads, against decoding every image
(what a full check would cost: measured on a part and scaled).

The folder holds --files images in <class>/<n>.<suffix> (half JPEG, half PNG, --size pixels square, from a few
dozen distinct images written as bytes, so that writing 100,000 of them takes seconds); the page cache holds them
(a warm disk: a cold one adds its read of a few KiB a file).

    python benchmarks/file_check.py [--files 100000] [--size 64] [--decode 2000]
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from data_loader.datasets import read_image  # noqa: E402
from data_loader.file_check import THREADS, unreadable_images  # noqa: E402


def write_folder(root: Path, files: int, size: int) -> list[str]:
    """files image files under root (10 class folders), half JPEG and half PNG; their paths."""
    from PIL import Image

    rng = np.random.RandomState(0)
    encoded = []
    for i in range(32):
        pixels = rng.randint(0, 256, (size, size, 3), dtype=np.uint8)
        pixels = (pixels // 32 * 32).astype(np.uint8)  # fewer colours: photograph-like file sizes
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG" if i % 2 else "PNG")
        encoded.append((".jpg" if i % 2 else ".png", buffer.getvalue()))
    for c in range(10):
        (root / f"class{c}").mkdir(parents=True)
    paths = []
    for n in range(files):
        suffix, data = encoded[n % len(encoded)]
        path = root / f"class{n % 10}" / f"{n}{suffix}"
        path.write_bytes(data)
        paths.append(str(path))
    return paths


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--decode", type=int, default=2000, help="files decoded for the full-decode estimate")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_folder(Path(tmp), args.files, args.size)
        mib = sum(os.path.getsize(p) for p in paths[:64]) / 64 * len(paths) / 2**20
        print(f"{len(paths)} files ({mib:.0f} MiB), {os.cpu_count()} CPU cores")
        unreadable_images(paths[:1000])  # PIL's plugins imported, the cache warm
        for threads in (1, THREADS):
            seconds = timed(lambda: unreadable_images(paths, threads=threads))
            print(f"check, {threads} thread(s): {seconds:.1f} s, {len(paths) / seconds:,.0f} files/s")
        part = paths[:args.decode]
        seconds = timed(lambda: [read_image(p) for p in part]) * len(paths) / len(part)
        print(f"decoding every image (estimated from {len(part)}), 1 thread: {seconds:.1f} s, "
              f"{len(paths) / seconds:,.0f} files/s")


if __name__ == "__main__":
    main()
