"""Settings: one immutable object built once at the edge from defaults, environment and flags.

Only this module reads the environment and the command line; everything else receives a
`Settings`. It imports nothing but the standard library, so a skipped cycle stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from retraining.errors import UsageError

ENV_PREFIX = "RETRAIN_"
# The candidate training sets retraining can choose from (see retraining/windows.py).
TRAINING_WINDOWS = ("all", "recent", "weighted")
# What trains the challenger: the domain's train_model in this process, or its
# train_spark_model on a Spark cluster (retraining/spark_engine.py).
ENGINES = ("default", "spark")


@dataclasses.dataclass(frozen=True)
class Settings:
    project_dir: Path
    new_dir: Path
    used_dir: Path
    model_dir: Path
    quarantine_dir: Path
    domain_file: Path
    tracking_uri: str
    store_timeout: float
    experiment: str
    model_name: str
    alias: str
    label_column: str
    min_new_files: int
    settle_seconds: float
    drift_p_value: float
    drift_min_effect: float
    drift_trigger: float | None
    error_threshold: float
    min_improvement: float
    holdout_fraction: float
    seed: int
    min_heldout_files: int
    min_heldout_rows: int
    max_file_regression: float
    max_recall_drop: float
    confidence_level: float
    bootstrap_resamples: int
    require_significance: bool
    non_inferiority_margin: float
    rise_trigger: bool
    rise_confidence: float
    auto_rollback: bool
    earlier_versions: int
    training_windows: tuple[str, ...]
    recent_files: int
    recency_half_life: float
    validation_fraction: float
    window_sample_rows: int
    strict_history: bool
    columnar_history: bool
    threads: int | None  # None: the cores free at each heavy step; 0: OMP_NUM_THREADS decides
    engine: str
    spark_master: str
    spark_executor_wait: float  # seconds; 0: for ever
    dry_run: bool
    json: bool
    force: bool
    no_alias: bool
    serve_host: str
    serve_port: int
    alias_check_seconds: float

    @property
    def artifact_location(self) -> str | None:
        """Where a new experiment keeps artifacts; None lets a tracking server decide.

        A SQLite store without a server would otherwise put artifacts in `./mlruns` of
        whatever directory cron started in, so they are pinned beside the database.
        """
        database = sqlite_database(self.tracking_uri)
        if database is not None:
            return (database.parent / "artifacts").resolve().as_uri()
        return None

    @property
    def alias_lock_path(self) -> Path:
        """The lock under which the alias is read, checked and moved, by a cycle or by hand.

        Beside a SQLite store, so every process using that store shares it; for a tracking
        server, in the project's mlflow_server/, shared by the processes of this machine
        (those elsewhere are seen through the AliasChange runs they record).
        """
        database = sqlite_database(self.tracking_uri)
        if database is not None:
            return database.parent / f".{database.name}.alias.lock"
        return self.project_dir / "mlflow_server" / ".alias.lock"


def sqlite_database(tracking_uri: str) -> Path | None:
    """The file of a `sqlite:///` store; None for any other kind."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):])
    return None


def _checked(convert: Callable[[str], Any], accept: Callable[[Any], bool],
             requirement: str) -> Callable[[str], Any]:
    """A parser: `convert` the text, then refuse a value `accept` rejects, saying `requirement`.

    Every `accept` below is a comparison, which NaN fails: no setting takes NaN.
    """
    def parse(text: str) -> Any:
        value = convert(text)
        if not accept(value):
            raise ValueError(requirement)
        return value

    return parse


_nonnegative_int = _checked(int, lambda value: value >= 0, "must be 0 or more")
_positive_int = _checked(int, lambda value: value >= 1, "must be 1 or more")
_fraction = _checked(float, lambda value: 0.0 < value < 1.0,
                     "must be between 0 and 1, exclusive")
# Below this, the smallest window's sample (a tenth of it) is too few rows to learn from.
_window_sample_rows = _checked(int, lambda value: value >= 1000, "must be 1000 or more")
_nonnegative_float = _checked(float, lambda value: value >= 0.0, "must be a number, 0 or more")
_positive_float = _checked(float, lambda value: value > 0.0, "must be a number above 0")
_finite_float = _checked(float, math.isfinite, "must be a finite number")
# inf would be a wait for ever that says it stops: 0 says so instead.
_wait_seconds = _checked(float, lambda value: 0.0 <= value < math.inf,
                         "must be a number of seconds, 0 or more (0: for ever)")
