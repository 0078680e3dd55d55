"""Distributed mode: the campaign's batches run as flow runs of the ``train-batch`` deployment on a work pool.

``DistributedExecutor`` has the shape of the campaign's LocalExecutor: ``run(batches)`` yields
``(batch, rows)`` as batches finish. Instead of training, it dispatches each batch with
``run_deployment(..., timeout=0)`` to the deployment (flows/train_batch.py), keeps up to
``max_in_flight`` runs going, polls their states, and reads the rows the workers appended to
the shared store. The store, not a flow-run result, is the source of truth: a batch is done
when every one of its experiment ids is recorded.

Lost work. A batch whose flow run crashed, failed or was cancelled, or that has not finished
``timeout_s`` seconds after a worker picked it up (a killed node leaves its run "Running"
forever), is re-dispatched with only the jobs whose experiment id is not in the store yet;
the stale run is asked to cancel. The worker checks the store again right before appending,
so a late original and its re-dispatch write a row once, except when both pass that check
within the same instant; the store's ``experiments`` view shows one row per experiment id
anyway (see lab/store.py and docs/deploying.md). After ``max_attempts`` dispatches the
remaining jobs are recorded as failed rows (error class ``DispatchFailed``) so the campaign
goes on.

While batches are in flight, ``campaigns/<id>/inflight.json`` in the home lists them (one atomic
put through the home's backend, so on the bucket of an s3:// home; removed when the last ``run``
returns). The pipeline calls ``run`` from several trainer threads at once, one batch each: the
file lists the batches of every call.
``crashsearch status`` reads it.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterator
from uuid import UUID

import pandas as pd

from crashsearch.lab.campaign_space import campaign_space
from crashsearch.lab.errors import UserError
from crashsearch.lab.lock import reraise_interrupt
from crashsearch.lab.logfiles import campaign_key
from crashsearch.lab.settings import Home, resolve_home
from crashsearch.lab.space import Space
from crashsearch.lab.store import Store
from crashsearch.flows.status import INFLIGHT_FILE
from crashsearch.flows.train_batch import RecordOnceStore, recorded_ids
from crashsearch.tasks.errors import TrainingCancelled, stopping
from crashsearch.tasks.record import Job, make_row, one_line

FINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
STARTED_STATES = ("PENDING", "RUNNING", "CANCELLING")  # a worker has the run


class DispatchFailed(Exception):
    """A batch's jobs could not be trained by any worker within the allowed dispatches."""

    error_class = "DispatchFailed"


@dataclass
class _Dispatch:
    """One flow run of a batch (the original dispatch or a re-dispatch of its unrecorded jobs)."""

    batch: list[Job]  # the batch as the campaign gave it: rows are yielded for all of it
    jobs: list[Job]  # the jobs this run was asked to train
    run_id: UUID
    run_name: str
    attempt: int
    dispatched_at: float  # time.monotonic()
    started_at: float | None = None  # first poll that saw a worker holding the run
    state: str = "SCHEDULED"
    message: str = ""  # the state's message (why it failed or crashed)
    worker: str | None = None
    warned: bool = False
    history: list[str] = field(default_factory=list)  # "<run name>: <state> (<message>)" of earlier attempts


