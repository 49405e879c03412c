"""tune.py's parts that need no trial: space entries, pruner options, reading a run's metrics.jsonl."""
from __future__ import annotations

import json
import time

import optuna
import pytest

import tune
from tune import Param, make_pruner, parse_param
from utils.errors import UserError


@pytest.mark.parametrize("spec, param", [
    ({"float": [1e-4, 1e-1], "log": True}, Param("optimizer.args.lr", False, "float", (1e-4, 1e-1), True)),
    ({"int": [16, 64], "step": 16}, Param("optimizer.args.lr", False, "int", (16, 64), False, 16)),
    ({"categorical": [32, "a", None, True]}, Param("optimizer.args.lr", False, "categorical", (32, "a", None, True))),
])
def test_well_formed_entries(spec, param):
    assert parse_param("optimizer.args.lr", spec) == param


def test_a_plus_path_adds_a_key_and_semicolons_read_as_dots():
    param = parse_param("+extra;note", {"categorical": ["a", "b"]})
    assert (param.path, param.add, param.override("a")) == ("extra.note", True, '+extra.note="a"')


@pytest.mark.parametrize("spec, message", [
    (0.1, r"^space.json: p: expected an object such as \{\"float\""),
    ({"floot": [0, 1]}, r"unknown key 'floot'. Did you mean 'float'\?"),
    ({}, r"give exactly one of \"float\", \"int\" or \"categorical\", e.g."),
    ({"float": [0, 1], "int": [0, 1]}, r"exactly one of .* \(not float and int\)"),
    ({"categorical": [1, 2], "log": True}, r"\"log\" applies to \"float\" and \"int\" ranges, not to \"categorical\""),
    ({"categorical": []}, r"\"categorical\" takes a non-empty list of choices"),
    ({"categorical": [[1, 2]]}, r"\"categorical\" takes a non-empty list"),
    ({"int": [1.5, 4]}, r"\"int\" takes \[low, high\], two integers, e.g. \[16, 64\]; got \[1.5, 4\]"),
    ({"float": [1]}, r"\"float\" takes \[low, high\], two numbers"),
    ({"float": [1, 0]}, r"low 1 is above high 0; write \[low, high\]"),
    ({"float": [0, 1], "log": True}, r"a log scale needs low > 0, got 0"),
    ({"float": [0.1, 1], "log": True, "step": 0.1}, r"\"log\" and \"step\" cannot be combined"),
    ({"int": [1, 8], "step": 0}, r"\"step\" is a positive integer, got 0"),
    ({"float": [0, 1], "log": "yes"}, r"\"log\" is true or false"),
])
def test_a_malformed_entry_is_one_line_naming_the_path_and_the_fix(spec, message):
    with pytest.raises(UserError, match=message) as info:
        parse_param("p", spec)
    assert len(info.value.problems) == 1 and info.value.problems[0].startswith("space.json: p: ")


def test_pruners_by_name_with_arguments():
    assert isinstance(make_pruner("none"), optuna.pruners.NopPruner)
    assert isinstance(make_pruner("hyperband:min_resource=2"), optuna.pruners.HyperbandPruner)
    median = make_pruner("median:n_startup_trials=1")
    assert (median._n_startup_trials, median._n_warmup_steps) == (1, 1)  # n_warmup_steps defaults to 1
    with pytest.raises(UserError, match="unknown pruner 'medain'. Did you mean 'median'"):
        make_pruner("medain")
    with pytest.raises(UserError, match="'n_startup=1' is not an argument of MedianPruner. Did you mean "
                                        "'n_startup_trials'"):
        make_pruner("median:n_startup=1")
    with pytest.raises(UserError, match="MedianPruner refused"):
        make_pruner("median:n_startup_trials=-1")


def test_monitored_values_come_from_complete_rows_by_step_else_epoch(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"epoch": 1, "val_loss": 2.0}, {"epoch": 1, "step": 30, "val_loss": 1.5}, {"epoch": 2, "val_loss": None},
            {"epoch": 2, "val_loss": float("nan")}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 3, "val_lo')  # a half-written line
    assert tune.monitored(tune.read_rows(path), "val_loss") == [(1, 2.0), (30, 1.5)]
    assert tune.best_value(tune.read_rows(path), "val_loss", "max") == 2.0
    assert tune.read_rows(tmp_path / "missing.jsonl") == []


@pytest.mark.parametrize("name, ok", [("Digits_CNN", True), ("a.b-c", True), ("a/b", False), (".hidden", False)])
def test_study_names_fit_in_run_directory_names(name, ok):
    if ok:
        assert tune.study_name(name, "x") == name
    else:
        with pytest.raises(UserError, match="use letters, digits"):
            tune.study_name(name, "x")


def search_on(storage, tmp_path, heartbeat=60) -> tune.Search:
    study = optuna.create_study(storage=storage, direction="minimize")
    config = {"name": "Digits_CNN", "trainer": {"monitor": "min val_loss", "save_dir": str(tmp_path)}}
    return tune.Search(study, storage, [tmp_path / "config.json"], config, [], ["python"], heartbeat, tmp_path)


def test_of_trials_started_together_for_the_last_places_the_later_ones_hand_theirs_back(tmp_path):
    search = search_on(optuna.storages.InMemoryStorage(), tmp_path)
    study = search.study
    done = study.ask()
    study.tell(done, 1.0)
    trials = [study.ask() for _ in range(3)]  # three workers start a trial at once; 3 places are left of --trials 4
    assert [search.claim(t, 4) for t in trials] == [True, True, True]
    assert [search.claim(t, 3) for t in trials] == [True, True, False]
    with pytest.raises(tune.NoSlot):
        search.objective(trials[2], 3)
    assert study.get_trials()[3].state == optuna.trial.TrialState.WAITING  # back in the queue, never run
    study.tell(trials[0], state=optuna.trial.TrialState.FAIL)  # a place opens: the next trial asked is that one
    assert study.ask().number == 3


def test_a_trial_whose_worker_stopped_beating_is_failed_and_queued_again_with_its_run(tmp_path):
    storage = optuna.storages.InMemoryStorage()  # no Optuna heartbeats: tune.py's own, in a user attr
    search = search_on(storage, tmp_path, heartbeat=1)
    study = search.study
    alive, dead = study.ask(), study.ask()
    for trial, beat in ((alive, time.time()), (dead, time.time() - 10)):
        trial.suggest_float("optimizer.args.lr", 1e-4, 1e-1, log=True)
        trial.set_user_attr("run_dir", f"runs/{trial.number}")
        trial.set_user_attr("heartbeat", beat)
    search.fail_stale_trials()
    states = [t.state for t in study.get_trials()]
    assert states == [optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]
    retry = study.get_trials()[2]
    assert retry.params == study.get_trials()[1].params and retry.user_attrs["run_dir"] == "runs/1"
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 1


def test_a_trial_runs_train_py_on_every_config_file_in_order(tmp_path):
    search = search_on(optuna.storages.InMemoryStorage(), tmp_path)
    search.configs = [tmp_path / "base.yaml", tmp_path / "exp.json"]
    command, _, resumed = search.command(search.study.ask(), {})
    assert command[command.index("-c"):command.index("--run-id")] == ["-c", str(tmp_path / "base.yaml"),
                                                                       "-c", str(tmp_path / "exp.json")]
    assert not resumed
