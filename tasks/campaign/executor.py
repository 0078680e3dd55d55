"""Where a campaign's batches train: the ``Executor`` protocol and the in-process ``LocalExecutor``.

An executor's ``run(batches)`` yields ``(batch, rows)`` as batches finish, in any order, with
the rows already in the store. ``LocalExecutor`` trains in this process; the distributed one
(flows/distributed.py) dispatches each batch as a flow run on a work pool. The pipeline calls
``run([batch])`` from several trainer threads at once, so an executor must allow that.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Iterator, Protocol

from crashsearch.lab.space import Space
from crashsearch.lab.store import Store
from crashsearch.tasks.execute import BatchContext, run_batch
from crashsearch.tasks.keep import Keeper
from crashsearch.tasks.record import Job


class Executor(Protocol):
    """Trains batches of jobs and records their rows; yields each batch with its rows as it finishes."""

    def run(self, batches: list[list[Job]]) -> Iterator[tuple[list[Job], list[dict]]]:
        ...


class SerialStore(Store):
    """A Store whose appends from several threads of this process take turns (one writer at a time).

    ``unreported`` holds the rows appended whose batch was not handed back yet: a Ctrl-C that lands
    after a batch's append (while its leaders' heads are kept) leaves them there, so the run's
    ending still counts them (``LocalExecutor.unreported``)."""

    _lock = threading.Lock()

    def __init__(self, home):
        super().__init__(home)
        self.unreported: dict[str, dict] = {}

    def append(self, campaign: str, rows: list[dict], space: Space) -> Path:
        with self._lock:
            path = super().append(campaign, rows, space)
            self.unreported.update((r["experiment_id"], r) for r in rows)
            return path

    def reported(self, rows: list[dict]) -> None:
        """The batch of ``rows`` was handed back: its taker counts them."""
        with self._lock:
            for r in rows:
                self.unreported.pop(r["experiment_id"], None)

    def unreported_rows(self) -> list[dict]:
        with self._lock:
            return list(self.unreported.values())


class LocalExecutor:
    """Trains batches in this process (``tasks.execute.run_batch``); rows are in the store as each returns.

    ``train_fn`` replaces ``tasks.train.train_batch`` (the flow passes a Prefect task around it).
    Safe to call from several threads: training overlaps, appends take turns.
    """

    def __init__(self, features: dict, ctx: BatchContext, store: Store, train_fn: Callable | None = None):
        self.features, self.ctx, self.train_fn = features, ctx, train_fn
        self.store = store if isinstance(store, SerialStore) else SerialStore(store.home)
        self.keeper = Keeper(self.store, ctx.campaign, ctx.keep_models)  # the leaders' heads, one ranking read

    def run(self, batches: list[list[Job]]) -> Iterator[tuple[list[Job], list[dict]]]:
        for batch in batches:
            rows = run_batch(batch, self.features[batch[0].cell["backbone"]], self.ctx, self.store, self.train_fn,
                             keeper=self.keeper)
            yield batch, rows
            self.store.reported(rows)

    def unreported(self) -> list[dict]:
        """Rows in the store whose batch was never handed back (an interrupt after its append)."""
        return self.store.unreported_rows()
