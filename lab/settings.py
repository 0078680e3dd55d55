"""Where crashsearch keeps its state: one home directory.

Layout under the home (``--home DIR``, else ``$CRASHSEARCH_HOME``, else ``./crashsearch-data``)::

    datasets/<name>/          videos and manifests (synthetic or linked real data)
    cache/<dataset>/<backbone>/<spec hash>/   Parquet feature cache
    campaigns/<campaign id>/  experiment log (Parquet), state, report
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = "crashsearch-data"
HOME_MARKERS = ("campaigns", "cache", "datasets")  # what any writing command leaves in a home


@dataclass(frozen=True)
class Home:
    """The resolved home directory and its standard sub-folders (created on demand, unless the
    Home is read-only: a reading command never creates a folder)."""

    root: Path
    create: bool = True

    @property
    def datasets(self) -> Path:
        return self._sub("datasets")

    @property
    def cache(self) -> Path:
        return self._sub("cache")

    @property
    def campaigns(self) -> Path:
        return self._sub("campaigns")

    def campaign(self, campaign_id: str) -> Path:
        """The folder of one campaign (created if missing and the Home may create)."""
        path = self.campaigns / campaign_id
        if self.create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def _sub(self, name: str) -> Path:
        path = self.root / name
        if self.create:
            path.mkdir(parents=True, exist_ok=True)
        return path


def resolve_home(home: str | os.PathLike | None = None, create: bool = True) -> Home:
    """Return the Home for an explicit path, ``$CRASHSEARCH_HOME`` or the default.

    ``create=False`` (reading commands) creates nothing. Raises ValueError when the path
    exists and is not a folder."""
    raw = home or os.environ.get("CRASHSEARCH_HOME") or DEFAULT_HOME
    root = Path(raw).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise ValueError(f"home {root} is not a folder")
    if create:
        root.mkdir(parents=True, exist_ok=True)
    return Home(root, create)


def check_home(root: Path) -> None:
    """Raise ValueError unless ``root`` holds a crashsearch home (an empty folder is a new one):
    a reading command pointed at the wrong folder says so instead of finding nothing there."""
    if not root.exists():
        raise ValueError(f"no crashsearch home at {root} (no such folder)")
    if any(root.iterdir()) and not any((root / name).exists() for name in HOME_MARKERS):
        raise ValueError(f"{root} is not a crashsearch home (it has no campaigns/, cache/ or datasets/ folder)")
