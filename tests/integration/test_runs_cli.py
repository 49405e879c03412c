"""runs.py end to end, in-process (runs.main with capsys; utils.errors.run_cli for the exit status), on runs that
train.main made from the tiny config: a run started from a dirty checkout and resumed, one that differs from it in
one key, and one stopped by trainer.max_time. Also run.json as train.py writes it."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

import runs
import train
from conftest import ROOT, run_dir, tiny_config, write
from utils.errors import run_cli

pytestmark = pytest.mark.usefixtures("restore_logging")  # train.main sets up logging
HAS_GIT = shutil.which("git") is not None


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def dirty_checkout(path):
    """A git repository with one commit, then a changed file and an untracked one."""
    path.mkdir()
    git(path, "init", "-q")
    (path / "model.py").write_text("width = 4\n")
    git(path, "add", ".")
    git(path, "-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qm", "first")
    (path / "model.py").write_text("width = 8\n")
    (path / "notes.txt").write_text("try a wider model\n")
    return path


@pytest.fixture(scope="module")
def saved(restore_logging, tmp_path_factory):
    """The save directory of runs a (1 epoch from a dirty checkout, then resumed to 2 from this project's), b (as a
    with optimizer.args.lr=0.01) and c (stopped by trainer.max_time), and the dirty checkout."""
    tmp = tmp_path_factory.mktemp("runs")
    config = write(tmp, tiny_config(tmp / "saved"))
    checkout = dirty_checkout(tmp / "checkout") if HAS_GIT else None
    with pytest.MonkeyPatch.context() as patch:
        if checkout is not None:
            patch.setattr("run.manifest.PROJECT_ROOT", checkout)
        train.main(["-c", str(config), "--run-id", "a", "trainer.epochs=1"])
    train.main(["-r", str(run_dir(tmp / "saved", "a")[0]), "trainer.epochs=2"])
    train.main(["-c", str(config), "--run-id", "b", "optimizer.args.lr=0.01"])
    train.main(["-c", str(config), "--run-id", "c", "trainer.max_time=1e-9"])
    return tmp / "saved", checkout


def output(capsys, *argv):
    capsys.readouterr()
    runs.main(list(argv))
    return capsys.readouterr().out


def manifest(save, run_id):
    return json.loads((run_dir(save, run_id)[0] / "run.json").read_text())


def table(text):
    """The rows of list's table, each as its cells."""
    return [line.split() for line in text.splitlines()[1:]]


def test_train_writes_a_start_per_command_and_how_each_ended(saved):
    save, _ = saved
    a, c = manifest(save, "a"), manifest(save, "c")
    assert [(s["from_epoch"], s["epoch"], s["outcome"], s["exit_code"]) for s in a["starts"]] == [
        (0, 1, "finished", 0), (1, 2, "finished", 0)]
    assert a["starts"][1]["resumed_from"].endswith("checkpoint-epoch1.pth") and a["starts"][0]["resumed_from"] is None
    assert a["starts"][1]["command"].split()[1:4] == ["train.py", "-r", str(run_dir(save, "a")[0])]
    assert (a["status"], a["started"], a["ended"]) == ("finished", a["starts"][0]["started"], a["starts"][1]["ended"])
    assert (c["status"], c["exit_code"], c["starts"][0]["reason"]) == ("time-limit", 0, "trainer.max_time (1e-09 s) "
                                                                                        "reached")
    assert a["starts"][1]["data"] == manifest(save, "b")["starts"][0]["data"]  # the same digits
    if HAS_GIT and (ROOT / ".git").exists():
        assert a["starts"][1]["git"]["commit"] == git(ROOT, "rev-parse", "HEAD")


@pytest.mark.skipif(not HAS_GIT, reason="git is not installed")
def test_a_run_from_a_dirty_checkout_keeps_the_patch_that_restores_it(saved, tmp_path):
    save, checkout = saved
    first = manifest(save, "a")["starts"][0]["git"]
    assert first["commit"] == git(checkout, "rev-parse", "HEAD")
    assert (first["dirty"], first["untracked"], first["patch"]) == (True, ["notes.txt"], "run.patch")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(checkout), str(clone)], check=True)
    git(clone, "apply", str(run_dir(save, "a")[0] / "run.patch"))
    assert [(clone / name).read_text() for name in ("model.py", "notes.txt")] == ["width = 8\n",
                                                                                  "try a wider model\n"]


