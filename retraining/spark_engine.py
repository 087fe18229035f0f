"""The Spark engine: the challenger trained by the domain's train_spark_model on a Spark master.

Only the training moves: the cycle still reads and checks every file here (the quarantine,
the ledger and prepare_file see each one), then hands the training rows to Spark, which
trains where its master says (`local[*]`: this machine's cores; a cluster's URL: its
executors). The fitted `PipelineModel` is judged by the same gate on the same held-out
files as any version, then logged with MLflow's Spark flavour; later cycles load it through
its pyfunc (`with_classes`), on either engine.
Imported only when --engine spark is chosen or a Spark version is loaded: a user who never
uses Spark never imports pyspark.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shlex
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

from retraining.errors import NeedsAttention, quoted

log = logging.getLogger(__name__)

# Where a logged Spark version keeps its classes: its MLmodel's metadata.
CLASSES_METADATA = "classes"
# The column the rows' weights travel in when the domain's trainer declares `weight_column`.
WEIGHT_COLUMN = "_retraining_weight"
# What a Spark version needs where it is loaded: the one pinned in requirements-spark.txt.
_MODEL_REQUIREMENTS = ("mlflow", "pyspark", "numpy", "pandas")
# pyspark 4.2 warns at every pandas conversion that it does not yet fully support pandas 3;
# the conversions the cycle makes (numbers, text, missing values) are covered by the tests.
_PANDAS_WARNING = "PySpark does not yet fully support pandas"
# In local mode the whole fit runs in the driver's JVM, whose heap Spark sizes at 1 GB unless
# told: a few million rows of history fail there with OutOfMemoryError. Half of this
# machine's memory (or of the container's limit) is the JVM's when the user has not sized it;
# the rest is this process's.
_LOCAL_DRIVER_SHARE = 0.5
# How often ExecutorWatch asks the driver for its executors and jobs: the wait it bounds is
# minutes, and each look is two calls to the JVM.
_WATCH_SECONDS = 5.0


# What the cycle sets on a Spark session it starts, unless the user set it for Spark already.
_SESSION_DEFAULTS = {
    "spark.app.name": "retraining-cycle",
    # Arrow moves pandas rows to the JVM and back in columns, not row by row.
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.ui.showConsoleProgress": "false",
}
# Where spark-submit takes a setting from a flag of its own, or an environment variable
# (the older SPARK_MEM first: SPARK_DRIVER_MEMORY outranks it).
_SUBMIT_FLAGS = {"--driver-memory": "spark.driver.memory", "--name": "spark.app.name",
                 "--master": "spark.master",
                 "--driver-java-options": "spark.driver.extraJavaOptions"}
_CONF_FLAGS = ("--conf", "-c")
_SPARK_VARIABLES = {"SPARK_MEM": "spark.driver.memory",
                    "SPARK_DRIVER_MEMORY": "spark.driver.memory"}
# spark-env.sh, which Spark's launch scripts source, may set those variables too.
_SPARK_ENV_ASSIGNMENT = re.compile(r"^[ \t]*(?:export[ \t]+)?(SPARK_MEM|SPARK_DRIVER_MEMORY)="
                                   r"[\"']?([^\"'\s#]*)", re.M)


def _spark_conf_dir() -> Path | None:
    """The folder Spark reads spark-defaults.conf, spark-env.sh and its log configuration
    from: SPARK_CONF_DIR, else the conf/ of SPARK_HOME, which is pip's pyspark folder when
    unset."""
    if os.environ.get("SPARK_CONF_DIR"):
        return Path(os.environ["SPARK_CONF_DIR"])
    spark_home = os.environ.get("SPARK_HOME") or _pyspark_folder()
    return Path(spark_home) / "conf" if spark_home else None


def users_spark_settings() -> dict[str, str]:
    """The Spark settings the user made outside the cycle, which a session's own setting
    would override, with their values, each outranking the one before as in spark-submit:
    SPARK_MEM and SPARK_DRIVER_MEMORY (from the environment or spark-env.sh); the
    spark-defaults.conf Spark reads, or the --properties-file of PYSPARK_SUBMIT_ARGS instead
    (both with --load-spark-defaults); its --extra-properties-file ones, in their order; then
    its --conf (-c) and own flags (_SUBMIT_FLAGS)."""
    conf_dir = _spark_conf_dir()
    spark_env = conf_dir / "spark-env.sh" if conf_dir is not None else None
    assigned = dict(_SPARK_ENV_ASSIGNMENT.findall(spark_env.read_text(errors="replace"))) \
        if spark_env is not None and spark_env.is_file() else {}
    settings = {}
    for variable, key in _SPARK_VARIABLES.items():
        value = os.environ.get(variable) or assigned.get(variable)
        if value:
            settings[key] = value
    try:  # split as pyspark splits it to start the JVM
        submit_args = shlex.split(os.environ.get("PYSPARK_SUBMIT_ARGS", ""))
    except ValueError as error:
        raise NeedsAttention(f"PYSPARK_SUBMIT_ARGS cannot be read as a command line: {error} "
                             f"in {os.environ['PYSPARK_SUBMIT_ARGS']!r}",
                             fix="close its quotes, or unset it") from error
    confs, flags, properties_file, extra_files = {}, {}, None, []
    for position, word in enumerate(submit_args):
        flag, equals, value = word.partition("=")
        if not equals and position + 1 < len(submit_args):
            value = submit_args[position + 1]
        if flag in _CONF_FLAGS and "=" in value:
            confs.update([value.split("=", 1)])
        elif flag in _SUBMIT_FLAGS:
            flags[_SUBMIT_FLAGS[flag]] = value
        elif flag == "--properties-file":
            properties_file = Path(value)
        elif flag == "--extra-properties-file":
            extra_files.append(Path(value))
    files = [properties_file] if properties_file is not None else []
    if conf_dir is not None and (properties_file is None or "--load-spark-defaults"
                                 in submit_args):
        files.insert(0, conf_dir / "spark-defaults.conf")
    for path in [*files, *extra_files]:
        if path.is_file():  # a --properties-file that is not there is Spark's to report
            settings.update(properties(path.read_text(errors="replace")))
    return settings | confs | flags


def _users_log_configuration(settings: dict[str, str]) -> bool:
    """Whether the user configured Log4j 2 for Spark: a log4j2 file of any of its formats
    in Spark's conf folder, or -Dlog4j2.configurationFile (or log4j.) in the driver's
    Java options."""
    conf_dir = _spark_conf_dir()
    if conf_dir is not None and conf_dir.is_dir() and any(
            path.name.startswith("log4j2") and path.suffix in
            (".properties", ".xml", ".yaml", ".yml", ".json", ".jsn")
            for path in conf_dir.iterdir()):
        return True
    return "configurationFile" in settings.get("spark.driver.extraJavaOptions", "")


def users_spark_master() -> str | None:
    """The master of the user's own Spark configuration, if it names one."""
    return users_spark_settings().get("spark.master", "").strip() or None


