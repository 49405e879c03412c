"""config/compose.py and merge.py's merge_layer: _base_ files merged depth-first in order and overridden by the file
itself, several files merged in order, _delete_ replacing a section, cycles and missing bases refused naming the
chain, and the file and line each value came from."""
from __future__ import annotations

import json

import pytest

from config.compose import compose, config_paths, read_config
from config.merge import merge_changes, merge_layer, without_markers
from utils.errors import UserError


def write(folder, name: str, content: dict | str):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content, indent=1))
    return path


@pytest.fixture
def tree(tmp_path):
    """configs/exp.json -> [../base/trainer.yaml (-> common.yaml), data.json]."""
    write(tmp_path, "base/common.yaml", "seed: 1\ntrainer:\n  epochs: 1\n  verbosity: 0\nmetrics: [a, b]\n")
    write(tmp_path, "base/trainer.yaml", "_base_: common.yaml\ntrainer:\n  epochs: 2\n  monitor: min val_loss\n")
    write(tmp_path, "configs/data.json", {"data_loader": {"type": "D", "args": {"batch_size": 8, "shuffle": True}},
                                          "seed": 2})
    return write(tmp_path, "configs/exp.json", {"_base_": ["../base/trainer.yaml", "data.json"], "name": "exp",
                                                "data_loader": {"args": {"batch_size": 16}}, "metrics": ["c"]})


def test_bases_merge_depth_first_in_order_then_the_file_itself(tree):
    assert read_config(tree) == {
        "seed": 2,  # common.yaml, then data.json (listed after trainer.yaml)
        "trainer": {"epochs": 2, "verbosity": 0, "monitor": "min val_loss"},  # trainer.yaml over its base common.yaml
        "metrics": ["c"],  # a list replaces
        "data_loader": {"type": "D", "args": {"batch_size": 16, "shuffle": True}},  # objects merge key by key
        "name": "exp"}


def test_each_value_keeps_the_file_and_line_it_came_from(tree, tmp_path):
    _, sources = compose([tree])
    base = tmp_path / "base"
    assert sources["trainer.epochs"] == f"{base / 'trainer.yaml'} line 3"
    assert sources["trainer.verbosity"] == f"{base / 'common.yaml'} line 4"
    assert sources["seed"] == f"{tmp_path / 'configs/data.json'} line 9"
    assert sources["data_loader.args.batch_size"] == f"{tree} line 9"
    assert sources["metrics"] == f"{tree} line 12" and sources["metrics.0"] == f"{tree} line 13"
    assert not any(key.startswith("_base_") for key in sources)


def test_a_single_base_may_be_a_string_and_a_base_may_be_yaml_or_json(tmp_path):
    write(tmp_path, "b.json", {"a": {"x": 1}})
    assert read_config(write(tmp_path, "c.yaml", "_base_: b.json\na: {y: 2}\n")) == {"a": {"x": 1, "y": 2}}


def test_several_files_merge_in_order(tree, tmp_path):
    late = write(tmp_path, "late.yaml", "trainer:\n  epochs: 9\nname: late\n")
    config, sources = compose([tree, late])
    assert config["trainer"] == {"epochs": 9, "verbosity": 0, "monitor": "min val_loss"} and config["name"] == "late"
    assert sources["trainer.epochs"] == f"{late} line 2"
    assert read_config(late, tree)["name"] == "exp"  # the order decides


def test_delete_replaces_a_section_instead_of_merging_and_is_dropped(tree, tmp_path):
    exp = write(tmp_path, "configs/exp2.yaml", "_base_: exp.json\ndata_loader:\n  _delete_: true\n  type: E\n"
                                                "trainer:\n  _delete_: false\n  epochs: 5\n")
    config, sources = compose([exp])
    assert config["data_loader"] == {"_delete_": True, "type": "E"}  # kept for a merge onto a checkpoint's config
    resolved = read_config(exp)
    assert resolved["data_loader"] == {"type": "E"}
    assert resolved["trainer"] == {"epochs": 5, "verbosity": 0, "monitor": "min val_loss"}
    assert sources["data_loader.type"] == f"{exp} line 4"


def test_delete_across_several_files_and_onto_a_checkpoints_config():
    base = {"optimizer": {"type": "Adam", "args": {"lr": 1, "amsgrad": True}}, "trainer": {"epochs": 2}}
    change = {"optimizer": {"_delete_": True, "type": "Adam", "args": {"lr": 2}}}
    assert without_markers(merge_layer(base, change))["optimizer"] == {"type": "Adam", "args": {"lr": 2}}
    assert without_markers(merge_changes(base, change)) == {"optimizer": {"type": "Adam", "args": {"lr": 2}},
                                                            "trainer": {"epochs": 2}}
    assert merge_changes(base, {"optimizer": {"args": {"lr": 2}}})["optimizer"]["args"] == {"lr": 2, "amsgrad": True}


def test_a_cycle_of_bases_is_one_error_naming_the_chain(tmp_path):
    a = write(tmp_path, "a.yaml", "_base_: b.yaml\nx: 1\n")
    write(tmp_path, "b.yaml", "_base_: [c.json, a.yaml]\n")
    write(tmp_path, "c.json", "{}")
    chain = " -> ".join(str(tmp_path / name) for name in ("a.yaml", "b.yaml", "a.yaml"))
    with pytest.raises(UserError, match=f"^config files list each other as bases: {chain}; remove one"):
        compose([a])
    with pytest.raises(UserError, match="each other as bases: .*self.yaml -> .*self.yaml;"):
        compose([write(tmp_path, "self.yaml", "_base_: ./self.yaml\n")])


def test_a_missing_base_is_one_error_naming_the_chain_and_the_line(tmp_path):
    a = write(tmp_path, "a.yaml", "_base_: sub/b.yaml\n")
    write(tmp_path, "sub/b.yaml", "x: 1\n_base_:\n  - ok.yaml\n  - ../nope.yaml\n")
    write(tmp_path, "sub/ok.yaml", "y: 1\n")
    with pytest.raises(UserError) as raised:
        compose([a])
    nope, b = tmp_path / "nope.yaml", tmp_path / "sub/b.yaml"
    assert str(raised.value) == (f"base config {nope} not found ({a} -> {b} -> {nope}); fix the _base_ entry in {b} "
                                 f"line 4: a base's path is relative to the file that lists it")


def test_a_broken_base_names_the_chain(tmp_path):
    a = write(tmp_path, "a.yaml", "_base_: b.json\n")
    write(tmp_path, "b.json", '{"x": 1,}')
    with pytest.raises(UserError, match=r"b\.json is not valid JSON: .* \(a base: .*a\.yaml -> .*b\.json\)$"):
        compose([a])


@pytest.mark.parametrize("text, message", [
    ("_base_: 3\n", r"c\.yaml line 1: _base_ must be a file path or a list of them \(relative to this file\), got 3"),
    ("_base_: ['']\n", r"c\.yaml line 1: _base_ must be a file path"),
    ("_delete_: true\n", r"c\.yaml line 1: _delete_ replaces a section; at the top of a file it has nothing to "
                         r"replace"),
    ("a:\n  b:\n    _delete_: yes\n", r"c\.yaml line 3: a\.b\._delete_ must be true or false, got 'yes'"),
])
def test_mistakes_in_base_and_delete_name_the_file_and_line(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        compose([write(tmp_path, "c.yaml", text)])


def test_config_paths_takes_none_one_or_several():
    assert config_paths(None) == [] and config_paths("a.json") == ["a.json"]
    assert config_paths(["a.yaml", "b.json"]) == ["a.yaml", "b.json"]
