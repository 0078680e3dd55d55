"""The storage seam: where a home's files live, behind one small protocol.

The history store (lab/store.py) and the campaign files (campaign.json, state.json, summary.txt,
diagnoses.jsonl, inflight.json) are written and read through a ``Backend``. Keys are
'/'-separated paths relative to the home's root (``campaigns/<id>/log/part-....parquet``). The
guarantees every backend gives, and the store relies on:

* ``put`` is atomic: a reader sees the whole new object or the old one (or none), never a part.
  Local files: a temp file beside the target, fsynced, renamed over it, the folder fsynced
  (lab/_io.atomic_write, the one atomic-write helper). Object stores: a single PUT.
* ``create`` is a conditional create: it writes only if the key does not exist, and says whether
  it did. Two writers racing for one key: exactly one wins (O_EXCL locally; If-None-Match: * on
  object stores). Locks and leases build on it.
* ``append`` adds one line to a text object (a JSON-lines log such as bugfix_events.jsonl or
  diagnoses.jsonl): of concurrent appenders every line lands whole, none lost, none interleaved
  with another, and the lines already there are kept. Object stores: read the object with its
  ETag, put it back with the line under If-Match (If-None-Match: * when absent), and on a lost
  race read and try again; this holds across machines. Local files: one write() on an O_APPEND
  descriptor (under an flock, which keeps the missing-newline check below true), fsynced; this
  holds across the processes of one machine (NFS does not make O_APPEND atomic across its
  clients), and a power cut during it can at worst leave that last line short (readers of these
  logs skip a bad line). A line after a last line without its newline (a hand
  edit, a torn line) starts on a new line.
* ``list`` returns the keys under a prefix, sorted; it never lists a half-written object (local
  temp files are hidden names, which ``list`` leaves out). ``folders`` names the folders directly
  under a prefix (a campaign is a folder of ``campaigns/``), without listing every object below.
* ``open_copy`` opens an object that never changes after its write (a feature part file, a kept
  head) from local disk: the file itself, or a copy an object store keeps in its read cache.
* No rename is assumed by callers: compaction writes the merged object, then deletes the objects
  it replaces (readers ignore replaced objects by the merged object's footer).

``LocalBackend`` (a folder on a POSIX filesystem) is the implementation for a path home.
``backend_for(root)`` picks the backend for a home root (a path, or a URL such as s3://bucket/p).
"""
from __future__ import annotations

import errno
import fcntl
import os
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from crashsearch.lab._io import atomic_write, fsync_dir, one_line
from crashsearch.lab.errors import UserError


@runtime_checkable
class Backend(Protocol):
    """Where one home's objects live. Keys are '/'-separated, relative to the home root."""

    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (a folder-like prefix such as ``campaigns/x/log/``), sorted."""

    def folders(self, prefix: str) -> list[str]:
        """The names of the folders directly under ``prefix`` (object stores: the common prefixes
        of a delimiter listing; a local folder counts even when empty), sorted."""

    def read(self, key: str) -> bytes:
        """The bytes of ``key``; FileNotFoundError if it does not exist."""

    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` to ``key`` atomically (whole or not at all), replacing any old object."""

    def create(self, key: str, data: bytes) -> bool:
        """Write ``data`` to ``key`` only if it does not exist; True if this call created it."""

    def append(self, key: str, line: bytes | str) -> None:
        """Add ``line`` (one line; its newline is added) to the text object ``key``, creating it if
        absent; concurrent appends all land whole (module docstring). Raises ValueError for a line
        with a newline inside, OSError when the line could not be added."""

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""

    def mtime(self, key: str) -> float:
        """Last-modified time of ``key`` (seconds since the epoch); FileNotFoundError if absent."""

    def size(self, key: str) -> int:
        """The size of ``key`` in bytes, without reading it; FileNotFoundError if absent."""

    def url(self, key: str) -> str:
        """Where ``key`` is, for people and for clients of the store's URLs (a local path, or
        s3://bucket/prefix/key)."""

    def local_path(self, key: str) -> str:
        """A local file DuckDB reads ``key`` by, with its own file system: the file itself, or an object
        store's copy in the home's read cache (fetched first if missing). For objects never changed
        after their write (log parts); FileNotFoundError if absent."""

    def open_copy(self, key: str) -> BinaryIO:
        """``key`` opened for reading from local disk: the file itself for a local home; for an object
        store, a copy in the size-capped local read cache, fetched once per ETag. For objects written
        once and never changed (feature part files, kept heads); FileNotFoundError if absent."""


