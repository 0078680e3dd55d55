"""Crash-safe file writes and forgiving JSON reads: the one atomic-write helper of the package.

A file written with ``atomic_write`` is complete or absent: it goes to a hidden temp name in the
same folder, is fsynced, then renamed over the final name (``os.replace`` is atomic), and the
folder is fsynced so the rename survives a power cut. Every file the package writes in place goes
through it (the storage seam's LocalBackend.put too); ``publish`` is its last step, for a file
that a library must write by path (DuckDB's catalog, PyAV's videos). No other module renames a
file into place (tests/test_storage.py checks it).
"""
from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

log = logging.getLogger(__name__)


def atomic_write(final: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a hidden temp file beside ``final``, then ``publish`` it as ``final``.

    Raises whatever ``write`` or the file system raises; the temp file is removed then.
    """
    temp = temp_beside(final)
    try:
        with open(temp, "wb") as f:  # closing flushes: a full disk raises here, inside the try
            write(f)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        if exc.filename:
            raise
        # Arrow's write errors carry no path: name the file, keep the errno (ENOSPC: disk full)
        raise OSError(exc.errno, exc.strerror or (str(exc).splitlines() or ["write failed"])[0], str(final)) from exc
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    publish(temp, final)


def temp_beside(final: Path) -> Path:
    """A hidden temp name in ``final``'s folder (``.<name>.<random>.tmp``): readers never list it,
    and lab/lock.py removes those an interrupted write leaves."""
    return final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"


def publish(temp: Path, final: Path) -> None:
    """Make a finished ``temp`` file (written by path, e.g. by DuckDB) ``final``, atomically:
    fsync it, rename it over ``final``, fsync the folder. The temp file is removed if this fails."""
    try:
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temp, final)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        if exc.filename:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(final)) from exc  # an fsync error names no file
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (renames, unlinks) to disk; a no-op where the OS refuses."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; the rename is still atomic
        pass
    finally:
        os.close(fd)


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None if it is missing, unreadable or not an object."""
    try:
        if path.exists() and not path.is_file():  # a FIFO would block the reader forever
            raise ValueError("not a regular file")
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s); treated as missing", path, str(exc)[:120])
        return None
    return json_object(raw, path)


def json_object(raw: bytes, where: object) -> dict | None:
    """The JSON object in ``raw`` (read from ``where``), or None (with a warning) if it is not one."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than json parses
        log.warning("%s is unreadable (%s); treated as missing", where, str(exc)[:120])
        return None
    return data if isinstance(data, dict) else None


def one_line(line: bytes | str) -> bytes:
    """``line`` as the bytes ``Backend.append`` adds: UTF-8, ending in one newline. Raises ValueError
    for a newline inside it."""
    data = line.encode() if isinstance(line, str) else bytes(line)
    data = data[:-1] if data.endswith(b"\n") else data
    if b"\n" in data:
        raise ValueError("a line to append has a newline inside it (it would land as two lines)")
    return data + b"\n"
