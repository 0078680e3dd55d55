"""A campaign's space, kept with the campaign: a digest that pins its cell ids, and its YAML.

Cell ids are mixed-radix over the space's axis values (lab/space.py), so an edit of the space
(one more encoder) renumbers cells, and a resume in the edited space would dedup on the wrong
ids. So a campaign records in its campaign.json the digest of its space (``space_digest``:
sha256 over the axis names and values in order, nothing of the YAML's formatting, comments or
help texts; a restriction such as ``--backbones`` does not change it) with the axes themselves
(``space_axes``), and keeps a copy of the YAML as ``campaigns/<id>/space.yaml`` (``space_file``).

``campaign_space`` is how a run, an import, a benchmark and the control arms find a campaign's
space: the ``--space`` given, else the kept copy, else the file campaign.json names, else the
default space. A space whose digest differs from the recorded one is refused in one line that
says what changed ("encoder gained [tcn]"). We refuse rather than remap by axis values: recorded
rows never change, so a remap would give one cell two ids in one history and split it in every
grouping by cell id. Campaigns created before digests were recorded are accepted (the log says
so once) and get their digest on that run.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from crashsearch.lab._io import atomic_write
from crashsearch.lab.logfiles import campaign_key, read_object
from crashsearch.lab.errors import UserError
from crashsearch.lab.rows import check_campaign_id
from crashsearch.lab.settings import Home
from crashsearch.lab.space import DEFAULT_SPACE, Space, SpaceError
from crashsearch.lab.storage import backend_for

SPACE_FILE = "space.yaml"


class SpaceMismatch(UserError):
    """A space whose digest differs from the one the campaign recorded; the message says what changed."""


def space_axes(space: Space) -> list[list[Any]]:
    """The canonical form of a space's ids: [[axis name, [values...]], ...] in axis order (full values)."""
    return [[a.name, list(a.values)] for a in space.axes]


def space_digest(space: Space) -> str:
    """sha256 (hex, first 16) of ``space_axes``: equal for two YAML files that give the same cell ids."""
    text = json.dumps(space_axes(space), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe_change(recorded: list, space: Space) -> str:
    """What differs between recorded axes (``space_axes`` of the campaign's space) and ``space``:
    "encoder gained [tcn]; lr lost [0.01]" (axes added, removed or reordered, values reordered)."""
    def key(v: Any) -> str:
        return json.dumps(v)

    old = {str(name): list(values) for name, values in recorded}
    new = {name: values for name, values in space_axes(space)}
    parts = [f"axis {n} removed" for n in old if n not in new]
    parts += [f"axis {n} added [{', '.join(map(str, new[n]))}]" for n in new if n not in old]
    for name in (n for n in new if n in old):
        before, after = [key(v) for v in old[name]], [key(v) for v in new[name]]
        gained = [v for v, k in zip(new[name], after) if k not in before]
        lost = [v for v, k in zip(old[name], before) if k not in after]
        if gained:
            parts.append(f"{name} gained [{', '.join(map(str, gained))}]")
        if lost:
            parts.append(f"{name} lost [{', '.join(map(str, lost))}]")
        if not gained and not lost and before != after:
            parts.append(f"{name}'s values are in another order")
    if not parts and list(old) != list(new):
        parts.append("the axes are in another order")
    return "; ".join(parts) or "the values' types differ (e.g. 16 against 16.0)"


def _folder(home: Home, campaign: str) -> Path:
    return home.root / "campaigns" / check_campaign_id(campaign)  # no mkdir: reading commands use it too


def kept_space(home: Home, campaign: str) -> Path | None:
    """The campaign's copy of its space YAML, or None when it has none (older campaigns, new ones).
    An object-store home keeps it on the bucket; it is loaded from a copy in the scratch folder."""
    path = _folder(home, campaign) / SPACE_FILE
    if home.url:
        try:
            data = backend_for(home.url).read(campaign_key(campaign, SPACE_FILE))
        except FileNotFoundError:
            return None
        if not path.is_file() or path.read_bytes() != data:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f: f.write(data))
    return path if path.is_file() else None