def properties(text: str) -> dict[str, str]:
    """A Java properties file, as java.util.Properties reads spark-defaults.conf: a key ends
    at unescaped whitespace, '=' or ':', after which one '=' or ':' may stand between
    spaces; a line whose first mark is '#' or '!' is a comment; a line ending in an odd
    number of backslashes goes on in the next, without its leading spaces."""
    logical, lines, continued = [], [], False
    # Only these end a line, and only space, tab and form feed separate: not str.splitlines'
    # form feed or vertical tab, nor a no-break space pasted from a web page.
    for line in re.split(r"\r\n|\r|\n", text):
        stripped = line.lstrip(" \t\f")
        if not continued and (not stripped or stripped[0] in "#!"):
            continue
        trailing = len(stripped) - len(stripped.rstrip("\\"))
        lines.append(stripped[:-1] if trailing % 2 else stripped)
        continued = trailing % 2 == 1
        if not continued:
            logical.append("".join(lines))
            lines = []
    if lines:
        logical.append("".join(lines))
    found = {}
    for line in logical:
        key = re.match(r"(?:\\.|[^ \t\f=:\\])*", line).group()
        value = re.sub(r"^[ \t\f]*[=:]?[ \t\f]*", "", line[len(key):])
        if key:
            found[_unescaped(key)] = _unescaped(value)
    return found