class DistributedExecutor:
    """Runs campaign batches as flow runs of a ``train-batch`` deployment; reads results from the store.

    ``deployment_name`` is "flow/deployment", e.g. "train-batch/gpu". ``home`` must be the
    shared path every worker sees under the same name. ``space_path`` is passed to the workers
    (None: the packaged default space); ``device`` is resolved on each worker ("auto": its GPU
    if it has one). ``code_version`` None lets each worker record its own.
    """

    def __init__(self, deployment_name: str, home: str | os.PathLike | Home, campaign: str, space: Space,
                 dataset_name: str, space_path: str | None = None, device: str = "auto",
                 code_version: str | None = None, max_in_flight: int = 4, timeout_s: float = 1800.0,
                 poll_s: float = 2.0, max_attempts: int = 3, log: Callable[[str], None] | None = None):
        assert max_in_flight >= 1 and max_attempts >= 1 and timeout_s > 0, "max_in_flight, max_attempts, timeout_s must be positive"
        self.deployment_name = deployment_name
        self.home = home if isinstance(home, Home) else resolve_home(home)
        self.campaign, self.space, self.dataset_name = campaign, space, dataset_name
        self.space_path, self.device, self.code_version = space_path, device, code_version
        self.max_in_flight, self.timeout_s, self.poll_s, self.max_attempts = max_in_flight, timeout_s, poll_s, max_attempts
        self.log = log or (lambda m: print(m, file=sys.stderr))
        self.store = Store(self.home)
        self._published: dict[int, list[_Dispatch]] = {}  # each running ``run`` call's dispatches
        self._lock = threading.Lock()  # run() is called from several trainer threads: counters and the file
        self._warned_publish = False
        self._written: list[dict] | None = None  # the runs inflight.json holds now (None: no file)
        self.dispatches = 0  # flow runs created, re-dispatches included
        self.redispatches = 0
        self.workers: dict[str, int] = {}  # Prefect worker name -> batches it finished

    # ---- the executor protocol --------------------------------------------------------------
    def run(self, batches: list[list[Job]]) -> Iterator[tuple[list[Job], list[dict]]]:
        """Dispatch ``batches``, keep up to max_in_flight running, yield (batch, rows) as each is recorded."""
        from prefect.client.orchestration import get_client

        queue: deque[tuple[list[Job], list[Job], int, list[str]]] = deque((b, b, 1, []) for b in batches if b)
        inflight: dict[UUID, _Dispatch] = {}
        finished = False
        with get_client(sync_client=True) as client:
            try:
                while queue or inflight:
                    while queue and len(inflight) < self.max_in_flight:
                        batch, jobs, attempt, history = queue.popleft()
                        d = self._dispatch(batch, jobs, attempt)
                        d.history = history
                        inflight[d.run_id] = d
                    self._publish(id(inflight), inflight)
                    time.sleep(self.poll_s)
                    if stopping():  # Ctrl-C or SIGTERM to the campaign: its runs are cancelled (finally), not awaited
                        raise TrainingCancelled("the campaign is stopping")
                    self._poll_states(client, inflight)
                    ids = [j.experiment_id for d in inflight.values() for j in d.batch]
                    done = recorded_ids(self.store, self.campaign, ids)
                    for run_id, d in list(inflight.items()):
                        if all(j.experiment_id in done for j in d.batch):
                            del inflight[run_id]
                            with self._lock:
                                self.workers[d.worker or "?"] = self.workers.get(d.worker or "?", 0) + 1
                            yield d.batch, self._rows(d.batch)
                            continue
                        lost = self._lost(d)
                        if lost is None:
                            continue
                        del inflight[run_id]
                        if d.state not in FINAL_STATES:
                            self._cancel(client, d, lost)
                        remaining = [j for j in d.batch if j.experiment_id not in done]
                        history = d.history + [f"{d.run_name}: {lost}"]
                        if d.attempt >= self.max_attempts:
                            self.log(f"batch of {len(remaining)} jobs given up after {d.attempt} dispatches: {'; '.join(history)}")
                            self._record_failed(remaining, history)
                            yield d.batch, self._rows(d.batch)
                        else:
                            self.log(f"re-dispatching {len(remaining)} of {len(d.batch)} jobs: {d.run_name} {lost}")
                            with self._lock:
                                self.redispatches += 1
                            queue.appendleft((d.batch, remaining, d.attempt + 1, history))
                finished = True
                if self.dispatches:
                    by_worker = ", ".join(f"{w} {n}" for w, n in sorted(self.workers.items()))
                    self.log(f"{self.deployment_name}: {self.dispatches} flow runs so far, {self.redispatches} "
                             f"re-dispatched; batches per worker: {by_worker}")
            finally:
                if not finished and inflight:  # the campaign stopped: its batches should not train on
                    for d in inflight.values():
                        self._cancel(client, d, "the campaign stopped")
                self._publish(id(inflight), None)

    # ---- dispatch and polling -----------------------------------------------------------------
    def _dispatch(self, batch: list[Job], jobs: list[Job], attempt: int) -> _Dispatch:
        from prefect.deployments import run_deployment

        params = {"home": self.home.location, "campaign": self.campaign, "dataset": self.dataset_name,
                  "jobs": [j.to_dict() for j in jobs], "space_path": self.space_path, "device": self.device,
                  "code_version": self.code_version}
        backbone = jobs[0].cell["backbone"]
        flow_run = run_deployment(self.deployment_name, parameters=params, timeout=0,
                                  tags=["crashsearch", f"campaign:{self.campaign}"],
                                  flow_run_name=f"{self.campaign}-{backbone}-{len(jobs)}jobs-try{attempt}")
        with self._lock:
            self.dispatches += 1
        return _Dispatch(batch, jobs, flow_run.id, flow_run.name, attempt, time.monotonic())

    def _poll_states(self, client, inflight: dict[UUID, _Dispatch]) -> None:
        """Refresh the state of every in-flight run with one API call (a failed call is retried next poll)."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        if not inflight:
            return
        try:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(inflight))),
                                         limit=len(inflight))
        except Exception as exc:  # the server may be restarting; the store still says what finished
            reraise_interrupt(exc)
            self.log(f"could not read flow-run states: {one_line(str(exc), 160)}")
            return
        now = time.monotonic()
        for run in runs:
            d = inflight.get(run.id)
            if d is None or run.state is None:
                continue
            d.state = run.state.type.value
            d.message = one_line(run.state.message or "", 200)
            d.worker = (run.labels or {}).get("prefect.worker.name") or d.worker
            if d.started_at is None and d.state in STARTED_STATES + FINAL_STATES:
                d.started_at = now

    def _lost(self, d: _Dispatch) -> str | None:
        """Why a not-yet-recorded run counts as lost (None: keep waiting)."""
        now = time.monotonic()
        if d.state in FINAL_STATES:
            return f"ended {d.state.lower()}" + (f" ({d.message})" if d.message else "") + " without recording every job"
        if d.started_at is not None and now - d.started_at > self.timeout_s:
            return f"still {d.state.lower()} {now - d.started_at:.0f}s after a worker took it (timeout {self.timeout_s:.0f}s)"
        if d.started_at is None and not d.warned and now - d.dispatched_at > self.timeout_s:
            d.warned = True  # re-dispatching would not help: nobody is taking runs
            self.log(f"no worker has taken flow run {d.run_name} for {now - d.dispatched_at:.0f}s: "
                     f"is a worker polling the work pool of {self.deployment_name}?")
        return None

    def _cancel(self, client, d: _Dispatch, why: str) -> None:
        """Ask a stale run to stop (a live worker kills it; a dead one leaves it Cancelling)."""
        from prefect.states import Cancelling

        try:
            client.set_flow_run_state(d.run_id, Cancelling(message=f"crashsearch: {why}"), force=True)
        except Exception as exc:
            self.log(f"could not cancel flow run {d.run_name}: {one_line(str(exc), 160)}")

    # ---- results --------------------------------------------------------------------------------
    def _rows(self, batch: list[Job]) -> list[dict]:
        """The recorded rows of ``batch`` in its order (nulls as None, like freshly made rows)."""
        ids = [j.experiment_id for j in batch]
        df = self.store.query("SELECT * FROM experiments WHERE campaign = ? AND list_contains(?, experiment_id)",
                              [self.campaign, ids])
        df = df.astype(object).where(pd.notna(df), None)
        by_id = {r["experiment_id"]: r for r in df.to_dict("records")}
        return [by_id[i] for i in ids if i in by_id]

    def _record_failed(self, jobs: list[Job], history: list[str]) -> None:
        from crashsearch.lab.versions import code_version

        error = DispatchFailed(f"no worker recorded the job in {len(history)} dispatches: {'; '.join(history)}")
        rows = [make_row(job, campaign=self.campaign, dataset=self.dataset_name, space=self.space,
                         code_version=self.code_version or code_version(), status="failed", error=error,
                         heal_note="not retried: dispatch failed") for job in jobs]
        RecordOnceStore(self.home).append(self.campaign, rows, self.space)  # a late worker may have won meanwhile

    # ---- inflight.json --------------------------------------------------------------------------
    def _inflight_key(self) -> str:
        return campaign_key(self.campaign, INFLIGHT_FILE)  # in the home's backend: status on any machine reads it

    def _publish(self, call: int, inflight: dict[UUID, _Dispatch] | None) -> None:
        """Record one ``run`` call's in-flight dispatches (None: the call ended) and rewrite the
        file with every call's; remove it when no call is left. The file only informs ``status``: a
        failed write (a full disk) is said once and never stops the batches."""
        with self._lock:
            if inflight is None:
                self._published.pop(call, None)
            else:
                self._published[call] = list(inflight.values())
            try:
                self._write_published()
            except OSError as exc:
                if not self._warned_publish:
                    self._warned_publish = True
                    self.log(f"cannot write {self.store.backend.url(self._inflight_key())}: {one_line(exc)} (status will not list batches "
                             f"in flight; training goes on)")

    def _write_published(self) -> None:
        key = self._inflight_key()
        if not self._published:
            self.store.backend.delete(key)
            self._written = None
            return
        dispatches = [d for ds in self._published.values() for d in ds]
        runs = [{"flow_run_id": str(d.run_id), "flow_run_name": d.run_name, "state": d.state, "worker": d.worker,
                 "attempt": d.attempt, "experiment_ids": [j.experiment_id for j in d.jobs]} for d in dispatches]
        if runs == self._written:  # each poll asks; an object store would take a PUT every poll_s for nothing
            return
        doc = {"campaign": self.campaign, "deployment": self.deployment_name, "host": socket.gethostname(),
               "pid": os.getpid(), "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "runs": runs}
        self.store.backend.put(key, json.dumps(doc, indent=1).encode())
        self._written = runs


def check_deployment(deployment_name: str) -> None:
    """Raise ValueError (one line) unless a Prefect server is configured and has the deployment.

    A campaign run against Prefect's temporary server would dispatch to nobody, so distributed
    mode needs PREFECT_API_URL (environment or profile)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        raise UserError(f"--distributed {deployment_name} needs a Prefect server with the workers: set PREFECT_API_URL "
                         f"(e.g. prefect config set PREFECT_API_URL=http://<server>:4200/api)")
    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(deployment_name)
    except Exception as exc:
        reason = one_line(str(exc), 120) if str(exc) not in ("", "None") else type(exc).__name__
        raise UserError(f"deployment {deployment_name!r} not found on {api} ({reason}); "
                         f"deploy it from the repository root: prefect --no-prompt deploy --name {deployment_name}") from None


def executor_for_campaign(deployment_name: str, home: str | None, dataset: str, campaign: str | None,
                          space_path: str | None, device: str = "auto", max_in_flight: int = 4,
                          timeout_s: float = 1800.0, log: Callable[[str], None] | None = None) -> DistributedExecutor:
    """The DistributedExecutor for a campaign as ``run_campaign`` will name it.

    Raises ValueError (one line) when no Prefect server is configured or it lacks the deployment
    (see ``check_deployment``).
    """
    from crashsearch.tasks.campaign.engine import default_campaign_id
    from crashsearch.lab.datasets import load_dataset

    check_deployment(deployment_name)
    ds = load_dataset(dataset)
    campaign = campaign or default_campaign_id(ds.name)
    space, path = campaign_space(resolve_home(home), campaign, space_path)  # no --space: the campaign's own
    return DistributedExecutor(deployment_name, home, campaign, space, ds.name,
                               space_path=str(path.resolve()) if path else None,
                               device=device, max_in_flight=max_in_flight, timeout_s=timeout_s, log=log)
