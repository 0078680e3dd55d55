"""Kept weights: the head weights of a campaign's leading cells, garbage-collected as the leaders change.

After a batch is recorded, each trained model's head is saved if its cell is among the campaign's
top ``keep`` cells by mean validation AP (lab.leaderboard's ranking, over every recorded run, so the
same cells as the leaderboard), one file per experiment::

    <home>/campaigns/<id>/models/<experiment id>.safetensors

A file holds one model's own state dict (its slice of a vectorised group, never the stack) and, as
safetensors metadata, the cell, seed, code version and metrics of its run. It is written atomically
(lab._io.atomic_write), after the batch's rows are in the store. Then the folder is collected: a file
whose experiment the store knows and whose cell is no longer in the top ``keep`` is removed. A file
of an experiment the store does not show yet (another worker's batch, read before it landed) is left
for a later collection, so concurrent workers on a shared home never delete each other's leaders.

``keep`` is CampaignConfig.keep_models: a number (10 by default), None for all, 0 for none.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from crashsearch.lab.errors import UserError
from crashsearch.lab._io import atomic_write
from crashsearch.lab.leaderboard import leaderboard
from crashsearch.lab.settings import Home

if TYPE_CHECKING:
    import torch

MODELS_DIR = "models"
SUFFIX = ".safetensors"
FORMAT = "crashsearch-head/1"


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


def models_dir(home: Home, campaign: str) -> Path:
    return home.campaigns / campaign / MODELS_DIR


@dataclass(frozen=True)
class KeptHead:
    """One kept head file and what its metadata says."""

    path: Path
    experiment_id: str
    cell_id: int
    seed: int
    meta: dict[str, Any]

    def state(self) -> "dict[str, torch.Tensor]":
        from safetensors.torch import load_file

        return load_file(str(self.path))


def save_head(folder: Path, experiment_id: str, state: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """Write one head's state dict with its metadata (JSON values) atomically; returns the path."""
    from safetensors.torch import save

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}  # own storage: no shared views
    header = {"format": FORMAT, **{k: json.dumps(v, default=str) for k, v in meta.items()}}
    data = save(tensors, metadata=header)
    path = folder / f"{experiment_id}{SUFFIX}"
    atomic_write(path, lambda f: f.write(data))
    return path


def read_meta(path: Path) -> dict[str, Any]:
    """The metadata of a kept head file (values decoded from JSON). Raises OSError/ValueError if unreadable."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    if raw.get("format") != FORMAT:
        raise UserError(f"{path} is not a crashsearch head file")
    return {k: json.loads(v) for k, v in raw.items() if k != "format"}


def kept_heads(home: Home, campaign: str) -> list[KeptHead]:
    """Every readable kept head of a campaign (an unreadable file is skipped: it is not a head)."""
    out = []
    folder = models_dir(home, campaign)
    for path in sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []:
        try:
            meta = read_meta(path)
        except (OSError, ValueError, RuntimeError):
            continue
        out.append(KeptHead(path, str(meta["experiment_id"]), int(meta["cell_id"]), int(meta["seed"]), meta))
    return out


def disk_use(home: Home, campaign: str) -> tuple[int, int]:
    """(kept head files, bytes) of a campaign."""
    folder = models_dir(home, campaign)
    files = list(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []
    return len(files), sum(f.stat().st_size for f in files if f.exists())


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
        folder. ``rows`` and ``results`` are run_batch's, in the same order; ``meta`` goes into every
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
            _save_and_collect(self.store.home, self.campaign, self._history, rows, results, meta, self.keep)


def keep_batch(store: Any, campaign: str, rows: list[dict], results: Iterable[Any], meta: Mapping[str, Any],
               keep: int | None) -> None:
    """``Keeper.keep_batch`` for one batch (reads the campaign's ranking from the store)."""
    Keeper(store, campaign, keep).keep_batch(rows, results, meta)


def _save_and_collect(home: Home, campaign: str, history: Any, rows: list[dict], results: Iterable[Any],
                      meta: Mapping[str, Any], keep: int | None) -> None:
    top = top_cells(history, keep)
    folder = models_dir(home, campaign)
    for row, result in zip(rows, results):
        state = getattr(result, "state", None)
        if state is None or int(row["cell_id"]) not in top or row["status"] not in ("ok", "healed"):
            continue
        save_head(folder, row["experiment_id"], state, {
            **meta, "experiment_id": row["experiment_id"], "campaign": campaign, "cell_id": int(row["cell_id"]),
            "cell": result.cell.to_dict(), "seed": int(row["seed"]), "code_version": row["code_version"],
            "val_ap": row.get("val_ap"), "test_ap": row.get("test_ap")
        })
    collect(home, campaign, history, keep)


def collect(home: Home, campaign: str, history: Any, keep: int | None) -> list[Path]:
    """Remove the kept heads whose experiment ``history`` holds and whose cell left the top ``keep``.

    Returns the removed paths. A file of an experiment ``history`` does not hold is left alone."""
    top = top_cells(history, keep)
    known = set(history["experiment_id"]) if len(history) else set()
    removed = []
    for head in kept_heads(home, campaign):
        if head.experiment_id in known and head.cell_id not in top:
            head.path.unlink(missing_ok=True)
            removed.append(head.path)
    return removed
