"""How many threads the numeric libraries may use: the cores other processes leave free.

scikit-learn's gradient boosting runs on OpenMP, which starts one thread per core, and an
OpenMP thread that waits spins before it sleeps. Where other CPU-bound work runs on the same
cores, those threads compete with it and with each other: a fit with the default threads can
take several times as long as with one (bench/shared_machine.py). So before the heavy work
of a run (predicting with production, each fit) the libraries get as many threads as there
are cores no other process keeps busy, at least one. threadpoolctl is the library
scikit-learn itself documents for limiting these pools at run time.

A person's choice is obeyed: `--threads N` (RETRAIN_THREADS) fixes the count, and
OMP_NUM_THREADS (or another library's thread variable, PERSONS_THREAD_SETTINGS) set in the
environment leaves it to the libraries (Settings.threads 0).
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
LEAVE_ALONE = 0  # Settings.threads when the person running it set a library's threads
# The environment variables by which a person sets those threads themselves.
PERSONS_THREAD_SETTINGS = ("OMP_NUM_THREADS", "OMP_THREAD_LIMIT", "OPENBLAS_NUM_THREADS",
                           "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def usable_cores() -> int:
    """The cores this process may run on: its affinity (all of them where that is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def cpu_quota() -> int | None:
    """A container's CPU limit, rounded up (cgroup v2 cpu.max, else v1's CFS quota, at the
    mount point); None without one."""
    for path, parse in (("/sys/fs/cgroup/cpu.max", _v2_quota),
                        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", _v1_quota)):
        try:
            with open(path) as limit:
                quota = parse(limit.read(), path)
        except (OSError, ValueError):
            continue
        if quota is not None:
            return quota
    return None


def _v2_quota(text: str, path: str) -> int | None:
    quota, period = text.split()
    return None if quota == "max" else max(1, -(-int(quota) // int(period)))


def _v1_quota(text: str, path: str) -> int | None:
    quota = int(text)
    if quota <= 0:  # -1: no limit
        return None
    with open(path.replace("cfs_quota_us", "cfs_period_us")) as period:
        return max(1, -(-quota // int(period.read())))


def busy_cores() -> float:
    """Cores other processes keep busy now, among those this process may run on.

    Each of those cores' busy share of a short window, from the kernel's per-CPU times
    (/proc/stat: all but idle and I/O wait, a hypervisor's steal included), less what this
    process's own threads used meanwhile (OpenMP's spin on after a fit, MLflow's background
    threads). Asked again within a few seconds (the window fits of one cycle come one after
    another), the last answer stands. Without /proc/stat (not Linux), the load average
    stands in, less this process; without that either, nothing counts as busy."""
    global _last_busy
    now = time.monotonic()
    if _last_busy is not None and now - _last_busy[0] < _REUSE_SECONDS:
        return _last_busy[1]
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    before, own_before, started = _cpu_times(), _own_cpu_seconds(), time.monotonic()
    time.sleep(_WINDOW_SECONDS)
    after, own_after, ended = _cpu_times(), _own_cpu_seconds(), time.monotonic()
    if before is None or after is None or cpus is None:
        busy = _load_less_this_process()
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
        busy -= (own_after - own_before) / max(ended - started, 1e-3)
    busy = max(0.0, busy)
    _last_busy = (time.monotonic(), busy)
    return busy


def _own_cpu_seconds() -> float:
    """CPU seconds this process's threads have used, user and system."""
    times = os.times()
    return times.user + times.system


def _load_less_this_process() -> float:
    try:
        # The one-minute load counts this process's own recent work too.
        return max(0.0, os.getloadavg()[0] - 1.0)
    except (AttributeError, OSError):  # not on this system
        return 0.0


def _cpu_times() -> dict[int, list[int]] | None:
    """Per-CPU times since boot, in clock ticks, from /proc/stat; None where unreadable."""
    try:
        with open("/proc/stat") as stat:
            lines = stat.read().splitlines()
    except OSError:
        return None
    times = {}
    try:
        for line in lines:
            name, *values = line.split() or [""]
            if name.startswith("cpu") and name[3:].isdigit():
                times[int(name[3:])] = [int(value) for value in values]
    except ValueError:  # not the format this reads: count nothing from it
        return None
    return times or None


def thread_count(threads: int | None) -> int | None:
    """The threads the heavy work may use: `threads`, or the cores free now when None (at
    least one, within a CPU quota); None for LEAVE_ALONE, the person's own setting."""
    global _last_limit
    if threads == LEAVE_ALONE:
        return None
    if threads is not None:
        return threads
    cores, busy, quota = usable_cores(), busy_cores(), cpu_quota()
    limit = max(1, round(cores - busy))
    if quota is not None:
        limit = min(limit, quota)
    # Said when it changes: a cycle fits several times in a row.
    (log.info if limit != _last_limit else log.debug)(
        "%d of %d cores for the heavy work: %.1f kept busy by other processes%s",
        limit, cores, busy, f", a CPU quota of {quota}" if quota is not None else "")
    _last_limit = limit
    return limit


def fit_to_machine(threads: int | None) -> int | None:
    """Limit the OpenMP and BLAS pools loaded so far to thread_count(threads); leave them
    alone for LEAVE_ALONE. Returns the limit set, if any.

    Only libraries already loaded are limited: call it once the model or the domain (and so
    scikit-learn) is imported, and again before each fit, as neighbours come and go."""
    limit = thread_count(threads)
    if limit is None:
        return None
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=limit)
    return limit