class LocalBackend:
    """A home in a local (or NFS-mounted) folder."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"bad storage key {key!r}")
        return self.root / key

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        keys = []
        for path in base.rglob("*"):
            if path.name.startswith(".") or not path.is_file():  # hidden: temp files of writes
                continue
            keys.append(path.relative_to(self.root).as_posix())
        return sorted(keys)

    def folders(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))

    def read(self, key: str) -> bytes:
        path = self._path(key)
        if path.exists() and not path.is_file():  # a FIFO would block the reader forever
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return path.read_bytes()

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(data))

    def create(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # written whole under a hidden name, then hard-linked to the key: link() fails if the key
        # exists, so the create is exclusive and a reader never sees a half-written object
        temp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.create.tmp"
        try:
            atomic_write(temp, lambda f: f.write(data))
            os.link(temp, path)
        except FileExistsError:
            return False
        finally:
            temp.unlink(missing_ok=True)
        fsync_dir(path.parent)
        return True

    def append(self, key: str, line: bytes | str) -> None:
        data = one_line(line)
        path = self._path(key)
        if path.exists() and not path.is_file():  # opening a FIFO for writing would wait for a reader forever
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            # one write() on an O_APPEND descriptor: the kernel places it at the end whole, so
            # concurrent appenders' lines never interleave and none overwrites another. The lock
            # only keeps the last-byte check true: a write crossing a page boundary grows the size
            # page by page, and a check between two pages read a line's middle as a missing newline
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":  # a last line without its newline (a hand edit)
                    data = b"\n" + data
                written = os.write(fd, data)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            if written != len(data):  # a full disk mid-line: say so rather than leave it silently short
                raise OSError(errno.ENOSPC, f"only {written} of {len(data)} bytes appended", str(path))
            os.fsync(fd)
        finally:
            os.close(fd)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def mtime(self, key: str) -> float:
        return self._path(key).stat().st_mtime

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def url(self, key: str) -> str:
        return str(self._path(key))

    def local_path(self, key: str) -> str:
        path = self._path(key)
        if not path.is_file():  # gone (a compaction removed it), or a FIFO that would block its reader
            raise (OSError(errno.EINVAL, "not a regular file", str(path)) if path.exists()
                   else FileNotFoundError(errno.ENOENT, "No such file", str(path)))
        return str(path)

    def open_copy(self, key: str) -> BinaryIO:
        path = self._path(key)
        if path.exists() and not path.is_file():
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return open(path, "rb")

    def remove_stale_temps(self, prefix: str, age: float) -> list[str]:
        """Remove the hidden temp files (``.*.tmp``) in ``prefix``'s folder older than ``age``
        seconds, which a writer killed mid-write left (object stores' PUTs leave none); return
        their names. Not part of the protocol: the store calls it where a backend has it."""
        folder = self._path(prefix.rstrip("/"))
        removed = []
        for temp in folder.glob(".*.tmp") if folder.is_dir() else []:
            try:
                if time.time() - temp.stat().st_mtime > age:
                    temp.unlink()
                    removed.append(temp.name)
            except FileNotFoundError:  # another sweep got there first
                pass
        return removed


def is_url(root: str | os.PathLike) -> bool:
    """Whether a home root names an object store (``s3://...``, ``gs://...``) rather than a path."""
    return "://" in str(root)


def attach(con, backend: Backend) -> None:
    """Let DuckDB connection ``con`` read the URLs ``backend.url`` names: an object store registers its
    filesystem on the connection (lab/storage_s3.py); local paths need nothing."""
    hook = getattr(backend, "attach", None)
    if hook is not None:
        hook(con)


def backend_for(root: str | os.PathLike) -> Backend:
    """The backend for a home root: a LocalBackend for a path, an S3Backend for ``s3://bucket/prefix``.
    Raises UserError (one line) for a URL of another scheme."""
    if is_url(root):
        scheme = str(root).split("://", 1)[0].lower()
        if scheme == "s3":
            from crashsearch.lab.storage_s3 import S3Backend  # s3fs loads only for an object-store home

            return S3Backend(str(root))
        if scheme in ("gs", "gcs"):  # the lease needs conditional PUTs, written against S3's API
            raise UserError(f"{scheme}:// homes are not supported yet ({root}): a home is a folder or an "
                            f"s3://bucket/prefix URL (S3 or an S3-compatible store)")
        raise UserError(f"no storage backend for {root}: a home is a folder or an s3://bucket/prefix URL")
    return LocalBackend(Path(root))
