"""How many CPU threads crashsearch keeps busy: the cores actually free, never more.

On a CPU torch runs an op on an OpenMP team of ``torch.get_num_threads()`` threads, by default
one per core, and a team's threads spin while they wait for each other. When another process
holds a core, one thread of the team is descheduled and the others spin until it runs again: on
a 2-core machine beside one busy process a batch of medium zipformer heads trained 10-20x slower
with 2 threads than with 1, burning the CPU time of both cores (benchmarks/README.md,
"Contention"). So a command

* lets waiting OpenMP threads sleep instead of spin (``OMP_WAIT_POLICY=PASSIVE``), and
* sizes the team to the cores free when it starts: the cores this process may run on
  (``os.sched_getaffinity``) less the load of the other processes (the 1-minute load average,
  rounded), at least 1; several trainers in one process share that number
  (``threads_per_worker``).

Both are environment variables that OpenMP reads when torch loads it, so the CLI calls
``configure_cpu_threads`` before anything imports torch. The user's own ``OMP_NUM_THREADS`` or
``OMP_WAIT_POLICY`` wins.
"""
from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; all cores where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cores_free(cores: int | None = None, load: float | None = None) -> int:
    """``cores`` (default: ``usable_cores()``) less ``load`` (default: the 1-minute load average,
    which counts the other processes' runnable threads when this command starts), at least 1."""
    cores = usable_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    return max(1, min(cores, cores - int(load + 0.5)))


def configure_cpu_threads(environ=None) -> int:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` and ``OMP_NUM_THREADS`` to the cores free, unless set;
    return the thread count in force. Call it before torch is imported."""
    env = os.environ if environ is None else environ
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not env.get("OMP_NUM_THREADS", "").strip().isdigit():
        env["OMP_NUM_THREADS"] = str(cores_free())
    return int(env["OMP_NUM_THREADS"])


def threads_per_worker(workers: int, environ=None) -> int:
    """Torch threads for each of ``workers`` threads that train at once in this process, so that
    together they keep at most the configured (or free) cores busy; at least 1."""
    env = os.environ if environ is None else environ
    raw = env.get("OMP_NUM_THREADS", "").strip()
    budget = int(raw) if raw.isdigit() and int(raw) > 0 else cores_free()
    return max(1, budget // max(1, workers))
