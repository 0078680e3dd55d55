"""Whose fault an error is: the user's (one line, exit 2) or ours (a report file, exit 70).

``UserError`` is raised where input is checked: a bad id, number, path, file or setting. It is
a ValueError, so code that catches ValueError keeps working. An OSError counts as the user's
when it is about the machine the user gave us (a full disk, a read-only or forbidden folder);
any other exception is a bug in crashsearch and ``report_internal`` writes its traceback to a
file the user can attach to an issue.
"""
from __future__ import annotations

import errno
import os
import tempfile
import traceback
from datetime import datetime, timezone
from pathlib import Path

# errnos that describe the user's machine, not our code: the one line names the path
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EMFILE,
                                errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.ELOOP,
                                errno.EHOSTUNREACH})  # an object-store home's endpoint out of reach (lab/storage_s3.py)
INTERNAL_EXIT = 70  # EX_SOFTWARE (sysexits.h)


class UserError(ValueError):
    """A mistake in what the user gave (argument, file, setting): reported in one line, exit 2."""


def is_user_error(exc: BaseException) -> bool:
    """True for a UserError or an OSError about the user's machine (disk full, no permission)."""
    if isinstance(exc, UserError):
        return True
    return isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS


def report_internal(exc: BaseException, home_root: Path | None) -> Path | None:
    """Write ``exc``'s traceback to ``<home>/logs/internal-<UTC time>-<pid>.txt`` (a temp folder
    when the home is missing or not writable); return the file, or None if nothing could be written."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = f"internal-{stamp}-{os.getpid()}.txt"
    folders = ([Path(home_root) / "logs"] if home_root is not None and Path(home_root).is_dir() else [])
    folders.append(Path(tempfile.gettempdir()) / "crashsearch-logs")
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:  # a read-only or full home: try the next place
            continue
    return None