# MLflow's HTTP timeout is whole seconds, spent once to connect and once for the answer.
_store_timeout = _checked(float, lambda value: value >= 2.0,
                          "must be a number of seconds, 2 or more")
# Under one half, the bound would retrain on a batch where the error fell.
_rise_level = _checked(float, lambda value: 0.5 <= value < 1.0,
                       "must be from 0.5 up to (not including) 1")
# An empty host would bind every interface, which is never what an empty value meant.
_nonempty = _checked(str.strip, bool, "must not be empty")
_port = _checked(int, lambda value: 1 <= value <= 65535, "must be a port, 1 to 65535")
# Each check is one call to the store: more than a few a second only loads it. A day at
# most: an endpoint that checks less often than that does not follow the alias.
_check_interval = _checked(float, lambda value: 0.5 <= value <= 86_400,
                           "must be a number of seconds from 0.5 to 86400 (a day)")
_share = _checked(float, lambda value: 0.0 <= value < 1.0,
                  "must be a share from 0 up to (not including) 1, or off")


def _threads(text: str) -> int | None:
    return None if text.strip().lower() == "auto" else _positive_int(text)


def _share_or_off(text: str) -> float | None:
    return None if text.strip().lower() in {"off", "none"} else _share(text)


def _window_names(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in TRAINING_WINDOWS]
    if unknown:
        raise ValueError(f"names unknown windows {unknown}; known: {', '.join(TRAINING_WINDOWS)}")
    if "all" not in names:
        # It is the fallback when no validation files can be set aside, so it is always there.
        raise ValueError("must include 'all'")
    return names


def _engine(text: str) -> str:
    engine = text.strip().lower()
    if engine not in ENGINES:
        raise ValueError(f"is not an engine; known: {', '.join(ENGINES)}")
    return engine


def _flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("must be true or false")


@dataclasses.dataclass(frozen=True)
class _Option:
    name: str
    parse: Callable[[str], Any]
    help: str
    is_flag: bool = False
    env: str | None = None

    @property
    def env_var(self) -> str:
        return self.env or ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


