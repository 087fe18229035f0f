"""What every step of a cycle shares: the loaded context, the monitoring result, timings."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any

from retraining.config import Settings


@contextlib.contextmanager
def phase(timings: dict[str, float], name: str):
    """Add the block's wall time to `timings[name]` (seconds): the summary's `timings`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - start, 3)



@dataclasses.dataclass
class CycleContext:
    settings: Settings
    domain: Any
    registry: Any
    production: Any
    new_files: list
    columns: list
    quarantined: list
    timings: dict = dataclasses.field(default_factory=dict)  # seconds per phase, in the summary
    # Production's predictions per new file, made once when the files are read: monitoring
    # and the comparison both use them.
    predictions: dict = dataclasses.field(default_factory=dict)
    # The version probation moved the alias away from in this cycle (a dry run records no
    # AliasChange for it, yet it must not come back as an earlier version either).
    rolled_back_from: str | None = None
    # Production's error units on the new files, found once on first use: probation,
    # monitoring and the held-out sizing all need them. Not an init field, so a context
    # `dataclasses.replace` made for another production finds its own.
    _production_units: Any = dataclasses.field(default=None, init=False, repr=False)

    def production_units(self):
        """retraining.gate.error_units of production on the new files."""
        if self._production_units is None:
            from retraining.gate import error_units
            self._production_units = error_units(self.domain, self.new_files,
                                                 self.predictions)
        return self._production_units


@dataclasses.dataclass(frozen=True)
class Monitoring:
    error: float
    retrain: bool
    reason: str
    predictions: dict  # production's predictions per new file, reused by the comparison
    run_id: str | None
    drift_share: float | None = None
