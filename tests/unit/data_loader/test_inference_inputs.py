"""Each data loader's inference_source (data_loader/inputs.py's helpers under it): an image file becomes the very
input the loader serves for evaluation (the files' loaders, MNIST sliced and per sample, CIFAR), the run's own CSV and
a CSV of files relative to itself, the loaders that take no image files and the BaseDataLoader default say what to
give, a user's loader gets support from a few lines, and the lists, labels, batches and arrays around them."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from base import BaseDataLoader
from data_loader.arrays import array_batches, read_arrays
from data_loader.data_loaders import (ArrayDataLoader, Cifar10DataLoader, DigitsDataLoader, ImageCsvDataLoader,
                                      ImageFolderDataLoader, MnistDataLoader)
from data_loader.inputs import (ImageFiles, InferenceSource, Unreadable, collate_inputs, folder_labels, image_files,
                                image_files_source, image_reader, listed_images, listed_paths, with_defaults)
from data_loader.transforms import image_pipeline
from fake_data import write_cifar, write_image, write_image_csv, write_image_folder, write_mnist
from utils.errors import UserError

CROP = [{"type": "Resize", "args": {"size": 10}}, {"type": "CenterCrop", "args": {"size": 8}}]


def served(source: InferenceSource, batch_size: int = 2) -> torch.Tensor:
    """Every model input of the source, in order, as one tensor (batches of batch_size: their edges do not matter)."""
    batches = list(source.batches(batch_size, 0))
    assert all(not b.skipped for b in batches) and [i for b in batches for i in b.indices] == list(range(len(source)))
    return torch.cat([b.inputs for b in batches])


def sample(loader, i: int) -> torch.Tensor:
    """The loader's i-th test sample, as test.py gets it."""
    return loader.dataset[i][0]


@pytest.mark.parametrize("args", [{}, {"eval_transforms": CROP, "transforms": ["RandomHorizontalFlip"]},
                                  {"mode": "L", "mean": [0.5], "std": [0.25], "classes": ["a", "b"]}],
                         ids=["default", "crop", "grey"])
def test_an_image_folder_file_equals_the_loaders_test_sample(tmp_path, args):
    write_image_folder(tmp_path / "test", {"a": 2, "b": 1}, size=(12, 9))
    loader = ImageFolderDataLoader(str(tmp_path / "train"), training=False, test_dir=str(tmp_path / "test"),
                                   validation_split=0, **args)
    source = ImageFolderDataLoader.inference_source(str(tmp_path / "test"), {"data_dir": "unused", **args})
    assert source.key == "file" and list(source.names) == ["a/0.png", "a/1.png", "b/0.png"]
    assert [str(tmp_path / "test" / n) for n in source.names] == [p for p, _ in loader.dataset.samples]
    assert torch.equal(served(source), torch.stack([sample(loader, i) for i in range(3)]))
    assert source.labels == ([0, 0, 1] if "classes" in args else None)  # the folders are labels of named classes
    assert source.classes == args.get("classes")


def image_csv_args(tmp_path) -> dict:
    return {"annotations_file": "unused", "img_dir": str(tmp_path / "img"), "eval_transforms": CROP,
            "mean": [0.1, 0.2, 0.3], "std": [0.3, 0.2, 0.1], "classes": ["cat", "dog"]}


def test_the_runs_own_csv_gives_the_image_csv_loaders_test_samples(tmp_path):
    # The loader's format: names relative to img_dir, the CSV elsewhere (it lies beside no image).
    (tmp_path / "lists").mkdir()
    names = write_image_csv(tmp_path / "img", tmp_path / "lists" / "test.csv", ["cat", "dog", "dog"])
    args = image_csv_args(tmp_path)
    loader = ImageCsvDataLoader(**args, training=False, test_annotations_file=str(tmp_path / "lists" / "test.csv"),
                                validation_split=0)
    source = ImageCsvDataLoader.inference_source(str(tmp_path / "lists" / "test.csv"), args)
    assert list(source.names) == names and source.labels == [0, 1, 1] and source.classes == ["cat", "dog"]
    assert torch.equal(served(source), torch.stack([sample(loader, i) for i in range(3)]))


