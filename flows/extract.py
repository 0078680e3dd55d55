"""The ``extract`` flow: one dataset, one backbone, into the Parquet feature cache.

``crashsearch extract --dataset DIR --backbone NAME`` runs it (flows/commands/extract.py). The flow builds the backbone,
derives the extraction spec (history = the default space's longest window plus its longest
horizon), and runs the extraction as a Prefect task that retries transient cache I/O errors. A
second run with the same manifest, backbone, weights, spec and extractor code finds the complete
partition and does nothing ("cache hit: ..."); an interrupted run resumes.
"""
from __future__ import annotations

from prefect import flow


@flow(name="extract")
def extract_flow(dataset: str, backbone: str, home: str | None = None, weights: str = "auto", device: str = "auto",
                 workers: int = 2, batch_size: int | None = None, progress: bool = True) -> dict:
    """Extract ``backbone`` features for the dataset at ``dataset``; returns the summary dict of
    ``tasks.extract.extract_dataset`` (cache_hit, videos_ok, videos_failed, clips, clips_per_s, key, path...)."""
    from crashsearch.tasks.extract import extract_dataset, extract_videos_task

    return extract_dataset(dataset, backbone, home=home, weights=weights, device=device, workers=workers,
                           batch_size=batch_size, progress=progress, runner=extract_videos_task)