def test_list_filters_and_sorts(saved, capsys):
    save, _ = saved
    rows = table(output(capsys, "list", "--save-dir", str(save)))
    assert [row[:4] for row in rows] == [["Digits_CNN", "a", "finished", "2/2"], ["Digits_CNN", "b", "finished", "2/2"],
                                         ["Digits_CNN", "c", "time-limit", "0/2"]]
    assert rows[0][4] == "val_loss" and rows[2][4] == "-"
    finished = table(output(capsys, "list", "--save-dir", str(save), "--status", "finished", "--name", "Digits*"))
    assert [row[1] for row in finished] == ["a", "b"]
    best = {run_id: min(r["val_loss"] for r in map(json.loads, (run_dir(save, run_id)[1] / "metrics.jsonl")
                                                    .read_text().splitlines())) for run_id in ("a", "b")}
    ordered = [row[1] for row in table(output(capsys, "list", "--save-dir", str(save), "--sort"))]
    assert ordered == sorted(best, key=best.get) + ["c"]
    assert output(capsys, "list", "--save-dir", str(save), "--name", "Mnist*") == (
        f"No runs under {save} match --name Mnist* (configs: Digits_CNN)\n")


def test_diff_names_the_one_key_that_differs(saved, capsys):
    save, _ = saved
    text = output(capsys, "diff", "a", "Digits_CNN/b", "--save-dir", str(save))
    assert "config: 1 differ\n  optimizer.args.lr: 0.002 -> 0.01\n" in text
    assert "environment: the same\ndata: the same\n" in text
    first_start = output(capsys, "diff", str(run_dir(save, "a")[0]), "a", "--save-dir", str(save))
    assert "config: the same" in first_start


def test_show_prints_the_manifest_and_the_metrics(saved, capsys):
    save, _ = saved
    text = output(capsys, "show", "a", "--save-dir", str(save))
    lines = dict(line.split(None, 1) for line in text.splitlines() if not line.startswith("start "))
    assert lines["status"] == "finished, exit status 0" and lines["epochs"] == "2 of 2"
    assert lines["best"].startswith("min val_loss ") and "val_accuracy" in lines["final"]
    assert "train.py -r" in lines["command"] and "[1437, 1, 8, 8] float32" in lines["data"]
    assert "from epoch 0: finished, exit status 0, at epoch 1" in text and "from epoch 1: finished" in text
    shown = json.loads(output(capsys, "show", str(run_dir(save, "c")[1]), "--json"))  # its log directory
    assert shown["run"] == "Digits_CNN/c" and shown["status"] == "time-limit" and shown["manifest"] == manifest(save,
                                                                                                                "c")


def test_plot_draws_a_png_and_names_a_run_without_the_metric(saved, capsys, tmp_path):
    save, _ = saved
    out = tmp_path / "curves.png"
    capsys.readouterr()
    runs.main(["plot", "a", "b", "c", "--metric", "val_accuracy", "--out", str(out), "--save-dir", str(save)])
    printed = capsys.readouterr()
    assert printed.out == f"Plot of val_accuracy for 3 runs written to {out}\n"
    assert printed.err == "Digits_CNN/c has no val_accuracy values; left out of the plot\n"  # stopped in epoch 1
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, message", [
    (["show", "nope"], "error: RUN 'nope': no run directory by that path, NAME/RUN_ID or run id under --save-dir"),
    (["list", "--status", "done"], "error: --status 'done' is not a status."),
    (["plot", "a", "--metric", "val_acc"], "error: --metric 'val_acc': no run given logged it. Did you mean "
                                           "'val_accuracy'"),
    (["list", "--save-dir", "/nonexistent/saved"], "error: --save-dir /nonexistent/saved: no such directory"),
], ids=["run", "status", "metric", "save-dir"])
def test_a_mistake_is_one_line_and_status_2(saved, capsys, argv, message):
    save, _ = saved
    capsys.readouterr()
    assert run_cli(runs.main, [*argv, *(["--save-dir", str(save)] if "--save-dir" not in argv else [])]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_a_run_without_run_json_is_listed_from_its_files(saved, capsys, tmp_path):
    save, _ = saved
    old = tmp_path / "saved"
    for part in ("models", "log"):
        shutil.copytree(save / part / "Digits_CNN" / "b", old / part / "Digits_CNN" / "old")
    (old / "models" / "Digits_CNN" / "old" / "run.json").unlink()
    [row] = table(output(capsys, "list", "--save-dir", str(old)))
    assert row[:5] == ["Digits_CNN", "old", "finished", "2/2", "val_loss"]
    assert "run.json  none (a run from before manifests)" in output(capsys, "show", "old", "--save-dir", str(old))
    assert "environment, data: unknown (Digits_CNN/old has no run.json)" in output(
        capsys, "diff", str(run_dir(save, "b")[0]), "old", "--save-dir", str(old))