# Defaults that depend on the project folder are filled in by `_defaults`.
_OPTIONS = {
    option.name: option
    for option in (
        _Option("new_dir", Path, "folder where new labelled CSV files arrive"),
        _Option("used_dir", Path, "folder of every file already consumed (training history)"),
        _Option("model_dir", Path,
                "folder holding the first pre-trained model file (.joblib, .pkl)"),
        _Option("quarantine_dir", Path, "folder where unusable files are moved, with a reason"),
        _Option("domain_file", Path, "Python file defining the domain contract"),
        _Option("tracking_uri", str, "MLflow tracking URI", env="MLFLOW_TRACKING_URI"),
        _Option("store_timeout", _store_timeout,
                "seconds one call to a tracking server may take, retries included, before "
                "the run gives up with exit 75"),
        _Option("experiment", str, "MLflow experiment that receives the runs"),
        _Option("model_name", str, "registered model name"),
        _Option("alias", str, "registry alias that marks the production version"),
        _Option("label_column", str, "name of the label column in every CSV"),
        _Option("min_new_files", _nonnegative_int, "new files needed before a cycle runs"),
        _Option("settle_seconds", _nonnegative_float,
                "files modified more recently than this are left for the next run"),
        _Option("drift_p_value", _fraction, "p-value under which a feature may count as drifted"),
        _Option("drift_min_effect", _nonnegative_float,
                "smallest effect (KS statistic or Cramér's V) that counts as drift"),
        _Option("drift_trigger", _share_or_off,
                "retrain when the share of drifted features passes this ('off': never)"),
        _Option("error_threshold", _finite_float, "production error above which to retrain"),
        _Option("min_improvement", _nonnegative_float, "how much better the challenger must be"),
        _Option("holdout_fraction", _fraction, "share of new files held out for the comparison"),
        _Option("seed", _nonnegative_int,
                "seed for the held-out split, training and the bootstrap"),
        _Option("min_heldout_files", _positive_int,
                "held-out files needed before a challenger may be promoted"),
        _Option("min_heldout_rows", _nonnegative_int,
                "held-out rows needed before a challenger may be promoted"),
        _Option("max_file_regression", _nonnegative_float,
                "how much worse than production the challenger may be on any one held-out "
                "file, in the metric's units ('inf': no cap)"),
        _Option("max_recall_drop", _fraction,
                "share of one class's recall that may be lost, against production's baseline "
                "or against production on the held-out rows, before it counts as a collapse"),
        _Option("confidence_level", _fraction,
                "level of the bootstrap interval of the error difference"),
        _Option("bootstrap_resamples", _positive_int,
                "resamples of the held-out files, and of row slices within them, for the "
                "bootstrap interval"),
        _Option("require_significance", _flag,
                "promote only when the whole bootstrap interval favours the challenger (or, "
                "for one that learnt from more of the same data, stays within "
                "--non-inferiority-margin)",
                is_flag=True),
        _Option("non_inferiority_margin", _nonnegative_float,
                "a challenger that learnt from all of production's data and more (the 'all' "
                "window) may be promoted without being significantly better, when "
                "the interval shows it worse by less than this, in the metric's units (0: "
                "off)"),
        _Option("rise_trigger", _flag,
                "retrain when production's error on the new files is above its error when it "
                "was judged (at --rise-confidence), whatever the threshold", is_flag=True),
        _Option("rise_confidence", _rise_level,
                "how sure the rise trigger must be that the error rose (0.5: above the "
                "baseline at all, as the bootstrap's median says; the gate, not the trigger, "
                "keeps noise from being promoted)"),
        _Option("auto_rollback", _flag,
                "move the alias back when the version a promotion replaced is significantly "
                "better on the next batch (an earlier version can still be promoted beside a "
                "challenger: see --earlier-versions)", is_flag=True),
        _Option("earlier_versions", _nonnegative_int,
                "registered versions before the challenger, newest first, judged beside it on "
                "the held-out files; the best that passes the gate is promoted (0: none)"),
        _Option("training_windows", _window_names,
                "candidate training sets, comma-separated: all, recent, weighted"),
        _Option("recent_files", _positive_int,
                "the 'recent' window: the new files plus whole earlier batches up to this many "
                "files"),
        _Option("recency_half_life", _positive_float,
                "the 'weighted' window: a file's weight halves for every this many files that "
                "arrived after it"),
        _Option("validation_fraction", _fraction,
                "share of the new training files set aside to choose the window"),
        _Option("window_sample_rows", _window_sample_rows,
                "candidate windows are compared by models trained on the same seeded share of "
                "their rows, so that the largest trains on at most this many; the chosen one "
                "is then trained on all its rows"),
        _Option("strict_history", _flag,
                "stop, listing every unusable history file with its reason, instead of moving "
                "them to the quarantine folder", is_flag=True),
        _Option("columnar_history", _flag,
                "keep a columnar copy of each history file (used_gts/.columnar/), read instead "
                "of parsing the CSV again while the file is unchanged", is_flag=True),
        _Option("threads", _threads,
                "threads for the numeric libraries (scikit-learn's OpenMP, BLAS) and a "
                "local[*] Spark master; 'auto': the cores other processes leave free, asked "
                "before each fit"),
        _Option("engine", _engine,
                "what trains the challenger: 'default' (the domain's train_model, here) or "
                "'spark' (its train_spark_model, on --spark-master)"),
        _Option("spark_master", _nonempty,
                "the Spark master the spark engine trains on: local[*] for this machine's "
                "cores, or a cluster's URL (spark://host:7077, yarn, k8s://...); unset, the "
                "spark.master of your Spark configuration, if it has one"),
        _Option("spark_executor_wait", _wait_seconds,
                "seconds a Spark job of the cycle may wait on a cluster that gives it no "
                "executor (no worker free, or none with the memory an executor asks) before "
                "the cycle stops, nothing moved; 0: wait for ever"),
        _Option("dry_run", _flag, "decide and report, change nothing", is_flag=True),
        _Option("json", _flag, "print one JSON summary on stdout", is_flag=True),
        _Option("force", _flag, "replace an existing production alias", is_flag=True),
        _Option("no_alias", _flag, "register without setting the alias", is_flag=True),
        _Option("serve_host", _nonempty, "address the serving endpoint listens on"),
        _Option("serve_port", _port, "port the serving endpoint listens on"),
        _Option("alias_check_seconds", _check_interval,
                "seconds between the serving endpoint's checks of where the alias points"),
    )
}


