"""The "mlflow" logger: a run's rows, parameters and files in an MLflow run (pip install -r requirements-mlflow.txt).

mlflow is imported only when the logger is built (its import takes about a second, and it is an optional extra): the
config's validation checks that it is installed without importing it, and a run that does not name it never does.

Where:    the logger's tracking_uri, else MLFLOW_TRACKING_URI, else sqlite:///<trainer.save_dir>/mlflow.db (a SQLite
          store: a new experiment keeps its files beside it, in mlartifacts/). The experiment is the config's name,
          the run's name its run id.
What:     parameters: the config, one dotted key per value (values cut at 500 characters); metrics: each row's numbers
          (metrics.jsonl's keys) at the row's "step", else at its epoch, and loss_step at its step; values by class
          and confusion matrices: per_class/epoch-<N>.json (step-<N>.json for a row with a step) with the class
          names in per_class/classes.json; at the end config.json, model_best.pth's inference weights
          (model/model_best.safetensors) and the run's plots (plots/*.png); tags: the git commit
          (mlflow.source.git.commit), the command line (command) and the run directory (run_dir); the status as
          training ends: FINISHED, KILLED (stopped, to be resumed) or FAILED.
Resuming: the MLflow run's id is kept in <log_dir>/mlflow_run_id, and a resumed run continues that MLflow run. A
          metric's history is append-only in MLflow: the histories are read once at the start, and a value at a step
          its history already holds is not logged again (a resume is bit-exact: the rows after the checkpoint come
          again with the same values; only their timing differs, and the first one logged stays). A parameter that
          the resume changed is kept as it was, the change noted in the tag param_changed.<key> ("old -> new").
Nesting:  parent_run_id sets the tag mlflow.parentRunId: tune.py gives its trials the study's run (study_run).
Several processes (tune.py's workers and their trials) may share one SQLite store: MLflow waits for the file's lock
(busy_timeout), and the creation of the store's tables and of an experiment, which MLflow does not guard between
processes, happens under a lock file beside the database (<db>.lock).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from logger.reporter import RunInfo, Sink, is_number
from utils.checkpoint import EVALUATE, RunDirs, best_in, inference_weights, load_checkpoint
from utils.errors import PROJECT_ROOT, UserError
from utils.manifest import git_commit
from utils.util import flatten, write_text_atomic

if TYPE_CHECKING:
    from mlflow import MlflowClient

INSTALL = "pip install -r requirements-mlflow.txt"
RUN_ID_FILE = "mlflow_run_id"  # in the log directory: the MLflow run a resumed run continues
PARAM_LIMIT = 500  # characters of a parameter's value that every MLflow server takes (newer ones take 6000)
TAG_LIMIT = 5000  # characters of a tag's value, likewise
STUDY_TAG = "tune.study"  # the tag that marks a tune.py study's run (its value: the study's name)
_log = logging.getLogger("trainer")


def tracking_uri(given: str | None, save_dir: str | Path) -> str:
    """Where runs go: given (the logger's tracking_uri), else MLFLOW_TRACKING_URI, else a SQLite store under save_dir
    (sqlite:///<save_dir>/mlflow.db, the path made absolute)."""
    return given or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(save_dir).resolve() / 'mlflow.db'}"


class MLflowRun(Sink):
    """The run as an MLflow run (this module's docstring says what goes where). Built on rank 0 only, like every
    logger; it connects to the store when training starts."""

    requires = {"mlflow": INSTALL}

    def __init__(self, dirs: RunDirs, tracking_uri: str | None = None, parent_run_id: str | None = None):
        """tracking_uri: the MLflow store or server (default: MLFLOW_TRACKING_URI, else
        sqlite:///<trainer.save_dir>/mlflow.db); parent_run_id: the MLflow run this one is nested under (tune.py
        sets it for its trials)."""
        import mlflow  # noqa: F401  (here, not at the top: slow, and an optional extra)

        self.dirs, self.given_uri, self.parent_run_id = dirs, tracking_uri, parent_run_id
        self.client: MlflowClient | None = None
        self.run_id: str | None = None
        self.run = RunInfo()
        self.logged: dict[str, set[int]] = {}  # the steps each metric's history held at the start (a resumed run)

    def start(self, run: RunInfo) -> None:
        """Continue the MLflow run the log directory names, else create one; log the parameters and tags."""
        from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

        self.run = run
        config = dict(run.config)
        uri = tracking_uri(self.given_uri, config.get("trainer", {}).get("save_dir", "saved"))
        self.client, experiment_id = open_experiment(uri, config.get("name") or "Default")
        params = self._continue() if (Path(self.dirs.log_dir) / RUN_ID_FILE).is_file() else None
        if params is None:
            params = self._create(experiment_id)
        self._log_params(as_params(config), params)
        commit = git_commit(PROJECT_ROOT)
        self._tags({"command": shlex.join(sys.orig_argv), "run_dir": str(self.dirs.checkpoint_dir),
                    **({MLFLOW_GIT_COMMIT: commit} if commit else {})})
        if run.classes:
            self.client.log_dict(self.run_id, list(run.classes), "per_class/classes.json")

    def _continue(self) -> dict[str, str] | None:
        """Continue the run whose id the log directory keeps (status RUNNING again, its metric histories' steps read);
        its parameters, or None when the store has no such run (another store, or a deleted run)."""
        from mlflow.exceptions import MlflowException

        path = Path(self.dirs.log_dir) / RUN_ID_FILE
        run_id = path.read_text().strip()
        try:
            found = self.client.get_run(run_id)
        except MlflowException:
            found = None
        if found is None or found.info.lifecycle_stage != "active":
            _log.warning("MLflow run %s (%s) is not in %s, or was deleted: this run goes on in a new MLflow run",
                         run_id, path, self.client.tracking_uri)
            return None
        self.run_id = run_id
        self.client.update_run(run_id, status="RUNNING")
        self.logged = {key: {m.step for m in self.client.get_metric_history(run_id, key)}
                       for key in found.data.metrics}
        return dict(found.data.params)

    def _create(self, experiment_id: str) -> dict[str, str]:
        """A new MLflow run named after the run id, nested under parent_run_id; its id kept in the log directory."""
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        tags = {MLFLOW_PARENT_RUN_ID: self.parent_run_id} if self.parent_run_id else {}
        created = self.client.create_run(experiment_id, run_name=Path(self.dirs.checkpoint_dir).name, tags=tags)
        self.run_id = created.info.run_id
        write_text_atomic(Path(self.dirs.log_dir) / RUN_ID_FILE, self.run_id + "\n")
        return {}

    def _log_params(self, params: dict[str, str], logged: dict[str, str]) -> None:
        """The parameters the run does not have yet; one it has with another value (MLflow's parameters cannot
        change) is noted as the tag param_changed.<key> = "old -> new"."""
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

        new = [Param(key, value) for key, value in params.items() if key not in logged]
        for batch in _batches(new, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=batch)
        self._tags({f"param_changed.{key}": f"{logged[key]} -> {value}" for key, value in params.items()
                    if key in logged and logged[key] != value})

    def _tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

        for batch in _batches([RunTag(key, value[:TAG_LIMIT]) for key, value in tags.items()],
                              MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=batch)

    def log(self, row: dict, best: Mapping[str, float]) -> None:
        step = row.get("step", row["epoch"])
        self._metrics({key: value for key, value in row.items() if key != "step" and is_number(value)}, step)
        by_class = {key: value for key, value in row.items() if isinstance(value, (list, dict))}
        if by_class:
            place = {key: row[key] for key in ("epoch", "step") if key in row}
            name = f"step-{row['step']}" if "step" in row else f"epoch-{row['epoch']}"
            self.client.log_dict(self.run_id, {**place, **by_class}, f"per_class/{name}.json")

    def log_step(self, row: dict) -> None:
        self._metrics({key: value for key, value in row.items() if key != "step"}, row["step"])

    def _metrics(self, values: Mapping[str, float], step: int) -> None:
        """Log values at step, but those whose history held that step at the start (a resumed run's rows again)."""
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in values.items()
                   if step not in self.logged.get(key, ())]
        for batch in _batches(metrics, MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch)

    def end(self, outcome: str) -> None:
        """The config, model_best.pth's inference weights and the plots as the run's files, then its status. What
        cannot be logged (the store is gone, say) is said in the log: training has ended, and how is what the command
        reports; the other loggers still end and close."""
        if self.run_id is None:  # training ended before it started
            return
        try:
            self.client.log_dict(self.run_id, dict(self.run.config), "config.json")
            self._log_weights(Path(self.dirs.checkpoint_dir))
            plots = sorted({*Path(self.dirs.log_dir).glob("*.png"), *Path(self.dirs.checkpoint_dir).glob("*.png")})
            for plot in plots:
                self.client.log_artifact(self.run_id, str(plot), "plots")
        except Exception as e:
            _log.error("MLflow: the run's files were not all logged to run %s: %s", self.run_id, e)
        try:
            self.client.set_terminated(self.run_id, outcome)
        except Exception as e:
            _log.error("MLflow: run %s could not be marked %s: %s", self.run_id, outcome, e)

    def _log_weights(self, checkpoint_dir: Path) -> None:
        """model_best.pth's inference weights (the averaged ones where the run kept an average; a sharded run's
        model_best folder, its shards joined) as model/model_best.safetensors, with its arch and epoch in the file's
        metadata."""
        best = best_in(checkpoint_dir)
        if best is None:
            return
        import torch
        from safetensors.torch import save_file

        checkpoint = load_checkpoint(best, EVALUATE)
        weights = {name: tensor.detach().clone().contiguous()  # a copy of each: tied weights share storage
                   for name, tensor in inference_weights(checkpoint).items() if isinstance(tensor, torch.Tensor)}
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model_best.safetensors"
            save_file(weights, str(path), metadata={"arch": str(checkpoint.get("arch")),
                                                    "epoch": str(checkpoint["epoch"])})
            self.client.log_artifact(self.run_id, str(path), "model")