def _shown(home: Home, campaign: str, path: Path) -> str:
    """How a message names ``path``: the kept copy of an object-store home by its URL on the bucket."""
    if home.url and Path(path) == _folder(home, campaign) / SPACE_FILE:
        return backend_for(home.url).url(campaign_key(campaign, SPACE_FILE))
    return str(path)


def campaign_space(home: Home, campaign: str, requested: str | Path | None = None,
                   log: Callable[[str], None] | None = None) -> tuple[Space, Path | None]:
    """The space (full, unrestricted) a run, import or benchmark of ``campaign`` uses, and its file
    (None: the default space). Raises SpaceMismatch (one line) when ``requested`` is not the space
    the campaign recorded, SpaceError when the file cannot be read. ``log`` hears once that an older
    campaign has no recorded space."""
    info = read_object(backend_for(home.location), campaign_key(campaign, "campaign.json")) or {}
    named = info.get("space_path")
    own = kept_space(home, campaign)
    if requested:
        path: Path | None = Path(requested)
    elif own:
        path = own
    elif named and Path(named).is_file():
        path = Path(named)
    else:
        path = None
    try:
        space = Space.load(path)
    except SpaceError as exc:  # a damaged kept copy of an object-store home: named by its URL, not its scratch copy
        if own is None or path != own or not home.url:
            raise
        raise SpaceError(str(exc).replace(str(own), _shown(home, campaign, own))) from None
    check_space(info, campaign, space, _shown(home, campaign, path) if path else "the default space",
                _shown(home, campaign, own) if own else None)
    if info and not info.get("space_digest") and log is not None:
        log(f"campaign {campaign!r} was created before spaces were recorded: its cell ids cannot be checked "
            f"against {path or 'the default space'}; recording that space as the campaign's from now on")
    return space, path


def check_space(info: dict, campaign: str, space: Space, where: str | Path = "this space",
                own: str | Path | None = None) -> None:
    """Raise SpaceMismatch when campaign.json ``info`` recorded another space than ``space`` (the one
    line names what changed and what to do); a campaign with no recorded digest passes."""
    digest = info.get("space_digest")
    if not digest or digest == space_digest(space):
        return
    what = describe_change(info["space_axes"], space) if info.get("space_axes") else "another space"
    hint = (f"leave out --space to use the campaign's own copy ({own})" if own and str(Path(where)) != str(Path(own))
            else "pass the campaign's own space file")
    raise SpaceMismatch(f"campaign {campaign!r} was recorded in space {info.get('space')!r} (digest {digest}); "
                        f"{where} differs: {what}. Its cell ids would mean other cells: {hint}, "
                        f"or start a new campaign id")


def keep_space(home: Home, campaign: str, space: Space, path: Path | None) -> dict[str, Any]:
    """Copy the space YAML into the campaign's folder (unless the copy there has the same digest) and
    return the campaign.json keys that record it: space, space_digest, space_axes, space_file."""
    source = Path(path) if path else DEFAULT_SPACE
    dest = home.campaign(campaign) / SPACE_FILE
    if source.resolve() != dest.resolve():
        try:
            same = dest.is_file() and space_digest(Space.load(dest)) == space_digest(space)
        except ValueError:  # a damaged copy: replaced below
            same = False
        if not same:
            data = source.read_bytes()
            atomic_write(dest, lambda f: f.write(data))
    if home.url:  # the bucket keeps the copy, so a resume on another node finds it
        backend, key, data = backend_for(home.url), campaign_key(campaign, SPACE_FILE), dest.read_bytes()
        try:
            kept = backend.read(key)
        except FileNotFoundError:
            kept = None
        if kept != data:
            backend.put(key, data)
    return {"space": space.name, "space_digest": space_digest(space), "space_axes": space_axes(space),
            "space_file": str(dest)}
