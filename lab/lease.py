"""One writer per campaign on object storage: a lease instead of ``flock``.

A home on an object store (``s3://bucket/prefix``) has no file locks and no rename, so the
one-writer guarantee of lab/lock.py is built from conditional writes:

* **Taking it.** The lease is one small JSON object, ``campaigns/<id>/lease.json``, naming its
  holder (host, pid, since) and when it expires. It is taken by a conditional create
  (``If-None-Match: *``): of two writers racing for a free campaign exactly one creates it, and
  the other is refused with the holder's name (``CampaignBusy``, as from ``CampaignLock``).
* **Keeping it.** The holder renews it every ``ttl / 3`` seconds from a background thread, each
  renewal a conditional overwrite on the ETag it last wrote (``If-Match``). A renewal that finds
  another ETag means the lease was taken over (this run stalled past its expiry): the lease is
  marked lost, ``check()`` raises ``LeaseLost`` and the run stops writing.
* **A dead holder.** A holder that dies stops renewing; once the lease's ``expires`` has passed,
  the next writer takes it over by a conditional overwrite on the ETag it read, so of several
  writers that find the same stale lease exactly one wins. On the dead holder's own host the wait
  is skipped: a holder whose pid no longer runs there is dead now (as a flock would be freed). A damaged
  lease (not JSON, or an expiry that is not a time at most MAX_LEASE_SECONDS ahead) is taken over at once.
* **Giving it up.** ``release()`` deletes the object only if it is still ours (a conditional
  delete on our ETag where the store offers one; otherwise it first overwrites it, conditionally,
  with a released marker, which any writer takes over at once, and then deletes it: a writer that
  took the marker in between loses nothing but a lease it re-creates at its next renewal).

Clocks: expiry is judged by the taker's wall clock against the holder's, so hosts' clocks must
agree to well within ``ttl / 3`` (NTP does). The window a crashed writer keeps its campaign is at
most ``ttl`` (default LEASE_SECONDS, or ``$CRASHSEARCH_LEASE_SECONDS``).

The backend needs, beyond lab/storage.Backend, ``create_tagged``, ``read_tagged`` and
``replace`` (lab/storage_s3.S3Backend has them).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Protocol

from crashsearch.lab.errors import UserError
from crashsearch.lab.lock import CampaignBusy, Reentrant, describe, pid_alive
from crashsearch.lab.rows import check_campaign_id
from crashsearch.lab.storage import Backend

log = logging.getLogger(__name__)

LEASE_FILE = "lease.json"
LEASE_SECONDS = 60.0  # a crashed writer keeps its campaign at most this long
MAX_LEASE_SECONDS = 86400.0  # longer, and a crashed writer's campaign waits a day (inf broke the renewal thread)


class LeaseLost(UserError):
    """This run's lease was taken over by another writer (it stalled past its expiry): stop writing."""


class TaggedBackend(Backend, Protocol):
    """A backend with the conditional writes a lease needs (ETags or generations as ``tag``)."""

    def create_tagged(self, key: str, data: bytes) -> str | None:
        """Create ``key`` only if absent; its new tag, or None when it exists."""

    def read_tagged(self, key: str) -> tuple[bytes, str]:
        """The bytes of ``key`` and their tag; FileNotFoundError if absent."""

    def replace(self, key: str, data: bytes, tag: str) -> str | None:
        """Overwrite ``key`` only if its tag is still ``tag``; the new tag, or None otherwise."""

    def delete_if(self, key: str, tag: str) -> bool | None:
        """Delete ``key`` only if its tag is ``tag``: True, False (another tag), or None when the
        store cannot delete conditionally."""


def lease_seconds() -> float:
    """The lease's lifetime: ``$CRASHSEARCH_LEASE_SECONDS`` or LEASE_SECONDS."""
    raw = os.environ.get("CRASHSEARCH_LEASE_SECONDS")
    if not raw:
        return LEASE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"CRASHSEARCH_LEASE_SECONDS={raw!r} is not a number of seconds") from None
    if not 1 <= value <= MAX_LEASE_SECONDS:
        raise UserError(f"CRASHSEARCH_LEASE_SECONDS={raw!r}: a lease lasts from 1 to {MAX_LEASE_SECONDS:.0f} seconds")
    return value


