"""Worker processes that end with the process that started them, however it ends.

A pool's workers are children: when the parent is killed (SIGKILL, the OOM killer) nothing runs
in it to stop them, and they went on computing for minutes. ``die_with_parent``, called first in
a worker (a pool's initializer), asks Linux to SIGKILL the worker when its parent dies
(prctl PR_SET_PDEATHSIG) and, for other systems and for a parent that died before the call, starts
a thread that ends the worker once its parent id changes.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """End this process (exit code 1, no cleanup: it holds nothing of record) when ``parent_pid`` dies."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no libc to call: the thread below still watches
            pass
    if os.getppid() != parent_pid:  # the parent died before the prctl: nobody would signal us
        os._exit(1)
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(poll_s):
            if os.getppid() != parent_pid:  # re-parented to init or a subreaper: the parent is gone
                os._exit(1)

    threading.Thread(target=watch, name="crashsearch-parent-watch", daemon=True).start()