def _unescaped(text: str) -> str:
    # Java's escapes in properties: \t \n \r \f, \uXXXX, and a backslash before anything else.
    named = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}
    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)",
                  lambda match: chr(int(match.group(1)[1:], 16)) if len(match.group(1)) == 5
                  else named.get(match.group(1), match.group(1)), text)


def _pyspark_folder() -> str | None:
    import importlib.util

    found = importlib.util.find_spec("pyspark")
    return next(iter(found.submodule_search_locations or []), None) if found else None


def memory_limit() -> int | None:
    """The memory this process may use by its cgroups (v2 memory.max, v1's
    memory.limit_in_bytes; the least of its own and its parents'), in bytes; None without a
    limit. A container's limit is far below the machine's memory its /proc shows."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, own = line.split(":", 2)
        if controllers == "":
            mount, name = Path("/sys/fs/cgroup"), "memory.max"
            if not (mount / "cgroup.controllers").exists():
                mount = mount / "unified"  # a hybrid hierarchy
        elif "memory" in controllers.split(","):
            mount, name = Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"
        else:
            continue
        folder = Path(own.strip())
        for ancestor in [folder, *folder.parents]:
            try:
                text = (mount / ancestor.relative_to("/") / name).read_text().strip()
            except (OSError, ValueError):  # not there, or not this process's to read
                continue
            if text.isdigit() and int(text) < 1 << 62:  # v1 writes "no limit" as ~2**63
                limits.append(int(text))
    return min(limits) if limits else None


def local_driver_memory(master: str, users: dict[str, str] | None = None) -> str | None:
    """The driver heap for a local master the user has not sized, as Spark writes it.
    `users`: users_spark_settings(), when the caller has read them already."""
    if not master.startswith("local"):
        return None
    if "spark.driver.memory" in (users_spark_settings() if users is None else users):
        return None
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = memory_limit()
    if limit is not None:
        memory = min(memory, limit)
    return f"{max(1024, int(memory * _LOCAL_DRIVER_SHARE) >> 20)}m"


def local_master(master: str, threads: int | None) -> str:
    """`local[*]` narrowed to the cores the cycle may use (Settings.threads: N, or the cores
    other processes leave free when None, as for the default engine's fit); any other
    master as given, and `local[*]` too where a person set the libraries' threads."""
    from retraining.threads import thread_count

    if master.replace(" ", "") != "local[*]":
        return master
    count = thread_count(threads)
    return master if count is None else f"local[{count}]"


def session(master: str, threads: int | None, executor_wait: float = 0.0):
    """The process's Spark session on `master` (`local[*]` narrowed by local_master), started
    once: a session already running keeps its master. The cycle's own settings
    (_SESSION_DEFAULTS, the local heap, logs at warnings) give way to the user's Spark
    configuration; the master is Settings.spark_master (--spark-master, else the user's own
    spark.master, else local[*]). On a cluster, a job that waits `executor_wait` seconds
    with no executor stops the run (ExecutorWatch; 0: it waits for ever)."""
    warnings.filterwarnings("ignore", message=_PANDAS_WARNING, category=FutureWarning)
    try:
        from pyspark.sql import SparkSession
    except ImportError as error:
        raise NeedsAttention("--engine spark needs pyspark, which is not installed",
                             fix="pip install -r requirements-spark.txt (and a Java runtime: "
                                 "apt-get install default-jre-headless)") from error
    running = SparkSession.getActiveSession()
    if running is not None:
        _cancel_jobs_on_signal(running)  # the handlers may be a later run's
        ExecutorWatch.start(running, executor_wait)
        return running
    master = local_master(master, threads)
    builder = SparkSession.builder.master(master)
    users = users_spark_settings()
    for key, value in _SESSION_DEFAULTS.items():
        if key not in users:
            builder = builder.config(key, value)
    driver_memory = local_driver_memory(master, users)
    if driver_memory is not None:
        # Read when the JVM starts: a session already running keeps its heap.
        builder = builder.config("spark.driver.memory", driver_memory)
    # py4j says at INFO that it closes its connection when the process exits: after the
    # cycle's last line, which must stay the last, a failure to start included.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    try:
        spark = builder.getOrCreate()
    except Exception as error:  # the JVM's failure to start arrives as many kinds
        raise _not_started(master, error) from error
    if not _users_log_configuration(users):
        spark.sparkContext.setLogLevel("WARN")  # unless the user configured Spark's logging
    _cancel_jobs_on_signal(spark)
    log.info("Spark session on master %s", spark.sparkContext.master)
    ExecutorWatch.start(spark, executor_wait)
    return spark


def _cancel_jobs_on_signal(spark) -> None:
    """From now on, SIGTERM and SIGINT also cancel the session's Spark jobs, then do what
    they did before (the cycle's handler: raise where the main thread is).

    A Spark action waits for its job in a py4j call, and pyspark's cleanup, on the way out
    of the raise, makes one more call on that same connection, which waits for the job too:
    a job that never runs (a cluster with no executor for it: a full cluster, no worker, too
    little memory for one) held the cycle for ever, deaf to the signal. Cancelled from
    another thread (another py4j connection), the job ends and the main thread unwinds.
    For the process's life, as the session's: every fit, load and scoring on it.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # Python delivers signals to the main thread only
    for number in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(number)
        ours = isinstance(handler, functools.partial) and handler.func is _cancel_then
        if not ours and handler not in (signal.SIG_IGN, None):
            signal.signal(number, functools.partial(_cancel_then, spark, handler))


def _cancel_then(spark, handler, number, frame) -> None:
    threading.Thread(target=spark.sparkContext.cancelAllJobs, name="cancel-spark-jobs",
                     daemon=True).start()
    if callable(handler):
        handler(number, frame)
    else:  # SIG_DFL: the signal's own ending, as without the session
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)


class ExecutorWatch:
    """Stops the run when a Spark job of the session has waited `wait` seconds on a cluster
    that gives the application no executor: none came (no worker free, none with the
    spark.executor.memory and cores an executor asks) or those it had were lost (a worker
    killed) and none replaced them.

    Spark itself waits for ever, logging every 15 s that the job "has not accepted any
    resources", while the cycle's heartbeat makes it look alive. The stop goes the way
    SIGTERM goes (stopping.stop_from_thread): the jobs cancelled, the open runs marked
    FAILED, the locks released, nothing moved, one line and exit 1. Not for a local master,
    whose driver runs the tasks itself. One watch at a time; each run's session() call gives
    it that run's wait (a process may run many: the tests, an embedding scheduler).
    """

    _current: ExecutorWatch | None = None

    def __init__(self, spark, wait: float):
        self._spark = spark
        self.wait = wait
        self._master = spark.sparkContext.master
        self._thread = threading.Thread(target=self.watch, name="spark-executor-watch",
                                        daemon=True)

    @classmethod
    def start(cls, spark, wait: float) -> None:
        current = cls._current
        if current is not None and current._thread.is_alive() \
                and current._spark.sparkContext is spark.sparkContext:
            current.wait = wait  # 0: it ends at its next look
            return
        if wait <= 0 or spark.sparkContext.master.startswith("local"):
            return
        cls._current = cls(spark, wait)
        cls._current._thread.start()

    def watch(self) -> None:
        from py4j.protocol import Py4JError

        context = self._spark.sparkContext
        jobs, known = context.statusTracker(), context._jsc.sc().statusTracker()
        starved_since, most, last = None, 0, 0
        while self.wait > 0:
            # At least half a second: two calls to the JVM a look, whatever the wait.
            time.sleep(min(_WATCH_SECONDS, max(self.wait, 0.5)))
            try:
                if context._jsc is None:
                    return  # the session stopped
                # The driver is listed among them too, and runs no task on a cluster.
                executors = len(known.getExecutorInfos()) - 1
                waiting = bool(jobs.getActiveJobsIds())
            # The JVM gone: the main thread's own call fails and says so.
            except (Py4JError, ConnectionError):
                return
            if executors != last:  # what runs the fit, in the log beside the heartbeat
                log.info("Spark: %d executor%s on %s", executors,
                         "" if executors == 1 else "s", self._master)
            most, last = max(most, executors), executors
            if executors > 0 or not waiting:
                starved_since = None
                continue
            now = time.monotonic()
            if starved_since is None:
                starved_since = now
                log.warning("Spark: a job waits with no executor on %s; the run stops if none "
                            "comes within %g s (--spark-executor-wait)", self._master,
                            self.wait)
            elif now - starved_since >= self.wait > 0:
                self._stop(most)
                return

    def _stop(self, most: int) -> None:
        from retraining.errors import EXIT_FAILURE, Stopped
        from retraining.stopping import stop_from_thread

        conf = self._spark.sparkContext.getConf()
        asks = (f"{conf.get('spark.executor.memory', '1g')} of memory and "
                f"{conf.get('spark.executor.cores', 'one or more')} cores")
        what = "its executors were lost and none came back" if most else "no executor came"
        reason = Stopped(
            f"the Spark cluster at {self._master} gave a Spark job of this run no executor "
            f"for {self.wait:g} s ({what}: its workers are busy or gone, or none has the {asks} "
            "an executor asks); the job was cancelled and no data file was moved",
            "free or add a worker with that much (the master's web UI lists them), or lower "
            "spark.executor.memory or spark.executor.cores in your Spark configuration; "
            "where executors are slow to start (dynamic allocation), raise "
            "--spark-executor-wait (0: wait for ever)",
            EXIT_FAILURE)
        if not stop_from_thread(reason):  # no run to stop: the job's failure must not hide it
            log.error("Spark: %s", reason.cause)
        self._spark.sparkContext.cancelAllJobs()


def _not_started(master: str, error: Exception) -> NeedsAttention:
    """Why a session did not start, told apart by who failed: no JVM came up (Java is
    missing or broken), or the JVM came up and Spark stopped its context, which on a
    cluster is most often a master that does not answer (Spark gives up after a minute)."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    if isinstance(error, PySparkException) and error.getCondition() == "JAVA_GATEWAY_EXITED":
        return NeedsAttention(f"Spark's JVM did not start for master {master!r} "
                              f"({quoted(error)}): Java is missing or would not run",
                              fix="install a Java runtime (apt-get install "
                                  "default-jre-headless), or set JAVA_HOME to one")
    # The Java exception's first line: the rest of its message is a stack trace.
    evidence = (error.java_exception.toString().splitlines()[0]
                if isinstance(error, Py4JJavaError) else quoted(error))
    return NeedsAttention(f"Spark could not start on master {master!r} ({evidence}); Spark's "
                          "log above says why (for a cluster whose master does not answer at "
                          "that address: 'All masters are unresponsive')",
                          fix="check --spark-master (a cluster's URL as its master's web UI "
                              "shows it, spark://host:7077, reachable from this host) and the "
                              "Spark configuration")


def as_doubles(frame):
    """The frame with its integer columns as doubles, as a Spark version sees every number.

    An integer column without a gap in training would be `long` in the signature, and
    MLflow's pyfunc refuses a later file with one gap in it (a gap makes it float64): the
    whole file, for a missing cell. Trained on doubles, signed as doubles, and scored on
    doubles, the model sees the same column type on every path.
    """
    import pandas as pd

    integers = [name for name, kind in frame.dtypes.items()
                if pd.api.types.is_integer_dtype(kind)]
    return frame.astype(dict.fromkeys(integers, "float64")) if integers else frame


def spark_frame(spark, frame):
    """A pandas frame as a Spark DataFrame, through one Arrow table: pandas' own path gives
    up on text columns that pyarrow read in several chunks, and goes row by row."""
    import pyarrow as pa

    return spark.createDataFrame(pa.Table.from_pandas(frame, preserve_index=False))


class SparkModel:
    """A fitted Spark `PipelineModel` as the cycle uses any model: `predict` on pandas rows.

    Its `prediction` column holds classes as the label column has them (the contract of
    train_spark_model); pyfunc returns the same column once the model is logged.
    """

    def __init__(self, pipeline_model, spark, classes):
        self.pipeline_model = pipeline_model
        self._spark = spark
        # The classes it was trained on, sorted: what a scikit-learn model calls classes_,
        # by which the cycle checks new files' labels and the report lays out its figures.
        self.classes_ = classes

    def predict(self, features):
        import numpy as np

        rows = spark_frame(self._spark, as_doubles(features))
        scored = self.pipeline_model.transform(rows).select("prediction").toPandas()
        return np.asarray(scored["prediction"])

    @property
    def master(self) -> str:
        """The Spark master it was trained on, as the session runs it (local[2], a URL)."""
        return self._spark.sparkContext.master

    @property
    def classifier_name(self) -> str:
        """The class of the last stage that predicts: what `model_class` says of it."""
        stages = [type(stage).__name__ for stage in self.pipeline_model.stages]
        predicting = [name for name in stages if name.endswith("Model")]
        return f"PipelineModel({predicting[-1] if predicting else ', '.join(stages)})"


def check_column_names(features: Sequence[str], label_column: str) -> None:
    """Refuse columns Spark would confuse: names that differ only in case (Spark's column
    names are not case-sensitive), names with a '.' or a backtick (Spark ML's stages read
    `a.b` as field b of a struct a, and a lone backtick as broken quoting, whatever the
    trainer does), and the names of the columns the cycle adds itself."""
    seen: dict[tuple[str, int], str] = {}
    for position, name in enumerate([*features, label_column]):
        other = seen.setdefault(_spark_case_key(name), name)
        is_label = position == len(features)
        which = "the label column" if is_label else "the column"
        marks = [mark for mark in (".", "`") if mark in name]
        if marks:
            raise NeedsAttention(f"{which} {name!r} has {marks[0]!r} in its name, which Spark "
                                 "ML reads as " + ("a field of a struct" if marks[0] == "."
                                                   else "quoting"),
                                 fix=f"rename it in prepare_file (for example "
                                     f"frame.columns.str.replace({marks[0]!r}, '_'))"
                                     + (" and set --label-column to the new name"
                                        if is_label else ""))
        if is_label and other == name and name in features:
            raise NeedsAttention(f"the label column {name!r} is also a feature column",
                                 fix="rename one of them in prepare_file")
        if other != name:
            raise NeedsAttention(f"{which} {name!r} and the column {other!r} differ only in "
                                 "case, and Spark does not tell such names apart",
                                 fix="rename one of them in prepare_file")
    for name in features:
        if name.lower() in ("prediction", WEIGHT_COLUMN):
            role = "the model writes its predictions to" if name.lower() == "prediction" \
                else "the cycle gives the rows' weights"
            raise NeedsAttention(f"the feature column {name!r} has the name of the column "
                                 f"{role} on the Spark engine",
                                 fix="rename it in prepare_file")


def _spark_case_key(name: str) -> tuple[str, int]:
    """What Spark tells a column apart by, case aside: it looks a name up in lower case
    (Java's, in the root locale, which is Python's, a final sigma included), then keeps the
    names String.equalsIgnoreCase finds equal, which are of one length in UTF-16 ('İd' is
    'i̇d' in lower case, and yet not the same column)."""
    return name.lower(), len(name.encode("utf-16-le"))


def train(trainer: Callable, master: str, threads: int | None, features, labels, *,
          executor_wait: float = 0.0, sample_weight=None, **keywords) -> SparkModel:
    """Fit the domain's Spark trainer on the features and labels, as one Spark DataFrame.

    The label column keeps its name (the settings' label column); weights, when given, go in
    WEIGHT_COLUMN, whose name the trainer receives as `weight_column`; `keywords` (the
    random_state it declares) go to it as they are. `threads`: Settings.threads, which
    narrows a `local[*]` master (local_master); `executor_wait`: see session.
    """
    import numpy as np

    label_column = labels.name or "label"
    check_column_names(list(features.columns), label_column)
    if len(features) and not features.notna().to_numpy().any():
        # Spark ML cannot fit on no features ("DecisionTree requires number of features
        # > 0"), and it is the data's doing, not the trainer's.
        raise NeedsAttention(f"every feature column is empty in all {len(features)} training "
                             f"rows (columns: {', '.join(map(str, features.columns[:12]))})",
                             fix="check the feature columns of the files in used_gts/ and "
                                 "new_gts/, and what prepare_file makes of them")
    spark = session(master, threads, executor_wait)  # pyspark's absence: one line from here
    from pyspark.ml import PipelineModel

    frame = as_doubles(features).assign(**{label_column: labels.to_numpy()})
    if sample_weight is not None:
        frame[WEIGHT_COLUMN] = sample_weight
        keywords["weight_column"] = WEIGHT_COLUMN
    rows = spark_frame(spark, frame)
    del frame  # in the JVM now: the fit's memory is Spark's
    try:
        model = trainer(rows, label_column, **keywords)
    except NeedsAttention as error:
        resources = _out_of_resources(spark, error.__cause__)
        if resources is None:
            raise
        raise resources from error.__cause__
    if not isinstance(model, PipelineModel):
        raise NeedsAttention(f"train_spark_model returned a {type(model).__name__}, not a "
                             "fitted pyspark.ml.PipelineModel",
                             fix="return Pipeline(stages=[...]).fit(frame) from "
                                 "train_spark_model")
    fitted = SparkModel(model, spark, np.unique(labels.to_numpy()))
    if "prediction" not in model.transform(rows.limit(1)).columns:
        raise NeedsAttention("the model train_spark_model returned writes no 'prediction' "
                             "column",
                             fix="end the pipeline with a stage that writes the predicted "
                                 "class, as the label column has it, to 'prediction'")
    return fitted


def _out_of_resources(spark, error: BaseException | None) -> NeedsAttention | None:
    """A trainer's failure that is no fault of its code: the JVM gone (killed, most often by
    the kernel when memory ran out) or out of heap. None for any other failure."""
    from py4j.protocol import Py4JError

    fix = ("give Spark's driver more memory (spark.driver.memory; the cycle gives a local one "
           "half of this machine's) or another process less, or train on fewer rows "
           "(--training-windows); no data file was moved for it")
    if "java.lang.OutOfMemoryError" in str(error):
        return NeedsAttention(f"Spark ran out of memory in train_spark_model: {quoted(error)}",
                              fix=fix)
    try:
        spark.sparkContext._jvm.java.lang.System.nanoTime()  # any call that needs the JVM
    except (Py4JError, ConnectionError) as gone:
        return NeedsAttention("Spark's JVM stopped while train_spark_model ran "
                              f"({quoted(gone, limit=120)}): it was killed, most often by the "
                              "kernel when memory ran out (dmesg names what it killed)",
                              fix=fix)
    return None


def log_model(model: SparkModel, *, signature, input_example, registered_model_name: str):
    """Log the pipeline with MLflow's Spark flavour, registered; returns the ModelInfo."""
    import mlflow.spark

    from retraining.registry import model_requirements

    # Requirements given: inferring them would load the saved pipeline in a new process.
    return mlflow.spark.log_model(model.pipeline_model, "model", signature=signature,
                                  input_example=input_example,
                                  pip_requirements=model_requirements(_MODEL_REQUIREMENTS),
                                  metadata={CLASSES_METADATA: model.classes_.tolist()},
                                  registered_model_name=registered_model_name)


def with_classes(loaded, described: str):
    """A Spark version loaded through pyfunc, with the classes it was trained on as
    `classes_`, from its MLmodel's metadata: without them a new file's unseen class or a
    label of another kind would go unchecked into the next training."""
    import numpy as np

    classes = (loaded.metadata.metadata or {}).get(CLASSES_METADATA)
    if classes is None:
        raise NeedsAttention(f"the Spark model {described} records no "
                             f"{CLASSES_METADATA!r} in its MLmodel metadata, so "
                             "new labels cannot be checked against its classes",
                             fix="point the alias at a version this project logged, or "
                                 "retrain it with --engine spark")
    loaded.classes_ = np.asarray(classes)
    return loaded
