"""The MLflow side: experiment, runs, the production alias, and logging new versions.

Conventions followed: the alias (`models:/<name>@<alias>`) marks production, a new version is
the one `log_model` returns, every logged model carries a signature, an input example and
explicit requirements, and the reasons for a decision are written as tags and descriptions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import importlib.metadata
import logging
import os
import re
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from retraining.config import Settings, sqlite_database
from retraining.errors import NeedsAttention, RetrainingError, TryLater, causes

log = logging.getLogger(__name__)

MONITORING_RUN = "ModelMonitoring"
RETRAINING_RUN = "ModelRetraining"
REGISTRATION_RUN = "FirstModelRegistration"
QUARANTINE_RUN = "DataQuarantine"
# Written by registry_tool.py (retraining/operations.py).
ALIAS_CHANGE_RUN = "AliasChange"
HISTORY_RUN = "RegistryHistory"
BATCH_PREDICTIONS_RUN = "BatchPredictions"

# Passed explicitly because inferring requirements costs seconds per logged model.
_MODEL_REQUIREMENTS = ("mlflow", "scikit-learn", "numpy", "pandas", "scipy", "skops")
# Versions read at a time, newest first: the earlier-version candidates are among the first.
_VERSIONS_PAGE = 20


def model_requirements(packages: tuple[str, ...] = _MODEL_REQUIREMENTS) -> list[str]:
    """The packages a logged version needs where it is loaded, pinned to the ones here."""
    return [f"{package}=={importlib.metadata.version(package)}" for package in packages]


@contextlib.contextmanager
def store_faults(settings: Settings, doing: str = "continue") -> Iterator[None]:
    """Turn a store fault, at any call inside, into one line that says what to do.

    Unreachable, timing out or locked may pass by itself: TryLater (exit 75). Refused
    credentials, a full disk, a file that is not a database or one whose schema is older than
    this MLflow need a person: NeedsAttention (exit 1). Any other error passes unchanged.
    """
    try:
        yield
    except RetrainingError:
        raise
    except Exception as error:
        fault = _store_fault(settings, doing, error)
        if fault is None:
            raise
        raise fault from error


def _store_fault(settings: Settings, doing: str, error: Exception) -> RetrainingError | None:
    import requests
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    uri = settings.tracking_uri
    for cause in causes(error):
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
            return _disk_full(cause.filename or _fullest_place(settings), doing)
        if isinstance(cause, sqlite3.OperationalError):
            if "database is locked" in str(cause):
                return _locked(settings, doing)
            if "database or disk is full" in str(cause):
                return _disk_full(_store_location(settings), doing)
        if isinstance(cause, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                              requests.exceptions.RetryError)):
            return _unreachable(settings, doing, cause)
        status = getattr(getattr(cause, "response", None), "status_code", None)
        if isinstance(cause, MlflowException):
            status = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}.get(cause.error_code)
            if "out-of-date database schema" in str(cause):
                return NeedsAttention(
                    f"the MLflow store at {uri} was made by an older MLflow",
                    fix=f"back up the database, then run: mlflow db upgrade {uri}; "
                        "no file was archived")
        if status == 401:
            return NeedsAttention(
                f"the tracking server at {uri} refused the credentials (HTTP 401) to {doing}",
                fix="set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
                    "MLFLOW_TRACKING_TOKEN) in the environment cron gives this job; "
                    "no file was archived")
        if status == 403 and "Invalid Host header" in str(cause):
            return NeedsAttention(
                f"the tracking server at {uri} refused the Host header of the request (HTTP "
                f"403, its guard against DNS rebinding) to {doing}",
                fix="start the server with --allowed-hosts naming the host and port clients "
                    "use (see the README's shared server), or use the address it allows; "
                    "no file was archived")
        if status == 403:
            return NeedsAttention(
                f"the tracking server at {uri} denied permission to {doing}{_endpoint(cause)} "
                f"(HTTP 403): the user of MLFLOW_TRACKING_USERNAME lacks it on experiment "
                f"{settings.experiment!r} or registered model {settings.model_name!r}",
                fix="have an MLflow admin grant that user EDIT on both, or give the job the "
                    "credentials of a user who has it; no file was archived")
    # Checked last: a locked or full database is an OperationalError too.
    for cause in causes(error):
        if isinstance(cause, sqlalchemy.exc.DatabaseError):
            return _unusable_database(uri, cause)
    return None


def _endpoint(cause: Exception) -> str:
    """` (<endpoint>)` when MLflow's message names the REST endpoint that was refused."""
    found = re.search(r"endpoint (/\S+)", str(cause))
    return f" ({found.group(1)})" if found else ""


