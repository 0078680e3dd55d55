"""Kept weights: the head weights of a campaign's leading cells, garbage-collected as the leaders change.

After a batch is recorded, each trained model's head is saved if its cell is among the campaign's
top ``keep`` cells by mean validation AP (lab.leaderboard's ranking, over every recorded run, so the
same cells as the leaderboard), one object per experiment in the home (lab/storage.py)::

    campaigns/<id>/models/<experiment id>.safetensors

A local home has it as a file under its folder; an object-store home (s3://) on the bucket, so the
champion can be packaged on any machine. An object holds one model's own state dict (its slice of a
vectorised group, never the stack) and, as safetensors metadata, the cell, seed, code version and
metrics of its run. It is written with one ``backend.put`` (whole or not at all), after the batch's
rows are in the store, and never changed after: readers take it through ``backend.open_copy`` (an
object store's read cache fetches it once). Then the campaign's heads are collected: one whose
experiment the store knows and whose cell is no longer in the top ``keep`` is deleted. A head of an
experiment the store does not show yet (another worker's batch, read before it landed) is left for a
later collection, so concurrent workers on a shared home never delete each other's leaders.

``keep`` is CampaignConfig.keep_models: a number (10 by default), None for all, 0 for none.
"""
from __future__ import annotations

import errno
import json
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable, Mapping

from crashsearch.lab.errors import UserError
from crashsearch.lab.leaderboard import leaderboard
from crashsearch.lab.logfiles import campaign_key
from crashsearch.lab.settings import Home
from crashsearch.lab.storage import Backend, backend_for

if TYPE_CHECKING:
    import torch

MODELS_DIR = "models"
SUFFIX = ".safetensors"
FORMAT = "crashsearch-head/1"
MAX_HEADER = 100_000_000  # bytes: safetensors' own limit on its JSON header


def parse_keep(text: str | int | None) -> int | None:
    """``--keep-models`` as given: a whole number >= 0, or "all" (None). Raises ValueError in one line."""
    if text is None or (isinstance(text, str) and text.strip().lower() == "all"):
        return None
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise UserError(f"--keep-models takes a whole number >= 0 or 'all', not {text!r}") from None
    if value < 0:
        raise UserError(f"--keep-models takes a whole number >= 0 or 'all', not {value}")
    return value


def models_prefix(campaign: str) -> str:
    """The key prefix of a campaign's kept heads (``campaigns/<id>/models/``)."""
    return campaign_key(campaign, MODELS_DIR) + "/"


def head_key(campaign: str, experiment_id: str) -> str:
    """The key of one experiment's kept head."""
    return f"{models_prefix(campaign)}{experiment_id}{SUFFIX}"


def head_keys(backend: Backend, campaign: str) -> list[str]:
    """The keys of a campaign's kept heads, sorted."""
    prefix = models_prefix(campaign)
    return [k for k in backend.list(prefix) if k.endswith(SUFFIX) and "/" not in k[len(prefix):]]


@dataclass(frozen=True)
class KeptHead:
    """One kept head and what its metadata says; ``key`` in the home's ``backend``."""

    key: str
    experiment_id: str
    cell_id: int
    seed: int
    meta: dict[str, Any]
    backend: Backend = field(repr=False, compare=False)

    @property
    def location(self) -> str:
        """Where it is, for people: a local path or an s3:// URL."""
        return self.backend.url(self.key)

    def state(self) -> "dict[str, torch.Tensor]":
        from safetensors.torch import load

        with self.backend.open_copy(self.key) as f:
            return load(f.read())