def _defaults(project_dir: Path) -> dict[str, Any]:
    # Paths resolve from the project folder, never the working directory: cron starts in $HOME.
    return {
        "new_dir": project_dir / "new_gts",
        "used_dir": project_dir / "used_gts",
        "model_dir": project_dir / "model",
        "quarantine_dir": project_dir / "quarantine",
        "domain_file": project_dir / "train_classification_model.py",
        "tracking_uri": "sqlite:///" + str(project_dir / "mlflow_server" / "mlflow.db"),
        # MLflow's own defaults retry one unreachable call for about 4 minutes, and one that
        # hangs for about 20; two minutes is enough for a server that is merely slow.
        "store_timeout": 120.0,
        "experiment": "classifier-retraining",
        "model_name": "classifier",
        "alias": "production",
        "label_column": "label",
        "min_new_files": 15,
        "settle_seconds": 5.0,
        "drift_p_value": 0.01,
        "drift_min_effect": 0.1,
        "drift_trigger": None,
        "error_threshold": 0.10,
        "min_improvement": 0.0,
        # Measured on bench/decision_streams.py: at 0.2 (2 of 10 files) the gate could not
        # see challengers better by 0.005 at an error near 0.02, and production aged.
        "holdout_fraction": 0.4,
        "seed": 42,
        # One file of a few hundred rows is what the smallest batches hold out; below 200 rows
        # one row moves a rate by more than half a point.
        "min_heldout_files": 1,
        "min_heldout_rows": 200,
        # Off by default: a single file's error is noisy, and the right cap depends on the
        # metric's units and the files' sizes. heldout_per_file.csv reports it either way.
        "max_file_regression": float("inf"),
        # A class recalled at under half its reference, significantly: what monitoring
        # retrains on and the gate refuses, whatever the overall error says.
        "max_recall_drop": 0.5,
        "confidence_level": 0.95,
        "bootstrap_resamples": 2000,
        "require_significance": True,
        # The most a challenger that learnt from more of the same data may be worse, as far
        # as its held-out files can tell: the benchmark's tolerance for a false promotion.
        "non_inferiority_margin": 0.005,
        "rise_trigger": True,
        # Retraining on any rise, not only a significant one: in a slow drift the error
        # grows by less each night than a batch can show at 95%.
        "rise_confidence": 0.5,
        "auto_rollback": True,
        # A returning concept's model is usually among the last few; each one more costs a
        # model load and a prediction on the held-out files.
        "earlier_versions": 3,
        # About one default batch (--min-new-files): the recent window is usually the new
        # files alone, so an abrupt change is learnt in one cycle; "all" still wins on
        # validation when nothing changed.
        "training_windows": TRAINING_WINDOWS,
        "recent_files": 15,
        "recency_half_life": 15.0,
        "validation_fraction": 0.25,
        # Comparing windows needs models that tell the windows apart, not the best models:
        # candidates train on a common share of their rows, so choosing costs a bounded
        # extra (three fits of at most this many rows) and the larger window keeps its lead
        # in rows. The challenger itself always trains on every row of its window.
        "window_sample_rows": 25_000,
        "strict_history": False,
        "columnar_history": True,
        "threads": None,
        "engine": "default",
        "spark_master": "local[*]",
        # Long enough for a busy cluster to free a worker, or to start one on demand; short
        # enough that a cluster with no room for the job is one line in the morning, not a
        # night's cron slot held by a cycle that only looks alive.
        "spark_executor_wait": 600.0,
        "dry_run": False,
        "json": False,
        "force": False,
        "no_alias": False,
        # Bound to this machine: a shared endpoint goes behind a proxy that authenticates.
        "serve_host": "127.0.0.1",
        "serve_port": 5002,
        # A promotion reaches the endpoint within a minute, for one alias read a minute.
        "alias_check_seconds": 60.0,
    }


# A stand-in project folder, so --help can show path defaults relative to the project.
_SHOWN_PROJECT = Path("/<project>")