def test_a_csv_of_files_relative_to_itself_or_absolute_and_img_dir_first(tmp_path):
    names = write_image_csv(tmp_path / "img", tmp_path / "test.csv", ["cat", "dog", "cat"])
    args = image_csv_args(tmp_path)
    loader = ImageCsvDataLoader(**args, training=False, test_annotations_file=str(tmp_path / "test.csv"),
                                validation_split=0)
    new = tmp_path / "new"
    (new / "sub").mkdir(parents=True)
    shutil.copy(tmp_path / "img" / names[0], new / "sub" / "first.png")
    shutil.copy(tmp_path / "img" / names[1], new / names[2])  # img_dir holds a file of this name: img_dir's is read
    (new / "list.csv").write_text(f"sub/first.png,cat\n{tmp_path / 'img' / names[1]},dog\n{names[2]},1\n")
    source = ImageCsvDataLoader.inference_source(str(new / "list.csv"), args)
    assert list(source.names) == ["sub/first.png", str(tmp_path / "img" / names[1]), names[2]]
    assert source.labels == [0, 1, 1]  # names of the run's classes, or indices
    assert torch.equal(served(source), torch.stack([sample(loader, i) for i in range(3)]))
    # The other image-file loaders read a CSV's names relative to the CSV only.
    folder_source = ImageFolderDataLoader.inference_source(str(new / "list.csv"), {**args, "data_dir": "x"})
    assert torch.equal(served(folder_source)[2], sample(loader, 1))


@pytest.mark.parametrize("args", [{}, {"eval_transforms": [{"type": "CenterCrop", "args": {"size": 20}}],
                                       "mean": [0.5], "std": [0.2]}], ids=["sliced", "per-sample"])
def test_an_mnist_image_file_equals_the_in_memory_test_sample(tmp_path, args):
    images, _ = write_mnist(tmp_path, n_test=3)["t10k"]
    loader = MnistDataLoader(str(tmp_path), batch_size=3, training=False, download=False, **args)
    (tmp_path / "new").mkdir()
    for i, pixels in enumerate(images):
        Image.fromarray(pixels.astype(np.uint8), "L").save(tmp_path / "new" / f"{i}.png")
    source = MnistDataLoader.inference_source(str(tmp_path / "new"), {"data_dir": "nowhere", "batch_size": 3, **args})
    assert torch.equal(served(source), torch.stack([sample(loader, i) for i in range(3)]))
    assert source.classes == loader.classes  # torchvision's names: no data needed to know them


def test_a_cifar_image_file_equals_the_in_memory_test_sample_and_its_names_come_from_its_meta_file(tmp_path, caplog):
    images, _ = write_cifar(tmp_path, n_test=3)["test"]
    loader = Cifar10DataLoader(str(tmp_path), batch_size=3, training=False, download=False)
    (tmp_path / "new").mkdir()
    for i, pixels in enumerate(images):
        Image.fromarray(pixels, "RGB").save(tmp_path / "new" / f"{i}.png")
    source = Cifar10DataLoader.inference_source(str(tmp_path / "new"), {"data_dir": str(tmp_path), "batch_size": 3})
    assert torch.equal(served(source), torch.stack([sample(loader, i) for i in range(3)]))
    assert source.classes == loader.classes == [f"class{i}" for i in range(10)]
    # A serving machine without the dataset: the inputs as before, the classes unknown (written as indices).
    alone = Cifar10DataLoader.inference_source(str(tmp_path / "new"), {"data_dir": str(tmp_path / "gone"),
                                                                      "batch_size": 3})
    assert alone.classes is None and "Class names unknown" in caplog.text
    assert torch.equal(served(alone), served(source))


class MyLoader(BaseDataLoader):
    """A user's loader that does not say how to read new files."""

    def __init__(self, data_dir: str, batch_size: int = 4, training: bool = True):
        pass


@pytest.mark.parametrize("cls, says", [(DigitsDataLoader, "data_loader.type DigitsDataLoader takes arrays, not image "
                                                          "files: give a .npy/.npz/.blosc2 file of samples"),
                                       (ArrayDataLoader, "data_loader.type ArrayDataLoader takes arrays, not image "
                                                         "files: give a .npy/.npz/.blosc2 file of samples")])
def test_loaders_that_take_no_image_files_say_what_to_give(tmp_path, cls, says):
    write_image(tmp_path / "pictures" / "a.png")
    (tmp_path / "notes.txt").write_text("x")
    for given in (tmp_path / "pictures", tmp_path / "pictures" / "a.png"):
        with pytest.raises(UserError, match=rf"^--input {given}: {says}.*or --input test$"):
            cls.inference_source(str(given), {})
    with pytest.raises(UserError, match=r"unknown kind of file '.txt'; give a .npy/.npz/.blosc2 file"):
        cls.inference_source(str(tmp_path / "notes.txt"), {})