def _locked(settings: Settings, doing: str) -> TryLater:
    return TryLater(f"the SQLite store at {_store_location(settings)} is locked by another "
                    f"process, still after MLflow's wait (5 s to open it, 20 s a call), so "
                    f"the run could not {doing}",
                    fix="wait for it (a backup, an `mlflow server` or another tool writing "
                        "to it); cron will try again; no file was archived")


def _unreachable(settings: Settings, doing: str, cause: Exception) -> TryLater:
    uri = settings.tracking_uri
    if uri.startswith(("http://", "https://")):
        return TryLater(f"cannot reach the MLflow tracking server at {uri} to {doing} "
                        f"({type(cause).__name__}, within --store-timeout "
                        f"{settings.store_timeout:g} s)",
                        fix="start the tracking server or check --tracking-uri; cron will "
                            "try again; no file was archived")
    return TryLater(f"cannot reach the MLflow store at {uri} to {doing} "
                    f"({type(cause).__name__})",
                    fix="check the network and --tracking-uri; cron will try again; "
                        "no file was archived")


def _disk_full(where, doing: str) -> NeedsAttention:
    return NeedsAttention(f"no space left on the filesystem holding {where}, so the run could "
                          f"not {doing}",
                          fix=f"free space there (df {where}), then run again; files not yet "
                              "archived are still in their folder")


def _fullest_place(settings: Settings) -> str:
    """Of the folders a run writes to, the one whose filesystem has the least space left.

    A failed write() carries no file name, so the folders are asked instead.
    """
    database = sqlite_database(settings.tracking_uri)
    artifacts = settings.artifact_location
    places = [database.parent if database is not None else None,
              Path(artifacts[len("file://"):]) if artifacts else None,
              settings.used_dir, settings.new_dir, settings.quarantine_dir,
              Path(tempfile.gettempdir())]
    free = {}
    for place in places:
        if place is not None and place.is_dir():
            status = os.statvfs(place)
            free[place] = status.f_bavail * status.f_frsize
    return str(min(free, key=free.get)) if free else "a folder this run writes to"


def _store_location(settings: Settings) -> str:
    """The database file of a SQLite store, else the store's URI."""
    database = sqlite_database(settings.tracking_uri)
    return str(database) if database is not None else settings.tracking_uri


def check_store_exists(tracking_uri: str) -> None:
    """Refuse a SQLite store whose file is missing, which MLflow would create empty.

    A deleted or mistyped store would otherwise be silently replaced by an empty one, and the
    fix it leads to (register the first model) would put a stale model back in production.
    Only register_first_model.py, which starts a project, goes without this check.
    """
    database = sqlite_database(tracking_uri)
    if database is not None and not database.is_file():
        raise NeedsAttention(f"no MLflow store at {database}",
                             fix="restore it from a backup, or check --tracking-uri; "
                                 "register_first_model.py starts a new store only for a new "
                                 "project")


def _unusable_database(tracking_uri: str, error: Exception) -> NeedsAttention:
    cause = str(getattr(error, "orig", error)).splitlines()[0]
    return NeedsAttention(f"the MLflow store at {tracking_uri} cannot be used ({cause})",
                          fix="restore the database from a backup or point --tracking-uri at "
                              "the right store; no file was archived")


# The signature's column types whose cells a new file is checked against (datafiles); others
# (datetime, binary) are left to the model.
_KIND_OF_TYPE = {"double": "number", "float": "number", "long": "number", "integer": "number",
                 "string": "text"}


@dataclasses.dataclass(frozen=True)
class ProductionModel:
    version: str
    model: Any
    input_columns: list[str] | None  # from the version's signature, when it has one
    input_kinds: dict | None = None  # column -> "number" or "text", from the signature
    label_kind: str | None = None  # the kind of labels it was trained on (tag label_kind)
    # The AliasChange runs (moves by hand) recorded when it was loaded: one recorded later
    # means a person moved the alias during the cycle (see Registry.moved_by_hand_since).
    hand_moves_seen: frozenset = frozenset()
    tags: dict = dataclasses.field(default_factory=dict)  # the version's tags when loaded