class ObjectLease(Reentrant):
    """``CampaignLock``'s interface on an object-store home: ``acquire()`` returns self,
    ``release()`` gives it up, ``with ObjectLease(backend, "c1"):`` does both, re-entrant within one
    process. ``previous`` is the stale holder taken over (or None). Raises CampaignBusy when a live
    holder has it, ValueError on a bad campaign id."""

    def __init__(self, backend: TaggedBackend, campaign: str, ttl: float | None = None):
        self.campaign = check_campaign_id(campaign)
        self.backend = backend
        self.key = f"campaigns/{campaign}/{LEASE_FILE}"
        self.ttl = lease_seconds() if ttl is None else float(ttl)
        self.tag: str | None = None
        self.holder: dict = {}
        self.previous: dict | None = None
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write = threading.Lock()  # renewal and release never overlap

    @property
    def path(self) -> str:
        """Where the lease lives (its URL), as ``CampaignLock.path`` names its file."""
        return self.backend.url(self.key)

    def _record(self, since: str | None = None) -> bytes:
        now = time.time()
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(),
                       "since": since or datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "expires": now + self.ttl, "ttl": self.ttl, "token": self.holder.get("token") or uuid.uuid4().hex}
        return (json.dumps(self.holder) + "\n").encode()

    # the re-entrant acquire() and release() of lab/lock.Reentrant, over these
    def _key(self) -> str:
        return self.path

    def _holds(self) -> bool:
        return self.tag is not None

    def _take(self) -> None:
        tag = self.backend.create_tagged(self.key, self._record())
        self.tag = tag if tag is not None else self._take_over()

    def _taken(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{self.campaign}", daemon=True)
        self._thread.start()

    def _free(self) -> None:
        self._stop.set()
        with self._write:
            tag, self.tag = self.tag, None
            if not self.lost.is_set():
                self._give_up(tag)

    def _freed(self) -> None:
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _take_over(self) -> str:
        """Take a stale (expired, released, or dead-on-this-host) lease; CampaignBusy if it is live."""
        for _ in range(5):  # the lease may vanish or change between our reads: look again
            try:
                data, tag = self.backend.read_tagged(self.key)
            except FileNotFoundError:  # released meanwhile
                created = self.backend.create_tagged(self.key, self._record())
                if created is not None:
                    return created
                continue
            current = _parse(data)
            if not _stale(current):
                raise CampaignBusy(f"campaign {self.campaign} is already being run by {describe(current)} "
                                   f"(lease until {_when(current.get('expires'))}); wait for it to finish or stop that "
                                   "process (one writer per campaign)")
            new = self.backend.replace(self.key, self._record(), tag)
            if new is not None:
                self.previous = current
                log.info("campaign %s: took over the stale lease of %s", self.campaign, describe(current))
                return new
        raise CampaignBusy(f"campaign {self.campaign}: another writer is taking its lease now; try again")

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with self._write:
                if self._stop.is_set() or self.tag is None:
                    return
                expires = self.holder["expires"]
                try:
                    new = self.backend.replace(self.key, self._record(self.holder["since"]), self.tag)
                except Exception as exc:  # a network blip: try again at the next tick, while the lease lasts
                    self.holder["expires"] = expires  # not renewed
                    if time.time() >= expires:
                        self._lose(f"could not renew it before it expired ({exc})")
                        return
                    log.warning("campaign %s: lease renewal failed (%s); retrying", self.campaign, str(exc)[:200])
                    continue
                if new is None:
                    self._lose("another writer took it over")
                    return
                self.tag = new

    def _lose(self, why: str) -> None:
        self.lost.set()
        log.error("campaign %s: this run lost its lease (%s); it stops writing", self.campaign, why)

    def check(self) -> None:
        """Raise LeaseLost if the lease was lost (call before a write that needs the one-writer right)."""
        lease = self.outer or self
        if lease.lost.is_set():
            raise LeaseLost(f"campaign {self.campaign}: this run's lease was taken over by another writer; "
                            "it stopped writing (see the lease's holder)")

    def _give_up(self, tag: str) -> None:
        try:
            done = self.backend.delete_if(self.key, tag)
            if done is None:  # no conditional delete: mark it released (ours only), then remove it
                marker = {**self.holder, "released": True, "expires": 0}
                if self.backend.replace(self.key, (json.dumps(marker) + "\n").encode(), tag) is not None:
                    self.backend.delete(self.key)
        except Exception as exc:  # it expires by itself: the next writer waits at most ttl
            log.warning("campaign %s: could not release the lease (%s); it expires within %g s",
                        self.campaign, str(exc)[:200], self.ttl)


def _parse(data: bytes) -> dict:
    try:
        value = json.loads(data or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _stale(holder: dict) -> bool:
    """Whether a lease may be taken: released, expired, unreadable (an expiry no writer sets included), or its
    holder dead on this host."""
    if not holder or holder.get("released"):
        return True
    expires = holder.get("expires")
    now = time.time()
    # no writer sets an expiry beyond MAX_LEASE_SECONDS ahead: nan, inf or 1e300 is a damaged lease (it was an
    # internal error, and one far ahead would have kept the campaign for ever)
    if not isinstance(expires, (int, float)) or not now <= expires <= now + 2 * MAX_LEASE_SECONDS:
        return True
    pid = holder.get("pid")
    if holder.get("host") == socket.gethostname() and isinstance(pid, int) and 0 < pid < 2 ** 31:
        return pid != os.getpid() and not pid_alive(pid)
    return False


def _when(expires) -> str:
    try:
        return datetime.fromtimestamp(expires, timezone.utc).isoformat(timespec="seconds")
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def campaign_lock(home, campaign: str):
    """The one-writer lock of a campaign, picked by where the home lives: a ``CampaignLock`` (flock)
    for a folder, an ``ObjectLease`` for an object-store home (``home.url``). Both take
    ``acquire()``/``release()`` or ``with``; both raise CampaignBusy naming the holder."""
    from crashsearch.lab.lock import CampaignLock
    from crashsearch.lab.storage import backend_for

    if getattr(home, "url", None):
        return ObjectLease(backend_for(home.url), campaign)
    return CampaignLock(home.root, campaign)


def check_lease(home, campaign: str) -> None:
    """Raise LeaseLost if this process held the campaign's lease and lost it (a no-op for a folder
    home or a lease not held here): the store calls it before it writes."""
    if not getattr(home, "url", None):
        return
    held = Reentrant.held(f"{home.url}/campaigns/{campaign}/{LEASE_FILE}")
    if isinstance(held, ObjectLease):
        held.check()
