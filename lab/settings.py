"""Where crashsearch keeps its state: one home directory, or a home on object storage.

Layout under the home (``--home DIR``, else ``$CRASHSEARCH_HOME``, else ``./crashsearch-data``)::

    datasets/<name>/          videos and manifests (synthetic or linked real data)
    cache/<dataset>/<backbone>/<spec hash>/   Parquet feature cache
    campaigns/<campaign id>/  experiment log (Parquet), state, report
    reports/, benchmarks/     what users ask commands to write (query --out, benchmark): the only
                              folders of the home a user-named output may go to

A home may also be a URL, ``s3://bucket/prefix`` (lab/storage_s3.py): everything other machines
read lives there (campaigns/ with the log, the campaign files, the lease, kept heads and the
champion; cache/; bugfix_events.jsonl; quarantine/), read and written through the storage seam.
What is this machine's own (Prefect's state of local runs, the logs of internal errors, the reports
and outputs commands write for the user) goes to a local scratch folder for that URL,
``Home.root``: ``$CRASHSEARCH_SCRATCH/<hash of the URL>``, default
``~/.cache/crashsearch/homes/<hash>`` (``$XDG_CACHE_HOME`` honoured); the read cache of objects
fetched from the bucket is its ``objects/``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from crashsearch.lab.errors import UserError

DEFAULT_HOME = "crashsearch-data"
OUTPUT_FOLDERS = ("reports", "benchmarks")
# what a writing command can leave in a home, any one of which marks it (an internal error of a first
# command leaves only logs/; a first bug-fix declaration only its events file)
HOME_MARKERS = ("campaigns", "cache", "datasets", "logs", "reports", "quarantine", "bugfix_events.jsonl",
                "history.duckdb", ".prefect")


@dataclass(frozen=True)
class Home:
    """The resolved home directory and its standard sub-folders (created on demand, unless the
    Home is read-only: a reading command never creates a folder). For an object-store home,
    ``url`` is the home and ``root`` its local scratch folder (module docstring)."""

    root: Path
    create: bool = True
    url: str | None = None

    @property
    def location(self) -> str:
        """The home as a flow parameter or ``--home`` takes it: the URL of an object-store home, else the folder."""
        return self.url or str(self.root)

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
    if "://" in str(raw):
        return _url_home(str(raw), create)
    root = Path(raw).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise UserError(f"home {root} is not a folder")
    if create:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a path the user gave that cannot be a folder (/proc/..., under a file)
            raise UserError(f"cannot create the home {root}: {exc.strerror or exc}") from None
    return Home(root, create)


def _url_home(url: str, create: bool) -> Home:
    """An object-store home: the URL checked (a backend exists for it) and its local scratch folder."""
    from crashsearch.lab.storage import backend_for  # loads the object store's client
    from crashsearch.lab.storage_s3 import scratch_folder

    url = backend_for(url).root  # one spelling per home: s3://bucket/prefix
    root = scratch_folder(url)
    if create:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the local scratch folder {root} of the home {url}: {exc.strerror or exc}") from None
    return Home(root, create, url)


def check_output_path(home: Home, out: str | os.PathLike, flag: str = "--out",
                      allowed: tuple[str, ...] = OUTPUT_FOLDERS) -> Path:
    """Return ``out`` as a Path; raise UserError (one line) when it lies inside the home other than
    under one of the ``allowed`` folders (default OUTPUT_FOLDERS; a synthetic dataset: datasets/), or
    when it is a URL (outputs are local files).

    Links are resolved first, so a symlink into the log is refused too (a hard link cannot be seen
    from its path: writers rename a temp file over the target, which leaves the other name's file
    alone). The allowed folders are taken literally: a link named reports/ that points into
    campaigns/ does not make campaigns/ writable."""
    if "://" in str(out):  # a URL would become a local folder named "s3:" in the working directory
        raise UserError(f"{flag} {out}: outputs are written to a local folder, not a URL; give a local path")
    root = Path(os.path.realpath(home.root))
    target = Path(os.path.realpath(out))
    if target != root and root not in target.parents:
        return Path(out)
    if any(root / name in target.parents for name in allowed):
        return Path(out)
    raise UserError(f"{flag} {out}: refusing to write inside the home {root} (its history, datasets and caches "
                     f"live there); choose a path outside it or under {root / allowed[0]}/")


def check_home(root: Path | Home) -> None:
    """Raise UserError unless ``root`` holds a crashsearch home (an empty folder is a new one):
    a reading command pointed at the wrong folder says so instead of finding nothing there. An
    object-store home (a Home with a URL) must hold a campaign."""
    if isinstance(root, Home):
        if root.url:
            from crashsearch.lab.storage import backend_for

            if not backend_for(root.url).list("campaigns/"):
                raise UserError(f"no crashsearch home at {root.url} (no campaigns/ under it)")
            return
        root = root.root
    if not root.exists():
        raise UserError(f"no crashsearch home at {root} (no such folder)")
    if any(root.iterdir()) and not any((root / name).exists() for name in HOME_MARKERS):
        raise UserError(f"{root} is not a crashsearch home (none of campaigns/, cache/, datasets/, logs/ or the files a home keeps)")