class Registry:
    """One tracking store and one registered model, as the settings name them."""

    def __init__(self, settings: Settings, new_store: bool = False):
        """Open the store; a SQLite file that does not exist is refused unless `new_store`."""
        import mlflow

        if not new_store:
            check_store_exists(settings.tracking_uri)
        self._settings = settings
        self._mlflow = mlflow
        # A dry run reads the store but writes nothing to it: no experiment, run or version.
        self.read_only = settings.dry_run
        mlflow.set_tracking_uri(settings.tracking_uri)
        self.client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri)
        self.experiment_id = self._store_call("open the experiment", self._ensure_experiment)

    @property
    def model_name(self) -> str:
        return self._settings.model_name

    def _store_call(self, doing: str, call, *args, **kwargs):
        """Call the store; a store that cannot be reached becomes TryLater."""
        with store_faults(self._settings, doing):
            return call(*args, **kwargs)

    def _ensure_experiment(self) -> str:
        experiment = self.client.get_experiment_by_name(self._settings.experiment)
        if experiment is not None and experiment.lifecycle_stage == "deleted":
            # MLflow keeps a deleted experiment's name taken, and refuses runs in it.
            uri = self._settings.tracking_uri
            raise NeedsAttention(
                f"experiment {experiment.name!r} (id {experiment.experiment_id}) is deleted "
                f"in the MLflow store at {uri}",
                fix=f"restore it: MLFLOW_TRACKING_URI={uri} mlflow experiments restore "
                    f"--experiment-id {experiment.experiment_id}, or choose another "
                    "--experiment; no file was archived")
        if experiment is not None or self.read_only:
            return experiment and experiment.experiment_id
        return self.client.create_experiment(self._settings.experiment,
                                             artifact_location=self._settings.artifact_location)

    # --- the production alias -------------------------------------------------------------

    def production_version(self) -> str | None:
        """The version the alias points at, or None when there is no such alias yet."""
        from mlflow.exceptions import MlflowException

        try:
            found = self._store_call("read the alias", self.client.get_model_version_by_alias,
                                     self.model_name, self._settings.alias)
        except MlflowException as error:
            if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        return str(found.version)

    def load_production(self, version: str | None = None) -> ProductionModel:
        """Load the version behind the alias once, by number, so a moving alias cannot split it.

        `version`: load that one as production instead (a dry run that would have moved
        the alias goes on as if it had)."""
        # Read before the alias: a move by hand in between is then seen as one.
        hand_moves = frozenset(run.info.run_id for run in self.hand_moves())
        version = version or self.production_version()
        if version is None:
            raise NeedsAttention(
                f"registered model {self.model_name!r} has no alias {self._settings.alias!r}",
                fix="run register_first_model.py to register the first model")
        # The model first: its files missing is said by load_version, in one line.
        model = self.load_version(version)
        columns, kinds = self.input_schema(version)
        tags = self.version_tags(version)
        return ProductionModel(version=version, model=model,
                               input_columns=columns, input_kinds=kinds,
                               label_kind=tags.get("label_kind"),
                               hand_moves_seen=hand_moves,
                               tags=tags)

    def load_version(self, version: str, flavor: str | None = None):
        """The version's model: as scikit-learn's, or as MLflow's generic model (pyfunc,
        which checks inputs against the signature) when `flavor="pyfunc"` or when it has no
        scikit-learn flavour (a Spark version); its files missing from the artifact store
        is NeedsAttention."""
        import mlflow.pyfunc
        import mlflow.sklearn
        from mlflow.artifacts import download_artifacts
        from mlflow.exceptions import MlflowException
        from mlflow.models import Model

        uri = f"models:/{self.model_name}/{version}"
        try:
            # Downloaded once; the flavours are read from the files already here.
            uri = self._store_call("download the model", download_artifacts, uri)
            flavors = Model.load(uri).flavors
            if flavor is None:
                flavor = "sklearn" if "sklearn" in flavors else "pyfunc"
            if flavor == "pyfunc" and "spark" in flavors:
                # On the cycle's own session, on either engine: sized for the rows it
                # scores, and a missing Java or pyspark is one line, not MLflow's traceback.
                from retraining import spark_engine

                spark_engine.session(self._settings.spark_master, self._settings.threads,
                                     self._settings.spark_executor_wait)
                return spark_engine.with_classes(
                    self._store_call("load the model", mlflow.pyfunc.load_model, uri),
                    f"{self.model_name!r} version {version}")
            load = mlflow.pyfunc.load_model if flavor == "pyfunc" else mlflow.sklearn.load_model
            return self._store_call("load the model", load, uri)
        except (MlflowException, FileNotFoundError) as error:
            if getattr(error, "error_code", "RESOURCE_DOES_NOT_EXIST") != "RESOURCE_DOES_NOT_EXIST":
                raise
            where = self._store_call("find the model's files",
                                     self.client.get_model_version_download_uri,
                                     self.model_name, version)
            raise NeedsAttention(
                f"the files of {self.model_name!r} version {version} are missing from the "
                f"artifact store at {where}",
                fix="restore that folder from a backup; if it is lost, point the alias at a "
                    "version that loads (registry_tool.py set-alias NAME VERSION --reason "
                    "...); no file was archived") from error

    def input_columns(self, version: str) -> list[str] | None:
        return self.input_schema(version)[0]

    def input_schema(self, version: str) -> tuple[list[str] | None, dict[str, str] | None]:
        """The input columns of the version's signature, and whether each takes numbers or
        text; (None, None) when it has no signature."""
        info = self._mlflow.models.get_model_info(f"models:/{self.model_name}/{version}")
        if info.signature is None:
            return None, None
        inputs = info.signature.inputs
        kinds = {}
        for spec in inputs.inputs:
            type_name = str(getattr(spec.type, "name", spec.type))
            if spec.name is not None and type_name in _KIND_OF_TYPE:
                kinds[spec.name] = _KIND_OF_TYPE[type_name]
        return inputs.input_names(), kinds

    def set_alias(self, version: str) -> None:
        self._store_call("move the alias", self.client.set_registered_model_alias,
                         self.model_name, self._settings.alias, version)

    def alias_lock(self):
        """Hold while the alias is read, checked and moved: a cycle's promotion and a move
        by hand (registry_tool.py) never interleave. MLflow has no compare-and-set."""
        from retraining.runlock import alias_lock

        if self.read_only:  # a dry run moves nothing, and writes no lock file either
            return contextlib.nullcontext()
        return alias_lock(self._settings.alias_lock_path)

    def hand_moves(self) -> list:
        """The AliasChange runs recorded for this model's alias, whatever their status."""
        if self.experiment_id is None:
            return []
        return self._store_call(
            "read the alias history", self.client.search_runs, [self.experiment_id],
            f"attributes.run_name = '{ALIAS_CHANGE_RUN}' and "
            f"tags.model_name = '{_quoted(self.model_name)}' and "
            f"tags.alias = '{_quoted(self._settings.alias)}'", max_results=50000)

    def versions_newest_first(self) -> Iterator[tuple[str, dict]]:
        """(version, tags) of the model's registered versions, newest first, a page at a time:
        a cycle wants the newest few, and years of versions must not slow every night."""
        token = None
        while True:
            page = self._store_call(
                "list the model's versions", self.client.search_model_versions,
                f"name='{_quoted(self.model_name)}'", max_results=_VERSIONS_PAGE,
                order_by=["version_number DESC"], page_token=token)
            yield from ((str(v.version), dict(v.tags)) for v in page)
            token = page.token
            if not token:
                return

    def turned_away_from(self, version: str) -> str | None:
        """How the alias was moved away from `version` by a person or by probation, if it
        ever was: such a version is never promoted again automatically.

        Whatever the move's run status: one stopped after MLflow moved the alias ends FAILED
        or stays RUNNING, and even one stopped before says what the person wanted."""
        for run in self.hand_moves():
            tags = run.data.tags
            if tags.get("from_version") == version:
                return (f"{tags.get('action', 'a move')} to version {tags.get('to_version')} "
                        f"by {tags.get('changed_by', '?')}: {tags.get('reason', '')!r}")
        return None

    def moved_by_hand_since(self, production: ProductionModel) -> str | None:
        """Why the alias may not be moved from `production` now, or None when it may.

        It may not when it no longer points at `production`'s version, or when a person moved
        it (an AliasChange run) since `production` was loaded, even if it was moved back: the
        cycle compared its challenger with that version only, and a person's decision
        outranks the cycle's. Call under `alias_lock`.
        """
        current = self.production_version()
        # A move that failed or was cut short before the alias moved changed nothing; one cut
        # short after it is seen in `current`.
        moves = sorted((run for run in self.hand_moves()
                        if run.info.run_id not in production.hand_moves_seen
                        and run.info.status not in ("FAILED", "KILLED")),
                       key=lambda run: run.info.start_time)
        if current == production.version and not moves:
            return None
        done = "; ".join(f"{run.data.tags.get('action', 'a move')} to version "
                         f"{run.data.tags.get('to_version', '?')} by "
                         f"{run.data.tags.get('changed_by', '?')}: "
                         f"{run.data.tags.get('reason', '')!r}" for run in moves)
        now = f"it now points at version {current}" if current else "it no longer exists"
        return (f"alias moved by hand during the cycle ({done or 'outside registry_tool.py'}); "
                f"{now}, while the challenger was compared with version "
                f"{production.version}, so nothing was promoted")

    def annotate_version(self, version: str, tags: Mapping[str, Any],
                         description: str | None = None) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.model_name, version, key, str(value))
        if description is not None:
            self.client.update_model_version(self.model_name, version, description=description)

    def version_tags(self, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(self.model_name, version).tags)

    # --- runs -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def run(self, run_name: str, tags: Mapping[str, str]) -> Iterator[Any]:
        """A run in the cycle's experiment; an exception inside marks it FAILED.

        Yields None in a dry run, where the log_* calls inside write nothing.
        """
        if self.read_only:
            log.info("dry run: %s is not logged", run_name)
            yield None
            return
        with self._store_call("start a run", self._mlflow.start_run,
                              experiment_id=self.experiment_id, run_name=run_name,
                              tags=dict(tags)) as active:
            yield active

    def log_summary(self, params: Mapping[str, Any] | None = None,
                    metrics: Mapping[str, float] | None = None,
                    tags: Mapping[str, Any] | None = None) -> None:
        """Log to the active run in one batch per kind; None values are left out."""
        if self.read_only:
            return
        if params:
            self._mlflow.log_params({k: v for k, v in params.items() if v is not None})
        if metrics:
            self._mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        if tags:
            self._mlflow.set_tags({k: str(v) for k, v in tags.items() if v is not None})

    def log_to_run(self, run_id: str, metrics: Mapping[str, float],
                   tags: Mapping[str, Any]) -> None:
        """Add metrics and tags to a run that has already ended."""
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts_to_run(self, run_id: str, folder, artifact_path: str) -> None:
        """Add a folder's files to a run that has already ended, under `artifact_path`."""
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    def close_interrupted_runs(self, new_dir: str) -> list[str]:
        """Mark this folder's runs that a killed cycle left RUNNING as KILLED; return their ids.

        Safe under the run lock: no other cycle on this folder can be running.
        """
        if self.read_only or self.experiment_id is None:
            return []
        stale = self.client.search_runs(
            [self.experiment_id],
            f"attributes.status = 'RUNNING' and tags.new_dir = '{_quoted(new_dir)}'")
        for run in stale:
            self.client.set_tag(run.info.run_id, "interrupted", "a later cycle found it running")
            self.client.set_terminated(run.info.run_id, status="KILLED")
            log.warning("run %s (%s) was interrupted; marked KILLED", run.info.run_id,
                        run.info.run_name)
        return [run.info.run_id for run in stale]

    def runs_deciding(self, new_dir: str) -> list:
        """This folder's retraining runs whose promotion was begun and not settled."""
        if self.read_only or self.experiment_id is None:
            return []
        return self.client.search_runs(
            [self.experiment_id],
            f"attributes.run_name = '{RETRAINING_RUN}' and tags.decision = 'promoting' and "
            f"tags.new_dir = '{_quoted(new_dir)}'")

    def challengers_for_batch(self, batch: str) -> list[tuple[str, Any]]:
        """(version, run) of each challenger already registered for this batch, oldest first.

        Found through the retraining run's batch tag, which is set before the model is
        logged, so a cycle killed at any point after registration is recognised. Versions
        already judged orphaned are left out.
        """
        runs = self.client.search_runs(
            [self.experiment_id] if self.experiment_id else [],
            f"attributes.run_name = '{RETRAINING_RUN}' and tags.batch_key = '{batch}'",
            order_by=["attributes.start_time ASC"])
        found = []
        for run in runs:
            versions = self.client.search_model_versions(
                f"name='{_quoted(self.model_name)}' and run_id='{run.info.run_id}'")
            found += [(str(version.version), run) for version in versions
                      if version.tags.get("decision") not in ("orphaned", "promoted")]
        return found

    def record_quarantine(self, quarantined: Sequence[Mapping[str, Any]]) -> None:
        """A run listing the files set aside and why, so the UI explains where they went."""
        with self.run(QUARANTINE_RUN, {"quarantined_files": str(len(quarantined))}) as active:
            if active is not None:
                self._mlflow.log_metric("quarantined_files", len(quarantined))
                self._mlflow.log_dict({"files": list(quarantined)}, "quarantined_files.json")

    def copy_artifacts(self, run_id: str, names: Sequence[str]) -> None:
        """Log artifacts of another run (top-level files) to the active run as well."""
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            for name in names:
                self._mlflow.log_artifact(self.client.download_artifacts(run_id, name, folder))

    def log_artifact(self, path) -> None:
        self._mlflow.log_artifact(str(path))

    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        self._mlflow.log_dict(dict(data), name)

    def log_training_inputs(self, datasets: Sequence[tuple[str, str, str, str]]) -> None:
        """Log dataset lineage without copying the data: (name, folder, digest, context)."""
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource

        for name, folder, digest, context in datasets:
            dataset = MetaDataset(source=LocalArtifactDatasetSource(folder), name=name,
                                  digest=digest[:20])
            self._mlflow.log_input(dataset, context=context)

    def log_model_version(self, model, features, predictions) -> str:
        """Log `model` in the active run, register it, and return the new version number.

        A scikit-learn model is saved with skops, trusting exactly the types this model was
        built from here, so it loads later without a warning and without unpickling
        arbitrary code; a Spark one (retraining/spark_engine.py) with MLflow's Spark flavour.
        """
        from mlflow.models import infer_signature

        from retraining import spark_engine  # imports no pyspark itself

        sample = signature_sample(features)
        if isinstance(model, spark_engine.SparkModel):
            # Of the sample only: the training rows may be millions.
            signature = infer_signature(spark_engine.as_doubles(sample), predictions)
            info = self._store_call(
                "log the model", spark_engine.log_model, model, signature=signature,
                input_example=spark_engine.as_doubles(features.head(5)),
                registered_model_name=self.model_name)
            return str(info.registered_model_version)
        signature = infer_signature(sample, predictions)
        import mlflow.sklearn
        import skops.io

        trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
        info = self._store_call(
            "log the model", mlflow.sklearn.log_model, model, name="model",
            signature=signature, input_example=features.head(5),
            pip_requirements=model_requirements(), serialization_format="skops",
            skops_trusted_types=trusted, registered_model_name=self.model_name)
        return str(info.registered_model_version)


