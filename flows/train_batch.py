"""The ``train-batch`` flow: one batch of a campaign, trained on one worker's device, recorded in the shared store.

In distributed mode (flows/distributed.py) the campaign dispatches each batch as a flow run of
this flow's deployment on a GPU work pool. A run:

1. rebuilds the jobs from their dicts (``Job.to_dict``) against the campaign's space;
2. drops the jobs whose experiment id is already in the store (a re-dispatched batch whose
   original finished late, or a retried flow run);
3. loads the dataset's cached features once per worker process (a module-level cache keyed by
   home, dataset, backbone, device and cache partition);
4. trains the batch with ``tasks.execute.run_batch`` (the same unit of work as local mode; the
   training runs as a task tagged ``gpu`` so a Prefect concurrency limit caps batches per GPU)
   and appends the rows to the store under ``home``, which must be the same shared path on
   every node. Right before appending it checks the store again and writes only the rows whose
   experiment id is still absent, so a late original and its re-dispatch never both write a row
   except within the instant between that check and the rename (see docs/deploying.md);
5. returns a small summary: the ids recorded, the ids skipped, and who ran it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task

from crashsearch.lab.campaign_space import campaign_space
from crashsearch.lab.settings import Home, resolve_home
from crashsearch.lab.space import Space
from crashsearch.lab.store import Store
from crashsearch.tasks.execute import BatchContext, run_batch
from crashsearch.tasks.record import Job, one_line, worker_name

GPU_TAG = "gpu"  # the tag a `prefect concurrency-limit create gpu N` limit binds to

# Features stay loaded for the life of the process: a worker that runs several batches in one
# process (a served flow, a test, the benchmark) reads the Parquet cache once per partition.
_FEATURES: dict[tuple, Any] = {}


def recorded_ids(store: Store, campaign: str, ids: list[str]) -> set[str]:
    """The subset of ``ids`` that the store already holds for ``campaign`` (one DuckDB query)."""
    if not ids or not store.log_files(campaign):
        return set()
    found = store.query("SELECT DISTINCT experiment_id FROM experiments WHERE campaign = ? "
                        "AND list_contains(?, experiment_id)", [campaign, list(ids)])
    return set(found["experiment_id"])


class RecordOnceStore(Store):
    """A Store whose ``append`` is ``Store.append_new``: only rows whose experiment id is not recorded yet.

    ``skipped`` lists the ids it left out. Everything else (reads, compaction) is the plain Store's.
    """

    def __init__(self, home: Home):
        super().__init__(home)
        self.skipped: list[str] = []

    def append(self, campaign: str, rows: list[dict], space: Space) -> Path | None:
        path, skipped = self.append_new(campaign, rows, space)
        self.skipped += skipped
        return path


def cached_features(home: Home, dataset: str, backbone: str, device: str):
    """The FeatureSet of ``dataset``/``backbone`` on ``device``, loaded once per process and partition.

    Raises lab.cache.FeaturesNotFound when the shared cache has no complete partition."""
    from crashsearch.lab.cache import latest_partition, load_features

    partition = latest_partition(home, dataset, backbone)  # a newer extraction is a new key
    key = (home.location, dataset, backbone, device, partition.url)
    if key not in _FEATURES:
        _FEATURES[key] = load_features(home, dataset, backbone, device=device)
    return _FEATURES[key]


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _gpu_train_task():
    from crashsearch.tasks.train import train_batch

    # the same tag as the campaign's in-process training task: one limit caps both
    return task(train_batch, name="train-batch", tags=[GPU_TAG], cache_policy=None, persist_result=False)


def train_batch_fn(home: str, campaign: str, dataset: str, jobs: list[dict], space_path: str | None = None,
                   device: str = "auto", code_version: str | None = None, train_fn=None) -> dict:
    """Train and record one batch; the body of ``train_batch_flow`` (callable without Prefect).

    ``jobs`` are ``Job.to_dict()`` dicts of one backbone; a job dict that does not fit the space
    is reported in one line and left out (the rest run). ``code_version`` defaults to this
    worker's own (the code that actually trains). Returns {"recorded": ids written, "skipped":
    ids already in the store, "rejected": one-line reasons, "worker": host:pid, "prefect_worker":
    the Prefect worker's name or None, "device"}. Raises ValueError for jobs of several
    backbones, FeaturesNotFound when the shared cache lacks the features.
    """
    h = resolve_home(home)
    space, _ = campaign_space(h, campaign, space_path)  # no --space: the campaign's kept copy, as the orchestrator
    parsed, rejected = [], []
    for index, data in enumerate(jobs):
        try:
            parsed.append(Job.from_dict(data, space))
        except (KeyError, TypeError, ValueError) as exc:
            label = data.get("experiment_id", "?") if isinstance(data, dict) else repr(data)
            rejected.append(f"job {index} ({label}): {one_line(str(exc), 160)}")
    for line in rejected:
        print(f"train-batch: skipped {line}", file=sys.stderr)
    store = RecordOnceStore(h)
    done = recorded_ids(store, campaign, [j.experiment_id for j in parsed])
    todo = [j for j in parsed if j.experiment_id not in done]
    summary: dict[str, Any] = {"recorded": [], "skipped": sorted(done), "rejected": rejected, "worker": worker_name(),
                               "prefect_worker": os.environ.get("PREFECT__WORKER_NAME"), "device": None}
    if not todo:
        return summary
    backbones = sorted({j.cell["backbone"] for j in todo})
    if len(backbones) != 1:
        raise ValueError(f"a batch must be of one backbone, got {backbones}")
    dev = _resolve_device(device)
    if code_version is None:
        from crashsearch.lab.versions import code_version as current_version

        code_version = current_version()
    features = cached_features(h, dataset, backbones[0], dev)
    info = next((c for c in store.campaigns() if c["id"] == campaign), {})
    ctx = BatchContext(campaign, dataset, space, code_version, dev,
                       keep_models=info.get("keep_models", 10))  # the campaign's --keep-models, from campaign.json
    rows = run_batch(todo, features, ctx, store, train_fn)
    late = set(store.skipped)
    summary["recorded"] = [r["experiment_id"] for r in rows if r["experiment_id"] not in late]
    summary["skipped"] = sorted(done | late)
    summary["device"] = dev
    return summary


@flow(name="train-batch", log_prints=True)
def train_batch_flow(home: str, campaign: str, dataset: str, jobs: list[dict], space_path: str | None = None,
                     device: str = "auto", code_version: str | None = None) -> dict:
    """Prefect flow: train one campaign batch on this worker and record it in the shared store.

    Returns the summary of ``train_batch_fn``; training runs as a ``gpu``-tagged task."""
    train_task = _gpu_train_task()
    summary = train_batch_fn(home, campaign, dataset, jobs, space_path, device, code_version,
                             train_fn=lambda *a: train_task(*a))
    print(f"train-batch {campaign}: recorded {len(summary['recorded'])}, skipped {len(summary['skipped'])} "
          f"already recorded, on {summary['prefect_worker'] or summary['worker']} ({summary['device']})")
    return summary
