"""Crash-safe file writes and forgiving JSON reads, shared by the history store's modules.

A file written with ``atomic_write`` is complete or absent: it goes to a hidden temp name in the
same folder, is fsynced, then renamed over the final name (``os.replace`` is atomic), and the
folder is fsynced so the rename survives a power cut.
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
    """Call ``write(file)`` on a hidden temp file beside ``final``, fsync, rename it over ``final``.

    Raises whatever ``write`` or the file system raises; the temp file is removed then.
    """
    temp = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(temp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, final)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        if exc.filename:
            raise
        # Arrow's write errors carry no path: name the file, keep the errno (ENOSPC: disk full)
        raise OSError(exc.errno, exc.strerror or (str(exc).splitlines() or ["write failed"])[0], str(final)) from exc
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
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nested deeper than json parses
        log.warning("%s is unreadable (%s); treated as missing", path, str(exc)[:120])
        return None
    return data if isinstance(data, dict) else None