def open_experiment(uri: str, name: str) -> tuple["MlflowClient", str]:
    """A client of the store at uri and the id of its experiment `name` (created when new: on a SQLite store, its
    files go to mlartifacts/<name> beside the database rather than MLflow's ./mlruns). A deleted one is a UserError."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    with store_lock(uri):  # MLflow creates a new SQLite store's tables unguarded: one process at a time
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return client, client.create_experiment(name, artifact_location=_artifact_location(uri, name))
            except MlflowException as e:  # created meanwhile by a process that does not take the lock (a server)
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    raise e
    if experiment.lifecycle_stage != "active":
        raise UserError(f"MLflow experiment {name!r} (id {experiment.experiment_id}) in {uri} is deleted: restore it "
                        f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) or delete it for "
                        f"good (mlflow gc), or give the config another name")
    return client, experiment.experiment_id


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI; None for any other store (and an in-memory SQLite)."""
    if not uri.startswith("sqlite:"):
        return None
    import sqlalchemy

    database = sqlalchemy.engine.make_url(uri).database
    return Path(database) if database and database != ":memory:" else None


def _artifact_location(uri: str, name: str) -> str | None:
    """Where a new experiment's files go: beside a SQLite database; the store's default for any other store."""
    database = _sqlite_file(uri)
    return (database.resolve().parent / "mlartifacts" / name).as_uri() if database else None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """While open, no other process holds the lock of the same SQLite store (<db>.lock beside it, on this machine);
    nothing for other stores or where fcntl does not exist."""
    database = _sqlite_file(uri)
    try:
        import fcntl
    except ImportError:  # not on Linux or macOS
        fcntl = None
    if database is None or fcntl is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def study_run(uri: str, experiment: str, study: str, space: Mapping[str, Any]) -> str:
    """The id of the MLflow run that a tune.py study's trials are nested under: the run of experiment tagged
    tune.study=<study>, created (named after the study, the space as its parameters) when there is none. Workers
    starting together agree on one: on a SQLite store finding and creating are one step under its lock; elsewhere
    the oldest such run is the study's and a worker deletes the one it created in vain."""
    from mlflow.entities import Param

    def found() -> list:
        runs = client.search_runs([experiment_id], filter_string=f"tags.`{STUDY_TAG}` = '{study}'")
        return sorted(runs, key=lambda run: (run.info.start_time, run.info.run_id))

    client, experiment_id = open_experiment(uri, experiment)
    with store_lock(uri):
        runs = found()
        if runs:
            return runs[0].info.run_id
        mine = client.create_run(experiment_id, run_name=study, tags={STUDY_TAG: study}).info.run_id
        client.log_batch(mine, params=[Param(_name(f"space.{path}"), json.dumps(spec)[:PARAM_LIMIT])
                                       for path, spec in space.items()])
        oldest = found()[0].info.run_id
    if oldest != mine:
        client.delete_run(mine)
    return oldest


def end_study_run(uri: str, run_id: str, outcome: str, best: Mapping[str, float]) -> None:
    """A study's run at the end of a tune.py search: the best value so far as a metric, then its status."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(uri)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(_name(key), value, now, 0) for key, value in best.items()])
    client.set_terminated(run_id, outcome)


def as_params(config: Mapping) -> dict[str, str]:
    """A config as MLflow parameters: one dotted key per value (a list's items by index, as in overrides:
    metrics.0), each value as JSON (a string as it is) cut at PARAM_LIMIT characters."""
    return {_name(path): (value if isinstance(value, str) else json.dumps(value))[:PARAM_LIMIT]
            for path, value in flatten(config, lists=True).items()}


def _name(key: str) -> str:
    """A key MLflow takes: letters, digits, _ - . / : and spaces, 250 characters at most (others become _)."""
    return re.sub(r"[^\w\-./: ]", "_", key)[:250]



def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