def test_a_loader_without_inference_source_says_to_give_test_or_write_it(tmp_path):
    with pytest.raises(UserError, match=rf"^--input {tmp_path}: data_loader.type MyLoader does not say how to turn "
                                        r"files into model inputs; give --input test \(its test split\), or write "
                                        r"MyLoader.inference_source \(see docs/predictions.md\)$"):
        MyLoader.inference_source(str(tmp_path), {"data_dir": "x"})


class MyGreyLoader(MyLoader):
    """A user's loader of grey images with the few lines that give it predict.py support."""

    @classmethod
    def inference_source(cls, path: str, args: dict) -> InferenceSource:
        transform = image_pipeline([{"type": "Resize", "args": {"size": [4, 4]}}], [0.5], [0.5], "eval")
        return image_files_source(path, image_reader("L"), transform, classes=args.get("classes"))


def test_a_users_loader_gets_folders_csv_lists_and_unreadable_files_from_image_files_source(tmp_path):
    write_image_folder(tmp_path / "new", {"no": 1, "yes": 2})
    (tmp_path / "new" / "yes" / "bad.png").write_bytes(b"garbage")
    source = MyGreyLoader.inference_source(str(tmp_path / "new"), {"classes": ["no", "yes"]})
    assert list(source.names) == ["no/0.png", "yes/0.png", "yes/1.png", "yes/bad.png"] and source.labels == [0, 1, 1, 1]
    (batch,) = source.batches(8, 0)
    assert batch.inputs.shape == (3, 1, 4, 4) and batch.indices == [0, 1, 2] and batch.skipped[0][0] == 3
    (tmp_path / "new" / "list.csv").write_text("file\nyes/1.png\n")
    assert list(MyGreyLoader.inference_source(str(tmp_path / "new" / "list.csv"), {}).names) == ["yes/1.png"]


def test_a_bad_mode_is_an_error_naming_the_key(tmp_path):
    with pytest.raises(UserError, match="data_loader.args.mode"):
        ImageFolderDataLoader.inference_source(str(tmp_path), {"data_dir": "x", "mode": "CMYK"})


def test_folders_that_hold_no_image_and_files_of_unknown_kinds_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match=r"^--input .*empty: no image files \(.png, .jpg"):
        ImageFolderDataLoader.inference_source(str(tmp_path / "empty"), {"data_dir": "x"})
    with pytest.raises(UserError, match=r"^--input .*notes.txt: unknown kind of file '.txt'; give a folder of images, "
                                        r"a .csv list of image files, a .npy/.npz/.blosc2 file of samples or the word "
                                        r"test$"):
        ImageFolderDataLoader.inference_source(str(tmp_path / "notes.txt"), {"data_dir": "x"})


def test_with_defaults_completes_a_configs_args_from_the_loaders_signature():
    args = with_defaults(ImageCsvDataLoader, {"img_dir": "i", "mode": "L"})
    assert args["mode"] == "L" and args["eval_transforms"] is None and args["batch_size"] == 32
    assert "annotations_file" not in args  # no default


def test_image_files_are_found_in_subfolders_by_suffix_in_any_case_and_sorted(tmp_path):
    for name in ("b.PNG", "a/x.jpg", "a/deeper/z.TIFF", "c.webp", "a.gif"):  # found by name: the content is not read
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "a" / "notes.txt").write_text("x")
    assert image_files(str(tmp_path)) == (["a.gif", "a/deeper/z.TIFF", "a/x.jpg", "b.PNG", "c.webp"], 1)


def test_folder_labels_come_from_class_folders_only_when_every_file_has_one():
    assert folder_labels(["dog/1.png", "cat/2.png", "cat/x/3.png"], ["cat", "dog"]) == [1, 0, 0]
    assert folder_labels(["dog/1.png", "2.png"], ["cat", "dog"]) is None
    assert folder_labels(["emu/1.png"], ["cat", "dog"]) is None
    assert folder_labels(["dog/1.png"], None) is None


