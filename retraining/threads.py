"""How many threads the numeric libraries may use: the cores other processes leave free.

scikit-learn's gradient boosting runs on OpenMP, which starts one thread per core, and an
OpenMP thread that waits spins before it sleeps. Where other CPU-bound work runs on the same
cores, those threads compete with it and with each other: a fit with the default threads can
take several times as long as with one (bench/shared_machine.py). So before the heavy work
of a run (predicting with production, each fit) the libraries get as many threads as there
are cores no other process keeps busy, at least one. threadpoolctl is the library
scikit-learn itself documents for limiting these pools at run time.

A person's choice is obeyed: `--threads N` (RETRAIN_THREADS) fixes the count, and
OMP_NUM_THREADS set in the environment leaves it to the libraries (Settings.threads 0).
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("retraining.threads")

# How long the cores are watched: 10 clock ticks each at the kernel's usual 100 a second,
# enough to tell a core kept busy from an idle one; and how long that answer is reused.
_WINDOW_SECONDS, _REUSE_SECONDS = 0.1, 10.0
_last_busy: tuple[float, float] | None = None  # (monotonic time, busy cores)
_last_limit: int | None = None
LEAVE_ALONE = 0  # Settings.threads when OMP_NUM_THREADS is set by the person running it


def usable_cores() -> int:
    """The cores this process may run on (its affinity), and at most its CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    return max(1, min(cores, quota) if quota else cores)


def _cgroup_quota() -> int | None:
    """A container's CPU limit (cgroup v2 cpu.max), rounded up; None without one."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as limit:
            quota, period = limit.read().split()
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, -(-int(quota) // int(period)))


def busy_cores() -> float:
    """Cores other processes keep busy now, among those this process may run on.

    Each of those cores' busy share of a short window, from the kernel's per-CPU times
    (/proc/stat: all but idle and I/O wait, a hypervisor's steal included), this process
    sleeping meanwhile. Asked again within a few seconds (the window fits of one cycle come
    one after another), the last answer stands. Without /proc/stat (not Linux), the load
    average stands in, less this process."""
    global _last_busy
    now = time.monotonic()
    if _last_busy is not None and now - _last_busy[0] < _REUSE_SECONDS:
        return _last_busy[1]
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    before = _cpu_times()
    time.sleep(_WINDOW_SECONDS)
    after = _cpu_times()
    if before is None or after is None or cpus is None:
        # The one-minute load counts this process's own recent work too.
        busy = max(0.0, os.getloadavg()[0] - 1.0) if hasattr(os, "getloadavg") else 0.0
    else:
        busy = 0.0
        for cpu in cpus:
            if cpu not in before or cpu not in after:
                continue
            spent = [later - earlier
                     for earlier, later in zip(before[cpu], after[cpu], strict=True)]
            total = sum(spent[:8])  # user nice system idle iowait irq softirq steal
            if total > 0:
                busy += (total - spent[3] - spent[4]) / total
    _last_busy = (time.monotonic(), busy)
    return busy


def _cpu_times() -> dict[int, list[int]] | None:
    """Per-CPU times since boot, in clock ticks, from /proc/stat; None where unreadable."""
    try:
        with open("/proc/stat") as stat:
            lines = stat.read().splitlines()
    except OSError:
        return None
    times = {}
    for line in lines:
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            times[int(name[3:])] = [int(value) for value in values]
    return times or None


def fit_to_machine(threads: int | None) -> int | None:
    """Limit the OpenMP and BLAS pools loaded so far to `threads`, or to the cores free now
    when None; leave them alone for LEAVE_ALONE. Returns the limit set, if any.

    Only libraries already loaded are limited: call it once the model or the domain (and so
    scikit-learn) is imported, and again before each fit, as neighbours come and go."""
    if threads == LEAVE_ALONE:
        return None
    from threadpoolctl import threadpool_limits

    global _last_limit
    if threads is None:
        cores, busy = usable_cores(), busy_cores()
        limit = max(1, round(cores - busy))
        # Said when it changes: a cycle fits several times in a row.
        (log.info if limit != _last_limit else log.debug)(
            "numeric libraries get %d of %d cores: %.1f kept busy by other processes",
            limit, cores, busy)
    else:
        limit = threads
    threadpool_limits(limits=limit)
    _last_limit = limit
    return limit
