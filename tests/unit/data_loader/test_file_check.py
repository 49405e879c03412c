"""Tests for data_loader/file_check.py: the cheap check of image files finds what reading them for training would
fail on (empty, not an image, cut short), without decoding them, and the image loaders stop at the start naming them
all, or leave them out with skip_unreadable."""
from __future__ import annotations

import io
import logging

import numpy as np
import pytest

from data_loader.data_loaders import ImageCsvDataLoader, ImageFolderDataLoader
from data_loader.datasets import read_image
from data_loader.file_check import image_problem, readable_samples, unreadable_images
from fake_data import write_image_folder
from utils.errors import UserError


def encoded(image_format: str, size: int = 24) -> bytes:
    from PIL import Image

    pixels = np.random.RandomState(0).randint(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


BROKEN = {  # name: (bytes, the reason's start)
    "empty.png": (lambda: b"", "empty file"),
    "text.jpg": (lambda: b"a text file, not a JPEG\n", "not an image"),
    "cut.png": (lambda: encoded("PNG")[:-200], "truncated: no PNG end chunk"),
    "cut.jpg": (lambda: encoded("JPEG")[:-200], "truncated: no JPEG end marker"),
    "cut.bmp": (lambda: encoded("BMP")[:-200], "truncated: "),
    "cut.webp": (lambda: encoded("WEBP")[:-20], ""),  # PIL's WebP reader refuses it at open already
    "header.png": (lambda: encoded("PNG")[:20], "truncated in its header"),
    "header.jpg": (lambda: encoded("JPEG")[:30], "truncated in its header"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_each_kind_of_unreadable_file_is_found_and_would_fail_to_read(tmp_path, name):
    data, reason = BROKEN[name]
    path = tmp_path / name
    path.write_bytes(data())
    assert image_problem(str(path)).startswith(reason)
    with pytest.raises(UserError, match="cannot read the image"):  # what training would have stopped on
        read_image(str(path))


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP"])
def test_complete_images_pass(tmp_path, image_format):
    path = tmp_path / f"ok.{image_format.lower()}"
    path.write_bytes(encoded(image_format))
    assert image_problem(str(path)) is None


def test_a_jpeg_with_bytes_after_its_end_marker_passes(tmp_path):
    path = tmp_path / "padded.jpg"
    path.write_bytes(encoded("JPEG") + b"\0" * 100)
    assert image_problem(str(path)) is None and read_image(str(path)).size == (24, 24)


def test_threads_give_the_same_answers_in_order(tmp_path):
    paths = []
    for i in range(200):
        path = tmp_path / f"{i}.png"
        path.write_bytes(b"" if i % 7 == 3 else encoded("PNG", 4))
        paths.append(str(path))
    expected = [(i, "empty file") for i in range(200) if i % 7 == 3]
    assert unreadable_images(paths, threads=1) == unreadable_images(paths, threads=8) == expected


def test_readable_samples_name_the_count_and_the_first_files_or_leave_them_out(tmp_path, caplog):
    samples = []
    for i in range(10):
        path = tmp_path / "a" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"" if i < 7 else encoded("PNG", 4))
        samples.append((str(path), i))
    with pytest.raises(UserError) as info:
        readable_samples(samples, False, "data_loader.args.data_dir", str(tmp_path))
    assert str(info.value) == ("data_loader.args.data_dir: 7 of the 10 image files cannot be read: a/0.png (empty "
                               "file), a/1.png (empty file), a/2.png (empty file), a/3.png (empty file), a/4.png "
                               "(empty file) and 2 more; replace or remove them, or set "
                               "data_loader.args.skip_unreadable=true to train without them")
    with caplog.at_level(logging.WARNING):
        assert readable_samples(samples, True, "data_loader.args.data_dir", str(tmp_path)) == samples[7:]
    assert "leaving out 7 of the 10 image files, which cannot be read" in caplog.text
    with pytest.raises(UserError, match="none of its 7 image files can be read"):
        readable_samples(samples[:7], True, "data_loader.args.data_dir", str(tmp_path))


def _broken_folder(root) -> None:
    write_image_folder(root, {"a": 4, "b": 4})
    (root / "a" / "empty.png").write_bytes(b"")
    (root / "b" / "text.jpg").write_text("not an image")


def test_the_image_folder_loader_stops_at_the_start_or_skips_and_counts(tmp_path):
    _broken_folder(tmp_path)
    with pytest.raises(UserError, match=r"^data_loader.args.data_dir: 2 of the 10 image files cannot be read: "
                                        r"a/empty.png \(empty file\), b/text.jpg \(not an image\);"):
        ImageFolderDataLoader(str(tmp_path), batch_size=4, validation_split=0)
    loader = ImageFolderDataLoader(str(tmp_path), batch_size=4, validation_split=0, skip_unreadable=True)
    assert loader.unreadable == 2 and len(loader.dataset) == 8 and len(loader.dataset.targets) == 8
    assert sum(len(y) for _, y in loader) == 8  # a whole epoch: nothing left to stop it


def test_the_image_csv_loader_checks_its_test_split_too(tmp_path):
    _broken_folder(tmp_path)
    rows = ["a/0.png,a", "a/empty.png,a", "b/0.png,b"]
    (tmp_path / "test.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(UserError, match=r"^data_loader.args.test_annotations_file: 1 of the 3 image files cannot be "
                                        r"read: a/empty.png \(empty file\)"):
        ImageCsvDataLoader(str(tmp_path / "test.csv"), str(tmp_path), training=False,
                           test_annotations_file=str(tmp_path / "test.csv"))
