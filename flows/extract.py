"""The ``extract`` flow: one dataset, one backbone, into the Parquet feature cache.

``crashsearch extract --dataset DIR --backbone NAME`` runs it. The flow builds the backbone,
derives the extraction spec (history = the default space's longest window plus its longest
horizon), and runs the extraction as a Prefect task that retries transient cache I/O errors. A
second run with the same manifest, backbone, weights, spec and extractor code finds the complete
partition and does nothing ("cache hit: ..."); an interrupted run resumes.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from prefect import flow

from crashsearch.lab.settings import Home


@flow(name="extract")
def extract_flow(dataset: str, backbone: str, home: str | None = None, weights: str = "auto", device: str = "auto",
                 workers: int = 2, batch_size: int | None = None, progress: bool = True) -> dict:
    """Extract ``backbone`` features for the dataset at ``dataset``; returns the summary dict of
    ``tasks.extract.extract_dataset`` (cache_hit, videos_ok, videos_failed, clips, clips_per_s, key, path...)."""
    from crashsearch.tasks.extract import extract_dataset, extract_videos_task

    return extract_dataset(dataset, backbone, home=home, weights=weights, device=device, workers=workers,
                           batch_size=batch_size, progress=progress, runner=extract_videos_task)


def main(args) -> int:
    """CLI handler for ``crashsearch extract``: 0 on success (some videos may have failed), 1 when
    nothing could be extracted or a split lacks a class, 2 for a bad dataset, backbone or weights argument."""
    from crashsearch.lab.datasets import DatasetError
    from crashsearch.models.backbones import WeightsUnavailable

    from crashsearch.lab.datasets import load_dataset
    from crashsearch.models.backbones import check_weights, list_backbones
    from crashsearch.flows.runtime import quiet_prefect
    from crashsearch.tasks.extract import find_cached

    home = args.home_dir.root if isinstance(args.home_dir, Home) else args.home_dir
    # argument errors fail here, before a Prefect server starts for nothing
    if args.backbone not in list_backbones():
        print(f"extract: unknown backbone {args.backbone!r}; registered: {', '.join(list_backbones())}", file=sys.stderr)
        return 2
    try:
        load_dataset(args.dataset)
        check_weights(args.backbone, args.weights)
    except (DatasetError, WeightsUnavailable) as exc:
        print(f"extract: {exc}", file=sys.stderr)
        return 2
    dataset = str(Path(args.dataset).expanduser())
    try:
        # a cache hit is answered here, in a second; a flow run would first start a Prefect server (~10 s)
        summary = find_cached(dataset, args.backbone, home=home, weights=args.weights, device=args.device)
        if summary is None:
            with quiet_prefect():
                summary = extract_flow(dataset=dataset, backbone=args.backbone, home=str(home) if home else None,
                                       weights=args.weights, device=args.device, workers=args.workers)
    except (DatasetError, WeightsUnavailable) as exc:
        print(f"extract: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:  # unknown backbone: the message lists the registered names
        print(f"extract: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    if summary["videos_ok"] == 0:
        print(f"extract: no video of {summary['dataset']} could be extracted; see {os.path.join(summary['path'], 'failures.json')}",
              file=sys.stderr)
        return 1
    if summary.get("class_problem"):  # the features are cached, but no campaign can use them
        print(f"extract: {summary['class_problem']}", file=sys.stderr)
        return 1
    return 0
