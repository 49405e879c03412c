"""Tests for logger/visualization.py: the TensorBoard writer, read back, and the do-nothing writer."""
from __future__ import annotations

import subprocess
import sys

from conftest import ROOT, events
from logger import NullWriter, TensorboardWriter, make_writer
from logger.visualization import RunBoard, hparam_values


def public_methods(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_") and callable(getattr(cls, name))}


def test_null_writer_has_the_tensorboard_writers_methods():
    for writer in (TensorboardWriter, RunBoard):
        assert public_methods(NullWriter) == public_methods(writer)
        # each one overridden: a method left to the NullWriter base would drop data silently
        assert all(name in vars(writer) for name in public_methods(NullWriter))


def test_make_writer_null_when_disabled_or_no_dir(tmp_path):
    assert type(make_writer(None, True)) is NullWriter
    assert type(make_writer(tmp_path, False)) is NullWriter
    assert list(tmp_path.iterdir()) == []
    writer = make_writer(tmp_path, True)
    writer.add_scalar("loss", 1.0, 1, "train")
    writer.add_scalar("loss", 2.0, 1, "valid")
    writer.close()
    assert type(writer) is RunBoard
    assert [e.value for e in events(tmp_path / "train").Scalars("loss")] == [1.0]
    assert [e.value for e in events(tmp_path / "valid").Scalars("loss")] == [2.0]


def test_hparams_are_the_config_leaves_by_path_in_the_runs_own_events(tmp_path):
    config = {"name": "x", "optimizer": {"args": {"lr": 0.1, "betas": [0.9, 0.99]}}, "seed": None, "on": True}
    values = hparam_values(config)
    assert values == {"name": "x", "optimizer.args.lr": 0.1, "optimizer.args.betas": "[0.9, 0.99]", "on": True}
    board = RunBoard(tmp_path)
    board.add_hparams(values, ["final/loss"])
    board.close()
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events(tmp_path).SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["optimizer.args.lr"].number_value == 0.1
    assert start.hparams["optimizer.args.betas"].string_value == "[0.9, 0.99]"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["train", "valid"]  # no directory per call


def test_the_writer_imports_no_remote_filesystem_package_and_leaves_them_importable(tmp_path):
    site = tmp_path / "site"  # a boto3 of our own, found first: whether or not the real one is installed
    (site / "boto3").mkdir(parents=True)
    (site / "boto3" / "__init__.py").write_text("FAKE = True\n")
    code = (  # a fresh interpreter: tensorboard is not yet imported
        "import sys; from pathlib import Path; from logger import make_writer\n"
        "board = make_writer(Path(sys.argv[1]), True); board.add_scalar('loss', 1.0, 1, 'train'); board.close()\n"
        "print(sorted(m for m in ('botocore', 'boto3', 'fsspec', 'tensorboard') if m in sys.modules))\n"
        "import boto3, fsspec; print(boto3.FAKE, fsspec.__name__)\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "log")], capture_output=True, text=True,
                            cwd=ROOT, env={"PYTHONPATH": f"{site}:{ROOT}", "PATH": ""}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["['tensorboard']", "True fsspec"]
    assert [e.value for e in events(tmp_path / "log" / "train").Scalars("loss")] == [1.0]


def test_remote_filesystem_packages_already_imported_are_left_alone():
    import fsspec

    from logger.visualization import summary_writer_class

    summary_writer_class()
    assert sys.modules["fsspec"] is fsspec


def test_tensorboard_writer_scalar_reads_back(tmp_path):
    writer = TensorboardWriter(tmp_path)
    writer.add_scalar("x/train", 1.5, 3)
    writer.close()
    assert [(e.step, e.value) for e in events(tmp_path).Scalars("x/train")] == [(3, 1.5)]


def test_tensorboard_writer_supersedes_later_steps_of_earlier_files(tmp_path):
    first = TensorboardWriter(tmp_path)
    for step in (1, 2, 3):
        first.add_scalar("epoch_axis", step, step)
        first.add_scalar("step_axis", step, 10 * step)
    first.add_scalar("untouched", 7.0, 5)
    first.close()
    second = TensorboardWriter(tmp_path)  # a resume from epoch 1: per tag, its first step supersedes the rest
    second.add_scalar("epoch_axis", 20.0, 2)
    second.add_scalar("step_axis", 200.0, 20)
    second.flush()
    acc = events(tmp_path)
    assert [(e.step, e.value) for e in acc.Scalars("epoch_axis")] == [(1, 1.0), (2, 20.0)]
    assert [(e.step, e.value) for e in acc.Scalars("step_axis")] == [(10, 1.0), (20, 200.0)]
    assert [(e.step, e.value) for e in acc.Scalars("untouched")] == [(5, 7.0)]
    second.add_scalar("epoch_axis", 30.0, 3)
    second.close()
    assert [(e.step, e.value) for e in events(tmp_path).Scalars("epoch_axis")] == [(1, 1.0), (2, 20.0), (3, 30.0)]


def test_a_confusion_matrix_is_an_image_in_its_phase_labelled_by_class(tmp_path):
    from logger.visualization import confusion_figure

    board = RunBoard(tmp_path)
    for epoch in (1, 2):
        board.add_confusion_matrix("cm", [[5, 1, 0], [0, 4, 2], [1, 0, 6]], ["cat", "dog", "bird"], epoch, "valid")
    board.close()
    images = events(tmp_path / "valid").Images("cm")
    assert [e.step for e in images] == [1, 2] and images[0].width == images[0].height >= 400
    assert events(tmp_path / "train").Tags()["images"] == []
    figure = confusion_figure([[5, 1, 0], [0, 4, 2], [1, 0, 6]], ["cat", "dog", "bird"])
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == ["cat", "dog", "bird"]
    assert axes.get_ylabel() == "True class" and axes.get_xlabel() == "Predicted class"
    assert sorted(t.get_text() for t in axes.texts) == sorted(["5", "1", "0", "0", "4", "2", "1", "0", "6"])
    unlabelled = confusion_figure([[1, 0], [0, 1]], ["only one name"])  # names that do not fit: indices
    assert [t.get_text() for t in unlabelled.axes[0].get_xticklabels()] == ["0", "1"]