def _shown_default(value: Any) -> str:
    """A default as --help shows it: paths relative to the project, flags on/off."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "off"
    if isinstance(value, Path):
        return f"{value.relative_to(_SHOWN_PROJECT)} in the project folder"
    if isinstance(value, str) and value.startswith("sqlite:///" + str(_SHOWN_PROJECT)):
        database = Path(value[len("sqlite:///"):]).relative_to(_SHOWN_PROJECT)
        return f"a SQLite store at {database} in the project folder"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def add_options(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """Add the named settings to a parser; each also reads its environment variable."""
    defaults = _defaults(_SHOWN_PROJECT)
    for name in names:
        option = _OPTIONS[name]
        # argparse %-formats help texts: a % in a default must not be read as a format.
        shown = _shown_default(defaults[name]).replace("%", "%%") if name in defaults else None
        if name == "threads":
            shown = "auto"  # None here is not "off"
        help_text = (f"{option.help} (default: {shown}; env {option.env_var})" if shown
                     else f"{option.help} (env {option.env_var})")
        if option.is_flag and option.flag.startswith("--no-"):
            # BooleanOptionalAction would read --no-alias as the negation of --alias.
            parser.add_argument(option.flag, dest=name, action="store_true", default=None,
                                help=help_text)
        elif option.is_flag:
            parser.add_argument(option.flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            parser.add_argument(option.flag, dest=name, default=None, metavar="VALUE",
                                help=help_text)


def _check_apart(values: Mapping[str, Any]) -> None:
    """The three data folders must not hold one another: a quarantine inside used_gts/ puts
    bad files into history, which breaks every retrain after; one inside new_gts/ is read
    again as new files; new files inside history are history."""
    folders = [("--new-dir", values["new_dir"]), ("--used-dir", values["used_dir"]),
               ("--quarantine-dir", values["quarantine_dir"])]
    for index, (flag, folder) in enumerate(folders):
        for other_flag, other in folders[:index] + folders[index + 1:]:
            if other in folder.parents:
                raise UsageError(f"{flag} {folder} is inside {other_flag} {other}",
                                 fix=f"point {flag} at a folder outside {other_flag}")
        for other_flag, other in folders[:index]:
            if folder == other:
                raise UsageError(f"{flag} is the same folder as {other_flag} ({folder})",
                                 fix=f"point {flag} at a folder of its own")


def build_settings(project_dir: Path, args: argparse.Namespace,
                   environ: Mapping[str, str]) -> Settings:
    """Merge defaults < environment < flags into Settings; a bad value raises UsageError."""
    values = _defaults(project_dir)
    given = set()
    for name, option in _OPTIONS.items():
        raw = getattr(args, name, None)
        source = option.flag
        if raw is None and option.env_var in environ and environ[option.env_var] != "":
            raw, source = environ[option.env_var], option.env_var
        if raw is None:
            continue
        given.add(name)
        if option.is_flag and isinstance(raw, bool):
            values[name] = raw
            continue
        try:
            values[name] = option.parse(raw)
        except ValueError as error:
            raise UsageError(f"{source}={raw!r} {error}",
                             fix=f"give {source} a valid value ({option.help})") from None
    from retraining.threads import LEAVE_ALONE, PERSONS_THREAD_SETTINGS

    if "threads" not in given and any(environ.get(name) for name in PERSONS_THREAD_SETTINGS):
        # Set by the person running it: theirs to decide, as for any OpenMP program.
        values["threads"] = LEAVE_ALONE
    if "spark_master" not in given and values["engine"] == "spark":
        from retraining.spark_engine import users_spark_master

        # A team's spark-defaults.conf (or PYSPARK_SUBMIT_ARGS) that names its cluster is
        # theirs to keep; local[*] is only the default of a machine without one.
        values["spark_master"] = users_spark_master() or values["spark_master"]
    for name in ("new_dir", "used_dir", "model_dir", "quarantine_dir", "domain_file"):
        path = Path(values[name]).expanduser()
        values[name] = (path if path.is_absolute() else Path.cwd() / path).resolve()
    if values["tracking_uri"].startswith("sqlite:///"):
        database = Path(values["tracking_uri"][len("sqlite:///"):]).expanduser()
        values["tracking_uri"] = "sqlite:///" + str(database.resolve())
    _check_apart(values)
    return Settings(project_dir=project_dir, **values)
