"""Jobs (an experiment about to run) and the rows the store records for them."""
from __future__ import annotations

import hashlib
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from crashsearch.lab.space import Cell, Space


def new_experiment_id() -> str:
    """A globally unique experiment id (random: unique across processes, restarts and workers)."""
    return uuid.uuid4().hex[:16]


def job_seed(campaign_seed: int, cell_id: int, replicate: int) -> int:
    """The training seed of a cell's replicate: stable, so a re-run reproduces a result."""
    digest = hashlib.sha256(f"{campaign_seed}:{cell_id}:{replicate}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass
class Job:
    """One experiment to run: a cell, a seed, and where it came from."""

    cell: Cell
    seed: int
    replicate: int = 0
    proposer: str = ""
    model: str = ""
    rationale: str = ""
    round: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    healed_from: str | None = None
    heal_action: str | None = None
    heal_depth: int = 0
    experiment_id: str = field(default_factory=new_experiment_id)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe form (the cell as its id), e.g. for a flow-run parameter."""
        out = {k: v for k, v in self.__dict__.items() if k != "cell"}
        return {"cell_id": self.cell.id, **out}

    @classmethod
    def from_dict(cls, data: dict[str, Any], space: Space) -> "Job":
        data = dict(data)
        return cls(cell=space.cell(int(data.pop("cell_id"))), **data)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def one_line(text: str, limit: int = 300) -> str:
    """Collapse whitespace and truncate: error messages and rationales are one line in the log."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def make_row(job: Job, *, campaign: str, dataset: str, space: Space, code_version: str, status: str,
             metrics: dict[str, float] | None = None, error: BaseException | None = None,
             started_at: datetime | None = None, finished_at: datetime | None = None,
             train_seconds: float | None = None, eval_seconds: float | None = None,
             params: int | None = None, peak_mem_mb: float | None = None, device: str = "",
             heal_note: str | None = None) -> dict[str, Any]:
    """The history row for a finished job (see lab/schema.py for the columns)."""
    metrics = metrics or {}
    row: dict[str, Any] = {
        "experiment_id": job.experiment_id,
        "campaign": campaign,
        "dataset": dataset,
        "space": space.name,
        "cell_id": job.cell.id,
        "arch_group": job.cell.arch_group,
        "proposer": job.proposer,
        "model": job.model,
        "rationale": one_line(job.rationale, 500),
        "round": job.round,
        "status": status,
        "seed": job.seed,
        "replicate": job.replicate,
        "healed_from": job.healed_from,
        "heal_action": heal_note or job.heal_action,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "params": params,
        "peak_mem_mb": peak_mem_mb,
        "device": device,
        "worker": worker_name(),
        "code_version": code_version,
        "error_class": getattr(error, "error_class", type(error).__name__) if error is not None else None,
        "error_message": one_line(str(error)) if error is not None else None,
        "started_at": started_at or utcnow(),
        "finished_at": finished_at or utcnow(),
        "tokens_in": job.tokens_in,
        "tokens_out": job.tokens_out,
        "cost_usd": job.cost_usd,
    }
    for key in ("val_ap", "val_ap_h05", "val_ap_h10", "val_ap_h15", "val_auc", "test_ap", "test_auc"):
        value = metrics.get(key)  # NaN: undefined there (e.g. a horizon no short clip reaches): null
        row[key] = None if value is None or value != value else value
    row.update(job.cell.to_dict())
    return row