def signature_sample(frames, head: int = 1000):
    """Rows enough to infer the same signature as the frames stacked, at a bounded cost.

    `frames`: one frame, or several (the history's files) that are never stacked whole. The
    first `head` rows, and the first row of each further frame (stacked, an integer column
    of one file and a float column of another is a float), give the columns' types; so does
    the first value of each column in each frame, since a text column's type is read from
    its values and the first rows may all be gaps. For each column with a gap anywhere, one
    row where it is missing is added, since that gap is what marks the column optional in
    the signature. Inferring on a million rows took a third of a second for the same answer.
    """
    import numpy as np
    import pandas as pd

    frames = [frames] if isinstance(frames, pd.DataFrame) else list(frames)
    parts, left, gapped = [], head, np.zeros(frames[0].shape[1], dtype=bool)
    for frame in frames:
        missing = frame.isna().to_numpy()
        gaps, present = missing.any(axis=0), (~missing).any(axis=0)
        first_gaps, gapped = gaps & ~gapped, gapped | gaps
        rows = set(range(min(max(left, 1), len(frame))))
        left -= len(rows)
        rows.update(int(index) for index in missing[:, first_gaps].argmax(axis=0))
        rows.update(int(index) for index in (~missing)[:, present].argmax(axis=0))
        parts.append(frame.iloc[sorted(rows)])
    return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


def _quoted(text: str) -> str:
    return text.replace("'", "\\'")
