"""The user's domain contract, loaded from `train_classification_model.py` (or --domain-file).

The cycle calls the user's code through `Domain` and nothing else, so a user porting a
project edits one file and never the orchestrator. Documented in that file itself.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import logging
import sys
from pathlib import Path
from typing import Any, Callable

from retraining.errors import NeedsAttention, RetrainingError, quoted, raise_if_stopped

log = logging.getLogger("retraining.domain")

REQUIRED = ("train_model", "error_metric")


@dataclasses.dataclass(frozen=True)
class Domain:
    source: Path
    prepare_file: Callable[..., Any]
    train_model: Callable[..., Any]
    error_metric: Callable[..., float]
    error_metric_name: str
    error_per_file: bool
    lower_error_is_better: bool
    train_spark_model: Callable[..., Any] | None = None
    # Set: `train` fits train_spark_model on this Spark master (--engine spark), whose jobs
    # may wait this many seconds for an executor (Settings.spark_executor_wait).
    spark_master: str | None = None
    spark_executor_wait: float = 0.0

    @property
    def _trainer(self) -> tuple[str, Callable[..., Any], str]:
        """The trainer in use: its name, the function, and the keyword its weights go by."""
        if self.spark_master is not None:
            return "train_spark_model", self.train_spark_model, "weight_column"
        return "train_model", self.train_model, "sample_weight"

    @property
    def accepts_sample_weight(self) -> bool:
        """Whether the trainer in use declares its weights keyword (train_model:
        `sample_weight`, train_spark_model: `weight_column`), or **kwargs."""
        _, trainer, weights = self._trainer
        return _accepts(trainer, weights)

    @property
    def no_weights_reason(self) -> str:
        """Why a window that weighs its rows cannot be trained with this trainer."""
        name, _, weights = self._trainer
        return f"{name} in {Path(self.source).name} does not declare {weights}"

    @property
    def error_sees_rows(self) -> bool:
        """Whether the user's `error_metric` declares `rows` (or **kwargs)."""
        return _accepts(self.error_metric, "rows")

    def error(self, labels, predictions, rows=None) -> float:
        """The user's error_metric, given `rows` (the prepared rows scored, label column left
        out) only when it declares them, as `train` passes `sample_weight`.

        `rows` may be a callable that builds them: stacking frames costs memory, so they are
        built only for a metric that reads them.
        """
        if not self.error_sees_rows:
            return self.error_metric(labels, predictions)
        return self.error_metric(labels, predictions, rows=rows() if callable(rows) else rows)

    def train(self, features, labels, *, random_state: int, sample_weight=None,
              threads: int | None = 0):
        """Train through the user's hook, passing only the keywords it declares.

        `sample_weight` (one weight per row) is passed only when given; giving it to a hook
        that does not declare it is a bug in the caller, which must ask
        `accepts_sample_weight` first. `threads` is Settings.threads: the numeric libraries
        are limited to it, or to the cores free now, before the fit (retraining/threads.py);
        by default (0) they are left as they are.
        """
        if sample_weight is not None and not self.accepts_sample_weight:
            raise TypeError(self.no_weights_reason)
        name, trainer, _ = self._trainer
        keywords = {"random_state": random_state} if _accepts(trainer, "random_state") else {}
        trainer = self._reported(name, trainer)
        if self.spark_master is not None:
            from retraining import spark_engine

            return spark_engine.train(trainer, self.spark_master, threads, features, labels,
                                      executor_wait=self.spark_executor_wait,
                                      sample_weight=sample_weight, **keywords)
        from retraining.threads import fit_to_machine

        fit_to_machine(threads)
        if sample_weight is not None:
            keywords["sample_weight"] = sample_weight
        return trainer(features, labels, **keywords)


    def _reported(self, name: str, hook: Callable[..., Any]) -> Callable[..., Any]:
        """`hook` with its failure as one line that names it and quotes the error: a fault in
        the user's code, whose fix is there (the trace, logged, says where)."""
        def reported(*args, **keywords):
            try:
                return hook(*args, **keywords)
            except RetrainingError:
                raise
            except Exception as error:  # whatever the user's code raises, it is theirs to fix
                raise_if_stopped(error)  # a library's cleanup failing as a stop unwound
                log.error("%s in %s failed", name, Path(self.source).name, exc_info=True)
                raise NeedsAttention(f"{name} in {Path(self.source).name} raised "
                                     f"{quoted(error)}",
                                     fix=f"correct {name} where the trace above points; no "
                                         "data file was moved for it") from error
        return reported


def _accepts(function: Callable, keyword: str) -> bool:
    accepted = inspect.signature(function).parameters
    return keyword in accepted or any(p.kind is p.VAR_KEYWORD for p in accepted.values())


def _identity(frame, path):
    return frame


def load_domain(path: Path, spark_master: str | None = None,
                spark_executor_wait: float = 0.0) -> Domain:
    """Import the contract file; a missing or incomplete contract raises NeedsAttention.

    `spark_master`: train with the file's train_spark_model on that master (--engine spark),
    where a job waits at most `spark_executor_wait` seconds for an executor (0: for ever).
    """
    if not path.is_file():
        raise NeedsAttention(f"domain file {path} does not exist",
                             fix="restore train_classification_model.py or pass --domain-file")
    # Registered under its own module name so models holding classes defined there unpickle,
    # unless that name is already another module's (a domain file called json.py).
    module_name = path.stem
    existing = sys.modules.get(module_name)
    if existing is not None and getattr(existing, "__file__", None) != str(path):
        module_name = f"retraining_domain_{module_name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    missing = [name for name in REQUIRED if not callable(getattr(module, name, None))]
    if missing:
        raise NeedsAttention(f"domain file {path} does not define {', '.join(missing)}",
                             fix="define them as documented at the top of "
                                 "train_classification_model.py")
    for flag in ("ERROR_PER_FILE", "LOWER_ERROR_IS_BETTER"):
        if not isinstance(getattr(module, flag, True), bool):
            raise NeedsAttention(f"{flag} in {path} is {getattr(module, flag)!r}, not a boolean",
                                 fix=f"set {flag} = True or False")
    train_spark_model = getattr(module, "train_spark_model", None)
    if spark_master is not None and not callable(train_spark_model):
        raise NeedsAttention(f"--engine spark, and domain file {path} does not define "
                             "train_spark_model",
                             fix="define it as documented at the top of "
                                 "train_classification_model.py, or use --engine default")
    return Domain(
        source=path,
        prepare_file=getattr(module, "prepare_file", _identity),
        train_model=module.train_model,
        error_metric=module.error_metric,
        error_metric_name=str(getattr(module, "ERROR_METRIC_NAME", module.error_metric.__name__)),
        error_per_file=getattr(module, "ERROR_PER_FILE", False),
        lower_error_is_better=getattr(module, "LOWER_ERROR_IS_BETTER", True),
        train_spark_model=train_spark_model if callable(train_spark_model) else None,
        spark_master=spark_master,
        spark_executor_wait=spark_executor_wait,
    )