def test_a_csv_list_with_header_labels_and_mistakes(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("file,label\na.png,dog\nsub/b.png,cat\n")
    assert listed_images(str(path), ["cat", "dog"]) == (["a.png", "sub/b.png"], [1, 0])
    path.write_text("a.png\nb.jpg\n")  # no header, no labels: files need not exist yet (they are read later)
    assert listed_images(str(path), None) == (["a.png", "b.jpg"], None)
    path.write_text("name\na.png,1\nb.png,0\n")
    assert listed_images(str(path), None) == (["a.png", "b.png"], [1, 0])
    path.write_text("a.png,dog\nb.png,emu\n")
    with pytest.raises(UserError, match=r"list.csv:2: label 'emu' is not one of the run's classes"):
        listed_images(str(path), ["cat", "dog"])
    path.write_text("a.png,dog\nb.png\n")
    with pytest.raises(UserError, match=r"list.csv:2: no label, while other rows have one"):
        listed_images(str(path), ["cat", "dog"])
    path.write_text("file,label\n")
    with pytest.raises(UserError, match="lists no images"):
        listed_images(str(path), None)


def test_a_csv_lists_files_in_img_dir_first_then_beside_itself(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "photo").write_bytes(b"")  # a file without an image suffix
    (tmp_path / "img" / "both.png").write_bytes(b"")
    path = tmp_path / "lists" / "list.csv"
    path.parent.mkdir()
    path.write_text("photo\nboth.png\nhere.png\n/abs/x.png\n")
    dirs = [str(tmp_path / "img")]
    assert listed_images(str(path), None)[0][0] == "both.png"  # 'photo' is no file beside the CSV: a header
    assert listed_images(str(path), None, dirs)[0] == ["photo", "both.png", "here.png", "/abs/x.png"]
    assert listed_paths(str(path), ["photo", "both.png", "here.png", "/abs/x.png"], dirs) == [
        str(tmp_path / "img" / "photo"), str(tmp_path / "img" / "both.png"), str(tmp_path / "lists" / "here.png"),
        "/abs/x.png"]


def test_an_unreadable_file_is_set_aside_in_its_batch(tmp_path):
    write_image(tmp_path / "good.png", size=(8, 8))
    (tmp_path / "bad.png").write_bytes(b"garbage")
    dataset = ImageFiles([str(tmp_path / n) for n in ("good.png", "bad.png", "gone.png")], image_reader("RGB"),
                         image_pipeline(None, [0.5] * 3, [0.5] * 3, "eval"))
    samples = [dataset[i] for i in range(3)]
    assert isinstance(samples[1][1], Unreadable) and "bad.png" in samples[1][1].message
    assert isinstance(samples[2][1], Unreadable) and "gone.png" in samples[2][1].message
    batch = collate_inputs(samples)
    assert batch.indices == [0] and batch.inputs.shape == (1, 3, 8, 8) and [i for i, _ in batch.skipped] == [1, 2]
    assert collate_inputs(samples[1:]).inputs is None


def test_images_of_different_sizes_in_a_batch_are_a_user_error():
    with pytest.raises(UserError, match=r"different sizes \[\(3, 4, 4\), \(3, 5, 5\)\]"):
        collate_inputs([(0, torch.zeros(3, 4, 4)), (1, torch.zeros(3, 5, 5))])


def test_arrays_are_read_as_array_data_loader_reads_them(tmp_path):
    x = np.arange(24, dtype=np.float64).reshape(6, 4)
    np.savez(tmp_path / "one.npz", samples=x)
    np.savez(tmp_path / "xy.npz", x=x, y=np.arange(6))
    np.savez(tmp_path / "two.npz", a=x, b=x)
    inputs, labels = read_arrays(str(tmp_path / "one.npz"))
    assert np.array_equal(inputs, x) and labels is None
    inputs, labels = read_arrays(str(tmp_path / "xy.npz"))
    assert labels.tolist() == list(range(6))
    with pytest.raises(UserError, match=r"^--input .*two.npz: no array 'x' among \['a', 'b'\]"):
        read_arrays(str(tmp_path / "two.npz"))
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(UserError, match=r"^--input .*bad.npy: cannot read it"):
        read_arrays(str(tmp_path / "bad.npy"))
    batches = list(array_batches(x, 4))
    assert [b.indices for b in batches] == [[0, 1, 2, 3], [4, 5]] and batches[0].inputs.dtype == torch.float32


def test_array_files_through_the_loaders_inference_source(tmp_path):
    x = np.arange(24, dtype=np.uint8).reshape(6, 4)
    np.savez(tmp_path / "ab.npz", a=x, b=np.arange(6) % 2)
    source = ArrayDataLoader.inference_source(str(tmp_path / "ab.npz"), {"data_file": "d.npz", "inputs_key": "a",
                                                                        "targets_key": "b"})
    assert source.key == "index" and list(source.names) == list(range(6)) and source.labels.tolist() == [0, 1] * 3
    assert torch.equal(served(source, 4), torch.from_numpy(x).float())
    np.save(tmp_path / "x.npy", x)
    for loader, args in ((DigitsDataLoader, {}), (ImageFolderDataLoader, {"data_dir": "d", "classes": ["p", "q"]})):
        source = loader.inference_source(str(tmp_path / "x.npy"), args)  # model inputs as they are, for every loader
        assert torch.equal(served(source), torch.from_numpy(x).float()) and source.labels is None
    assert source.classes == ["p", "q"]


# ---- preprocessing: inference_source's steps described for exported files (docs/export.md) ----

def follow(description: dict, path) -> np.ndarray:
    """An image file prepared by a description's steps with Pillow and NumPy alone, as a serving script does."""
    image = Image.open(path).convert(description["mode"])
    if "resize" in description:
        height, width = description["resize"]
        image = image.resize((width, height), Image.BILINEAR)
    if "center_crop" in description:
        height, width = description["center_crop"]
        left, top = round((image.width - width) / 2), round((image.height - height) / 2)
        image = image.crop((left, top, left + width, top + height))
    x = np.asarray(image, dtype=np.float32).reshape(image.height, image.width, -1) * np.float32(description["scale"])
    return ((x - np.float32(description["mean"])) / np.float32(description["std"])).transpose(2, 0, 1)


@pytest.mark.parametrize("cls, args", [
    (ImageFolderDataLoader, {"eval_transforms": [{"type": "Resize", "args": {"size": [9, 7]}},
                                                 {"type": "CenterCrop", "args": {"size": [6, 5]}}]}),
    (ImageCsvDataLoader, {"mode": "L", "mean": [0.5], "std": [0.25],
                          "eval_transforms": [{"type": "Resize", "args": {"size": [12, 12]}}]}),
    (MnistDataLoader, {"eval_transforms": [{"type": "Resize", "args": {"size": [28, 28]}}]}),
])
def test_an_image_loaders_description_is_its_inference_pipeline_step_by_step(tmp_path, cls, args):
    write_image(tmp_path / "new" / "0.png", size=(15, 11), seed=3)
    described = cls.preprocessing(args)
    assert described["input"] == "image" and described["layout"] == "NCHW" and described["dtype"] == "float32"
    expected = served(cls.inference_source(str(tmp_path / "new"), args))[0]
    # within the rounding of one pixel step: torchvision resizes uint8 tensors, Pillow its images
    np.testing.assert_allclose(follow(described, tmp_path / "new" / "0.png"), expected.numpy(), atol=1.5 / 255 / 0.2)


def test_image_loaders_describe_their_mode_size_and_statistics_and_arrays_their_dtype():
    assert ImageFolderDataLoader.preprocessing({"eval_transforms": CROP}) == {
        "input": "image", "mode": "RGB", "resize": 10, "interpolation": "bilinear", "center_crop": [8, 8],
        "scale": 1 / 255, "dtype": "float32", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "layout": "NCHW"}
    assert MnistDataLoader.preprocessing({}) == {"input": "image", "mode": "L", "scale": 1 / 255, "dtype": "float32",
                                                 "mean": [0.1307], "std": [0.3081], "layout": "NCHW"}
    assert Cifar10DataLoader.preprocessing({"mean": [0.5] * 3})["mean"] == [0.5] * 3
    assert ArrayDataLoader.preprocessing({}) == DigitsDataLoader.preprocessing({}) == {"input": "array",
                                                                                       "dtype": "float32"}
    assert BaseDataLoader.preprocessing({}) is None  # a loader that does not say


@pytest.mark.parametrize("eval_transforms, says", [
    (["Grayscale"], r"eval_transforms: Grayscale\(num_output_channels=1\) is not one of the steps a description holds"),
    ([{"type": "Resize", "args": {"size": 8, "max_size": 9}}], r"Resize\(size=\[8\], .*max_size=9"),
    ([{"type": "CenterCrop", "args": {"size": 8}}, {"type": "Resize", "args": {"size": 8}}],
     "Resize after CenterCrop: a description holds one resize, then one center crop"),
    ([{"type": "Resize", "args": {"size": 8}}, {"type": "Resize", "args": {"size": 6}}], "a second Resize"),
])
def test_eval_transforms_a_description_cannot_hold_are_named(eval_transforms, says):
    with pytest.raises(ValueError, match=says):
        ImageFolderDataLoader.preprocessing({"eval_transforms": eval_transforms})