def save_head(backend: Backend, campaign: str, experiment_id: str, state: Mapping[str, torch.Tensor],
              meta: Mapping[str, Any]) -> str:
    """Write one head's state dict with its metadata (JSON values) in one put; returns its key."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}  # own storage: no shared views
    header = {"format": FORMAT, **{k: json.dumps(v, default=str) for k, v in meta.items()}}
    key = head_key(campaign, experiment_id)
    backend.put(key, save(tensors, metadata=header))
    return key


def read_meta(f: BinaryIO, where: str = "the file") -> dict[str, Any]:
    """The metadata of a kept head opened as ``f`` (values decoded from JSON), from the safetensors
    header alone (8 bytes little-endian length, then JSON). Raises ValueError if it is not a head."""
    raw = f.read(8)
    size = int.from_bytes(raw, "little") if len(raw) == 8 else -1
    if not 0 < size <= MAX_HEADER:
        raise UserError(f"{where} is not a safetensors file")
    header = json.loads(f.read(size))
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{where} is not a crashsearch head file")
    return {k: json.loads(v) for k, v in meta.items() if k != "format"}


def _read_head(backend: Backend, key: str) -> KeptHead | None:
    """The head at ``key``; None when it is gone (collected meanwhile) or is no head."""
    try:
        with backend.open_copy(key) as f:
            meta = read_meta(f, backend.url(key))
        return KeptHead(key, str(meta["experiment_id"]), int(meta["cell_id"]), int(meta["seed"]), meta, backend)
    except OSError as exc:
        if exc.errno == errno.EHOSTUNREACH:  # the object store is out of reach: not a damaged head
            raise
        return None
    except (ValueError, KeyError, TypeError, RecursionError):
        return None


def kept_heads(home: Home, campaign: str, backend: Backend | None = None) -> list[KeptHead]:
    """Every readable kept head of a campaign (an unreadable object is skipped: it is not a head)."""
    backend = backend or backend_for(home.location)
    heads = (_read_head(backend, key) for key in head_keys(backend, campaign))
    return [h for h in heads if h is not None]


def disk_use(home: Home, campaign: str) -> tuple[int, int]:
    """(kept heads, bytes) of a campaign."""
    backend = backend_for(home.location)
    count = size = 0
    for key in head_keys(backend, campaign):
        try:
            size += backend.size(key)  # from the listing on an object store: no head is read
            count += 1
        except FileNotFoundError:  # collected since the listing
            continue
    return count, size


def top_cells(rows: Any, keep: int | None) -> set[int]:
    """The cell ids of the top ``keep`` cells (None: every ranked cell) of experiment rows."""
    if keep == 0 or rows is None or len(rows) == 0:
        return set()
    board = leaderboard(rows, k=keep)
    return {int(c) for c in board["cell_id"]}


HISTORY_COLUMNS = ["experiment_id", "cell_id", "status", "val_ap"]


class Keeper:
    """Keeps one campaign's leaders' heads across batches (``keep_batch``, thread-safe).

    The campaign's ranking columns are read from the store once and then grown with each batch's
    rows: in one process (the campaign's own, which holds its lock) every batch passes through
    here, so no batch pays a query. A distributed worker makes one Keeper per batch (one query).
    """

    def __init__(self, store: Any, campaign: str, keep: int | None):
        self.store, self.campaign, self.keep = store, campaign, keep
        self._history: Any = None
        self._lock = threading.Lock()

    def keep_batch(self, rows: list[dict], results: Iterable[Any], meta: Mapping[str, Any]) -> None:
        """Save the heads of a recorded batch whose cells are in the top ``keep``, then collect the
        campaign's heads. ``rows`` and ``results`` are run_batch's, in the same order; ``meta`` goes into every
        file's metadata (dataset, weights, ...)."""
        if self.keep == 0:
            return
        import pandas as pd

        with self._lock:
            if self._history is None:  # the rows are in the store already: the query holds them
                self._history = self.store.query(
                    "SELECT experiment_id, cell_id, status, val_ap FROM experiments WHERE campaign = ?", [self.campaign])
            else:
                new = pd.DataFrame([{k: r.get(k) for k in HISTORY_COLUMNS} for r in rows], columns=HISTORY_COLUMNS)
                new = new[~new["experiment_id"].isin(self._history["experiment_id"])]
                self._history = pd.concat([self._history, new], ignore_index=True) if len(self._history) else new
            _save_and_collect(self.store.backend, self.campaign, self._history, rows, results, meta, self.keep)


def keep_batch(store: Any, campaign: str, rows: list[dict], results: Iterable[Any], meta: Mapping[str, Any],
               keep: int | None) -> None:
    """``Keeper.keep_batch`` for one batch (reads the campaign's ranking from the store)."""
    Keeper(store, campaign, keep).keep_batch(rows, results, meta)


def _save_and_collect(backend: Backend, campaign: str, history: Any, rows: list[dict], results: Iterable[Any],
                      meta: Mapping[str, Any], keep: int | None) -> None:
    top = top_cells(history, keep)
    for row, result in zip(rows, results):
        state = getattr(result, "state", None)
        if state is None or int(row["cell_id"]) not in top or row["status"] not in ("ok", "healed"):
            continue
        save_head(backend, campaign, row["experiment_id"], state, {
            **meta, "experiment_id": row["experiment_id"], "campaign": campaign, "cell_id": int(row["cell_id"]),
            "cell": result.cell.to_dict(), "seed": int(row["seed"]), "code_version": row["code_version"],
            "val_ap": row.get("val_ap"), "test_ap": row.get("test_ap")
        })
    collect(backend, campaign, history, keep)


def collect(backend: Backend, campaign: str, history: Any, keep: int | None) -> list[str]:
    """Delete the kept heads whose experiment ``history`` holds and whose cell left the top ``keep``.

    Returns the deleted keys. A head of an experiment ``history`` does not hold is left alone. The
    experiment id is the key's name, so a collection costs one listing, no read of a head."""
    top = top_cells(history, keep)
    cells = dict(zip(history["experiment_id"], history["cell_id"])) if len(history) else {}
    prefix = models_prefix(campaign)
    removed = []
    for key in head_keys(backend, campaign):
        cell = cells.get(key[len(prefix):-len(SUFFIX)])
        if cell is not None and int(cell) not in top:
            backend.delete(key)
            removed.append(key)
    return removed
