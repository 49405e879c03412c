"""config/files.py: a YAML config reads with YAML 1.2 meanings into plain values, a JSON config with the json module,
each with the line of every value; every mistake names the file and, where there is one, the line."""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.files import json_lines, read_config_file, read_json
from utils.errors import UserError

# What PyYAML (YAML 1.1) gets wrong, and YAML 1.2 as JSON means it.
YAML_12 = """\
lr: 1e-3
decay: 1.0e-4
answer: no
switch: off
yes: y
code: 010
octal: 0o10
hex: 0x1F
"""
AS_JSON = {"lr": 0.001, "decay": 0.0001, "answer": "no", "switch": "off", "yes": "y", "code": 10, "octal": 8,
           "hex": 31}


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_values_mean_what_they_mean_in_json(tmp_path):
    data = read_config_file(write(tmp_path, "c.yaml", YAML_12)).data
    assert data == AS_JSON
    assert [type(value) for value in data.values()] == [type(value) for value in AS_JSON.values()]


def test_pyyaml_would_get_them_wrong(tmp_path):
    """Why the loader is ruamel.yaml's: PyYAML reads 1e-3 as a string, no/off as false and 010 as octal 8."""
    yaml = pytest.importorskip("yaml")
    wrong = yaml.safe_load(YAML_12)
    assert (wrong["lr"], wrong["answer"], wrong["switch"], wrong["code"]) == ("1e-3", False, False, 8)


def test_yaml_becomes_plain_dicts_lists_and_scalars(tmp_path):
    text = ("a:\n  b: [1, 2.5, x, true, null]\n  c: {d: 'q'}\nanchored: &x {k: 1}\nalias: *x\n"
            "merged:\n  <<: *x\n  m: 2\nblock: |\n  two\n  lines\n")
    data = read_config_file(write(tmp_path, "c.yml", text)).data
    assert data == {"a": {"b": [1, 2.5, "x", True, None], "c": {"d": "q"}}, "anchored": {"k": 1}, "alias": {"k": 1},
                    "merged": {"m": 2, "k": 1}, "block": "two\nlines\n"}

    def types(value):
        if isinstance(value, dict):
            return [(type(value), [types(v) for v in value.values()])]
        if isinstance(value, list):
            return [(type(value), [types(v) for v in value])]
        return type(value)

    assert "ruamel" not in repr(types(data))  # dict, list, int, float, str, bool, NoneType only
    data["alias"]["k"] = 5
    assert data["anchored"] == {"k": 1}  # an alias is a copy, not the same object


def test_the_line_of_each_value_in_yaml_and_json(tmp_path):
    yaml = read_config_file(write(tmp_path, "c.yaml", "# note\nname: x\ntrainer:\n  epochs: 3\n"
                                                       "metrics:\n  - accuracy\n  - {type: top_k_acc}\n"))
    assert yaml.lines == {"name": 2, "trainer": 3, "trainer.epochs": 4, "metrics": 5, "metrics.0": 6, "metrics.1": 7,
                          "metrics.1.type": 7}
    text = '{\n  "name": "x",\n  "trainer": {\n    "epochs": 3\n  },\n  "metrics": ["a{", "b\\"]"]\n}\n'
    assert read_config_file(write(tmp_path, "c.json", text)).lines == {
        "name": 2, "trainer": 3, "trainer.epochs": 4, "metrics": 6, "metrics.0": 6, "metrics.1": 6}


def paths_of(value, prefix: str = "") -> list[str]:
    """Every dotted key of a JSON value."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return [path for key, child in items for path in (f"{prefix}{key}", *paths_of(child, f"{prefix}{key}."))]


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(alphabet="ab.{}\"\\ \n", min_size=1), inner, max_size=3),
                           max_leaves=12)


@given(st.dictionaries(st.text(alphabet="abc", min_size=1), JSON_VALUES, max_size=4), st.sampled_from([None, 1, 4]))
def test_json_positions_find_every_value_however_it_is_written(config, indent):
    text = json.dumps(config, indent=indent)
    lines = json_lines(text)
    assert set(lines) == set(paths_of(config))
    assert all(1 <= line <= text.count("\n") + 1 for line in lines.values())


def test_a_json_file_reads_as_the_json_module_reads_it(tmp_path):
    text = '{"answer": "no", "code": 10, "lr": 1e-3, "x": NaN}'
    path = write(tmp_path, "c.json", text)
    assert read_config_file(path).data.keys() == json.loads(text).keys() == read_json(path).keys()
    assert read_config_file(path).data["lr"] == 0.001


@pytest.mark.parametrize("text, message", [
    ("a: [1, 2\nb: 3\n", r"c\.yaml is not valid YAML: expected ',' or ']', but got ':' at line 2 column 2$"),
    ("a: 1\na: 2\n", r"c\.yaml is not valid YAML: found duplicate key \"a\" .* at line 2 column 1$"),
    ("a:\n\tb: 1\n", r"c\.yaml is not valid YAML: .*'\\t'.* at line 2"),
    ("a: 1\n---\nb: 2\n", r"c\.yaml is not valid YAML: but found another document at line 2"),
    ("a:\n  when: 2024-01-01\n", r"c\.yaml line 2: a\.when is a date \(2024-01-01\); .*: quote it to make it a "
                                r"string$"),
    ("a:\n  - !python/object:os.system x\n", r"c\.yaml line 2: a\.0 is tagged !python/object:os.system"),
    ("s: !!set {x, y}\n", r"c\.yaml line 1: s is a set "),
    ("m: !foo {a: 1}\n", r"c\.yaml line 1: m is tagged !foo; .*: leave out the tag$"),
    ("a:\n  1: x\n", r"c\.yaml line 2: the key 1 in a is a number; a config's keys are strings: quote it$"),
    ("- 1\n- 2\n", r"c\.yaml must hold a YAML mapping \(key: value lines\), not a list$"),
    ("just text\n", r"c\.yaml must hold a YAML mapping \(key: value lines\), not a string$"),
    ("# only a comment\n", r"c\.yaml is empty; write a YAML mapping in it"),
    ("", r"c\.yaml is empty; write a YAML mapping in it"),
    ("a: " + "[" * 100 + "]" * 100 + "\n", r"c\.yaml is nested too deeply for a config"),
])
def test_yaml_mistakes_name_the_file_the_line_and_the_fix(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        read_config_file(write(tmp_path, "c.yaml", text))


def test_a_missing_yaml_file_is_named(tmp_path):
    with pytest.raises(UserError, match=r"config file .*nope\.yml not found; give an existing file with -c"):
        read_config_file(tmp_path / "nope.yml")
