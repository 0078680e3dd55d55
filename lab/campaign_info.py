"""What a campaign.json may hold: its known keys and their domains, checked by the writer and the reader.

``Store.write_campaign`` refuses a bad value of a known key in one line naming it (nothing is
written then); ``Store.campaigns`` reads through ``readable_info``, which leaves out a bad entry of
a file written by an older version or by hand, names the file and the entry once and keeps the
rest. Unknown keys pass through untouched: they are only shown (the ``info`` column).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from crashsearch.lab.errors import UserError
from crashsearch.lab.bounds import check_int, check_number, check_time, skip_entry

PID_MAX = 2 ** 31 - 1  # pid_t


def _text(value: Any, name: str) -> None:
    if not isinstance(value, str):
        raise UserError(f"{name} {value!r} is not text")


def _texts(value: Any, name: str) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{name} {str(value)[:60]!r} is not a list of names")


def _policies(value: Any, name: str) -> None:
    if not isinstance(value, str):
        _texts(value, name)


def _mapping(value: Any, name: str) -> None:
    if not isinstance(value, dict):
        raise UserError(f"{name} {str(value)[:60]!r} is not an object")


def _runs(value: Any, name: str) -> None:
    if not isinstance(value, list) or not all(isinstance(run, dict) for run in value):
        raise UserError(f"{name} {str(value)[:60]!r} is not a list of objects")
    for i, run in enumerate(value):
        for key in ("new", "recorded"):
            if run.get(key) is not None:
                check_int(run[key], f"{name}[{i}].{key}", 0)


def _dedup(value: Any, name: str) -> None:
    _mapping(value, name)
    for policy, reasons in value.items():
        _mapping(reasons, f"{name}.{policy}")
        for reason, count in reasons.items():
            check_int(count, f"{name}.{policy}.{reason}", 0)


CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "budget": lambda v, n: check_int(v, n, 1),
    "extend": lambda v, n: check_int(v, n, 1),
    "seeds": lambda v, n: check_int(v, n, 1),
    "recorded": lambda v, n: check_int(v, n, 0),
    "pid": lambda v, n: check_int(v, n, 1, PID_MAX),
    "hours": lambda v, n: check_number(v, n, 0.0),
    "created_at": check_time, "updated_at": check_time,
    "runs": _runs, "dedup_dropped": _dedup,
    "policies": _policies, "backbones": _texts,
    "weights": _mapping, "policy_args": _mapping,
    **{key: _text for key in ("id", "campaign", "dataset", "dataset_path", "space", "space_path", "status", "host",
                              "stop_reason", "propose_mode", "source")},
}


NUMBERS = ("budget", "extend", "seeds", "recorded", "pid", "hours")  # kept as checked: 1500.0 reads as 1500


def _checked(info: dict) -> tuple[dict, list[tuple[str, str]]]:
    """(``info`` with its numbers normalised and its bad entries left out, (key, why) per bad entry)."""
    out, found = dict(info), []
    for key, check in CHECKS.items():
        value = info.get(key)
        if value is None:
            continue
        try:
            checked = check(value, key)
        except ValueError as exc:
            found.append((key, str(exc)))
            del out[key]
            continue
        if key in NUMBERS:
            out[key] = checked
    return out, found


def problems(info: dict) -> list[tuple[str, str]]:
    """(key, why) for each known key of ``info`` whose value is outside its domain (None is always allowed)."""
    return _checked(info)[1]


def check_info(info: dict) -> None:
    """Raise ValueError (one line naming the key and value) when ``info`` has a value no reader accepts."""
    found = problems(info)
    if found:
        raise UserError(f"campaign.json: {found[0][1]}")


def readable_info(info: dict, path: Path) -> dict:
    """``info`` without its entries outside their domain; each left-out entry is named once (lab.bounds.skip_entry)."""
    clean, found = _checked(info)
    for key, why in found:
        skip_entry(path, f"entry {key!r}", why)
    return clean
