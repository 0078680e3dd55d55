"""One writer per campaign, and the truth about how a run ended.

``CampaignLock`` is an exclusive ``flock`` on ``<home>/campaigns/<id>/lock``. The file also
names its holder (host, pid, since) so that a second run can say who has the campaign. The
kernel drops the lock when its process dies, however it dies (SIGKILL, a crash, a power cut of
the node), so the lock of a dead process is simply free: the next run takes it and overwrites
the holder's name; two runs racing for a free lock cannot both get it. On shared storage
(NFS v4) ``flock`` is a lock on the server, so distributed orchestrators on different hosts
exclude each other too. Locks are re-entrant within one process (the CLI takes the lock before
it starts the flow, and the flow takes it again): ``Reentrant`` keeps that count, for this lock and
for the object-store lease of lab/lease.py. Taking a lock also removes the temp files that
interrupted writes left in the campaign's folder (``clean_temp_files``).

``ending_status(exc)`` is the status a campaign.json gets when a run stops by ``exc``:
``interrupted`` for Ctrl-C, SIGTERM (Prefect's TerminationSignal, or ``Terminated`` raised by
the CLI's handler), ``failed`` for anything else, and ``finished`` when there is none.

DuckDB checks for signals while a query runs in the main thread, and a Ctrl-C or SIGTERM that
arrives then becomes ``RuntimeError("Query interrupted")``: the KeyboardInterrupt (or
``Terminated``) the handler raised is dropped. ``ending_status`` counts that error as an
interruption, and an ``except Exception`` that would swallow it calls ``reraise_interrupt``
first, so a signal during a query stops the run like any other.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import threading
import time
import weakref
from datetime import datetime, timezone
from pathlib import Path

from crashsearch.lab.errors import UserError
from crashsearch.lab.rows import check_campaign_id

LOCK_FILE = "lock"


class CampaignBusy(UserError):
    """Another live process holds the campaign; the message names it (host, pid, since)."""


class _Stale(Exception):
    """The lock file we locked was removed meanwhile (an empty campaign's release): try again."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every ``finally`` runs and the run ends as interrupted."""


# what this process holds, by its key (a lock file's path, a lease's URL) -> the holding lock; weak, so a
# lock whose run died in its set-up is freed with it
_HELD: "weakref.WeakValueDictionary[str, Reentrant]" = weakref.WeakValueDictionary()
_GUARD = threading.Lock()


class Reentrant:
    """The re-entrant bookkeeping of a one-writer lock, shared by ``CampaignLock`` (flock) and
    lab/lease.ObjectLease (an object-store lease): a process that holds a key and acquires it again
    gets the same lock back with its depth counted; only the last ``release()`` gives it up.

    A subclass says what it holds and how: ``_key()`` (the key it is held under in this process),
    ``_holds()``, ``_take()`` (take it or raise; called under the process-wide guard) and ``_free()``
    (give it up, under the guard); ``_taken()`` and ``_freed()`` run after, outside the guard.
    """

    depth: int = 0
    outer: "Reentrant | None" = None  # the lock this process already held, when re-entered
    _held_key: str = ""

    def _key(self) -> str:
        raise NotImplementedError

    def _holds(self) -> bool:
        raise NotImplementedError

    def _take(self) -> None:
        raise NotImplementedError

    def _free(self) -> None:
        raise NotImplementedError

    def _taken(self) -> None:
        """Hook: after the first acquire, outside the guard."""

    def _freed(self) -> None:
        """Hook: after the last release, outside the guard."""

    def acquire(self):
        """Take the lock (or re-enter the one this process holds) and return the holding lock."""
        with _GUARD:
            key = self._key()
            held = _HELD.get(key)
            if held is not None and held._holds():  # this process holds it already: re-enter
                held.depth += 1
                self.outer = held  # our release() releases it once
                return held
            self._take()
            self.depth, self._held_key = 1, key
            _HELD[key] = self
        self._taken()
        return self

    def release(self) -> None:
        """Give the lock up (the last of nested acquires does); a no-op when not held."""
        if self.outer is not None:
            outer, self.outer = self.outer, None
            outer.release()
            return
        with _GUARD:
            if not self._holds():
                return
            self.depth -= 1
            if self.depth > 0:
                return
            _HELD.pop(self._held_key, None)
            self._free()
        self._freed()

    @staticmethod
    def held(key: str) -> "Reentrant | None":
        """The lock this process holds under ``key``, or None."""
        lock = _HELD.get(key)
        return lock if lock is not None and lock._holds() else None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:  # a run whose set-up failed must not keep the campaign
        try:
            if self._holds():
                self.depth = 1
                self.release()
        except Exception:
            pass


class CampaignLock(Reentrant):
    """The exclusive right to write one campaign. ``acquire()`` returns self; ``release()`` frees it.

    Use as ``with CampaignLock(home_root, "c1"):``. Raises CampaignBusy when another live
    process holds it, ValueError on a bad campaign id.
    """

    def __init__(self, home_root: str | os.PathLike, campaign: str):
        self.campaign = check_campaign_id(campaign)
        self.path = Path(home_root) / "campaigns" / campaign / LOCK_FILE
        self.fd: int | None = None
        self.previous: dict | None = None  # the holder named in the file when we took it (a dead one)

    def acquire(self) -> "CampaignLock":
        while True:
            try:  # again after _Stale: the releasing run may have removed the folder too
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, str(self.path.parent)) from None
            try:
                return super().acquire()
            except _Stale:  # a releasing run removed the file we opened and locked: take the new one
                continue

    def _key(self) -> str:
        return str(self.path.parent.resolve() / LOCK_FILE)

    def _holds(self) -> bool:
        return self.fd is not None

    def _take(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CampaignBusy(f"campaign {self.campaign} is already being run by {describe(read_holder(self.path))}; "
                               "wait for it to finish or stop that process (one writer per campaign)") from None
        except OSError:
            os.close(fd)
            raise
        if _unlinked(fd, self.path):
            os.close(fd)
            raise _Stale
        self.previous = read_holder(self.path)
        holder = {"host": socket.gethostname(), "pid": os.getpid(),
                  "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        data = (json.dumps(holder) + "\n").encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except OSError as exc:  # a full disk: name the file
            os.close(fd)
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None
        self.fd = fd

    def _taken(self) -> None:
        clean_temp_files(self.path.parent)

    def _free(self) -> None:
        fd, self.fd = self.fd, None
        try:
            os.ftruncate(fd, 0)  # nobody holds it: the file names no one
        except OSError:
            pass
        if [p.name for p in self.path.parent.iterdir()] == [LOCK_FILE]:
            # nothing was written (no campaign.json, no log): leave no ghost campaign behind. Unlinked
            # while still locked; a run that opened this file meanwhile sees it unlinked and retries.
            self.path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()
        os.close(fd)  # closing drops the flock


def _unlinked(fd: int, path: Path) -> bool:
    """Whether the locked file ``fd`` is no longer the one at ``path`` (removed by a releasing run)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return True
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) != (own.st_dev, own.st_ino)


TEMP_AGE_SECONDS = 60  # a temp file this old is not being written (writes take well under a second)


def clean_temp_files(folder: Path, older_than: float = TEMP_AGE_SECONDS) -> list[Path]:
    """Remove hidden temp files (``.*.tmp``) of interrupted writes in a campaign folder and its log;
    return them. They were never renamed into place, so they hold nothing recorded."""
    removed = []
    now = time.time()
    for temp in list(folder.glob(".*.tmp")) + list(folder.glob("log/.*.tmp")):
        try:
            if now - temp.stat().st_mtime > older_than:
                temp.unlink()
                removed.append(temp)
        except OSError:  # gone already, or a read-only home: harmless
            pass
    return removed


def read_holder(path: Path) -> dict:
    """The holder a lock file names ({} when it names none or cannot be read)."""
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe(holder: dict) -> str:
    if not holder:
        return "another process"
    return f"host {holder.get('host', '?')} pid {holder.get('pid', '?')} since {holder.get('since', '?')}"


def ending_status(exc: BaseException | None) -> str:
    """``finished`` (no exception), ``interrupted`` (Ctrl-C, SIGTERM) or ``failed``."""
    if exc is None:
        return "finished"
    names = {cls.__name__ for cls in type(exc).__mro__}
    if isinstance(exc, KeyboardInterrupt) or names & {"TerminationSignal", "ExternalSignal"} or signal_in_query(exc):
        return "interrupted"
    return "failed"


def signal_in_query(exc: BaseException) -> bool:
    """Whether ``exc`` is DuckDB's report of a signal that arrived during a query (module docstring)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return "InterruptException" in names or (isinstance(exc, RuntimeError) and str(exc).startswith("Query interrupted"))


def reraise_interrupt(exc: BaseException) -> None:
    """Raise KeyboardInterrupt if ``exc`` is a signal DuckDB caught during a query; else return.

    Call it first in an ``except Exception`` that logs and goes on, so a Ctrl-C or SIGTERM is not
    swallowed with the error that carried it.
    """
    if signal_in_query(exc):
        raise KeyboardInterrupt("a signal arrived during a DuckDB query") from exc


def interrupt_behind(exc: BaseException) -> BaseException | None:
    """The Ctrl-C, SIGTERM or Prefect cancellation (TerminationSignal) that was unwinding when ``exc``
    was raised, if any (torch's vmap, stopped half-way by one, raises "INTERNAL ASSERT FAILED" as it
    unwinds: that error is the signal's, no failure of the work)."""
    seen, cause = set(), exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, KeyboardInterrupt) or type(cause).__name__ == "TerminationSignal":
            return cause
        cause = cause.__context__
    return None


def raise_on_sigterm() -> None:
    """Make SIGTERM raise ``Terminated`` in the main thread (a no-op elsewhere), so cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        raise Terminated(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def campaign_liveness(info: dict) -> str:
    """A campaign.json's status as it stands: "running" whose pid is dead on this host is
    "stopped (crashed?)"; one on another host is "running (on HOST)". The one liveness check, used
    by ``status``, the store's ``campaigns`` view and the notebook API."""
    status = str(info.get("status") or "unknown")
    if status != "running":
        return status
    host = info.get("host")
    if host and host != socket.gethostname():
        return f"running (on {host})"  # its pid means nothing here
    pid = info.get("pid")
    if pid is None:  # written before campaign.json named its process: cannot check; one left out as damaged: no run
        return "stopped (crashed?)" if info.get("pid_damaged") else "running"
    # a damaged pid (not a positive int: 0 and -1 would ask about our own process group) names no live run
    valid = isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 2 ** 31
    return "running" if valid and pid_alive(pid) else "stopped (crashed?)"
