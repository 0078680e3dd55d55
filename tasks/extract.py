"""Feature extraction: decode the frames the windows need, embed clips in batches, fill the cache.

For each video the plan is a grid of S clip ends (``ExtractSpec.t_rel`` relative to the reference
time: the event for positives, the last frame for negatives) and, per clip end, F frame times
spaced 1/decode_fps. Clips overlap, so a video needs only the union of their frames (about
(history + clip span) * decode_fps frames, not S*F); decord decodes exactly those, at the
backbone's frame size, seeking to the keyframe before the first one.

Decoding runs in a thread pool (decord's C calls release the GIL), a few videos ahead of the
backbone, so on a GPU the model is fed while the next videos decode. Frames go to the device once
per video and the overlapping clips are gathered there. Finished videos are flushed to the cache
every few videos, so an interrupted run resumes where it stopped.

A video that cannot be opened, is empty or too short becomes a failure row (video, path, reason)
and the run goes on; it is not retried by later runs of the same partition (remove the partition
folder to retry). Errors writing the cache or inside the backbone raise; the Prefect task
(``extract_videos_task``) retries the transient ones (I/O, timeouts), never a corrupt video.

Frame timing: the frame shown at time t is index floor(t * fps); clip frames before the first
frame of the video repeat the first frame (only the earliest real clips of a video reach that
far back).

Short clips (DAD, CCD: 5 s with the event near the end) are kept. A clip that would END before
the video start is not decoded or embedded: its step is a zero embedding, and the row's
``real_s`` (lab.cache) says how much of the sequence is real, so training and evaluation mask
the padding. Zeros plus a mask rather than a repeated first frame: a frozen frame is a made-up
observation (a scene where nothing moves, i.e. no closing speed) that a temporal head would read
as evidence, and whose share differs between positives and negatives whenever their lengths do;
masked padding carries no signal at all. A video is skipped only when it cannot give any
prediction: its reference time is less than ``min_history_s`` (the shortest horizon) after its
start, or a positive's event lies after its last frame.
"""
from __future__ import annotations

import math
import os
import re
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from crashsearch.lab.cache import (ExtractSpec, Partition, extractor_version, history_from_space,
                                   min_horizon_from_space, partition_key, partition_problem, set_aside, utc_now,
                                   videos_fingerprint)
from crashsearch.lab.classes import ClassCheckError, check_counts, format_counts, partition_counts
from crashsearch.lab.console import progress_bar
from crashsearch.lab.datasets import Dataset, VideoItem, load_dataset
from crashsearch.lab.settings import Home, resolve_home
from crashsearch.models.backbones import Backbone, create_backbone

FLUSH_EVERY = 16  # videos per part file: bounds the work an interruption loses
STEP_HZ = 4.0  # embeddings per second of video (the default spec)
DECODE_FPS = 8.0  # frames decoded per second
_HANDOVER: dict = {}  # (backbone, weights, device) -> the Backbone find_cached built for the extraction that follows


class VideoFailure(Exception):
    """A video that cannot be used; ``str()`` is the one-line reason recorded in failures.json."""


# ---- planning and decoding ----------------------------------------------------------------


@dataclass
class DecodedVideo:
    item: VideoItem
    ref_time: float  # seconds from the video start that t_rel is relative to
    frames: np.ndarray  # (U, H, W, 3) uint8, the distinct frames the clips use
    clip_index: np.ndarray  # (S_real, F) int64 indices into frames: the real clips only (the last S_real steps)
    span_frames: int = 0  # source frames from the first to the last one used: what the decoder walks through
    decode_s: float = 0.0


def plan_frames(n_frames: int, fps: float, ref_time: float, spec: ExtractSpec) -> np.ndarray:
    """(S, F) frame indices of every clip: clip s ends at ref_time + t_rel[s]."""
    ends = ref_time + spec.t_rel().astype(np.float64)  # (S,)
    times = ends[:, None] + spec.frame_offsets()[None, :]  # (S, F)
    index = np.floor(times * fps + 1e-6).astype(np.int64)
    return np.clip(index, 0, n_frames - 1)


def reference_time(item: VideoItem, n_frames: int, fps: float, min_history_s: float) -> float:
    """The event time (positives) or the last frame's time (negatives); raises VideoFailure when the
    video cannot give any prediction (less than ``min_history_s`` before the reference time)."""
    last = (n_frames - 1) / fps
    if item.event_time is not None:
        if item.event_time > last + 1.0 / fps:
            raise VideoFailure(f"shorter than needed: event at {item.event_time:.2f} s but the video ends at {last:.2f} s")
        ref = min(float(item.event_time), last)
    else:
        ref = last
    if ref + 1e-6 < min_history_s:
        raise VideoFailure(f"too short to predict: {ref:.2f} s before the reference time, the earliest prediction "
                           f"needs {min_history_s:.2f} s")
    return ref


def _decord_reason(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    match = re.search(r"(?:ERROR opening: [^,]*, |Error: )(.+)$", text)
    return (match.group(1) if match else text)[:200]


def decode_video(item: VideoItem, spec: ExtractSpec) -> DecodedVideo:
    """Decode the frames one video's clips need, at the spec's frame size. Raises VideoFailure."""
    import decord

    start = time.perf_counter()
    path = Path(item.path)
    if not path.is_file():
        raise VideoFailure("file not found")
    if path.stat().st_size == 0:
        raise VideoFailure("empty file (0 bytes)")
    height, width = spec.frame_size
    try:
        reader = decord.VideoReader(str(path), width=width, height=height, num_threads=1)
    except Exception as exc:  # decord raises DECORDError (a RuntimeError) for anything unreadable
        raise VideoFailure(f"cannot open video: {_decord_reason(exc)}") from None
    n_frames, fps = len(reader), float(reader.get_avg_fps())
    if n_frames == 0:
        raise VideoFailure("empty video (0 frames)")
    if not math.isfinite(fps) or fps <= 0:
        raise VideoFailure(f"no usable frame rate ({fps})")
    ref = reference_time(item, n_frames, fps, spec.min_history_s)
    index = plan_frames(n_frames, fps, ref, spec)[-spec.real_steps(ref):]  # (S_real, F): clips ending in the video
    unique, inverse = np.unique(index, return_inverse=True)
    try:
        frames = reader.get_batch(unique.tolist()).asnumpy()  # (U, H, W, 3)
    except Exception as exc:
        raise VideoFailure(f"decode failed between frames {unique[0]} and {unique[-1]}: {_decord_reason(exc)}") from None
    if frames.shape != (len(unique), height, width, 3):
        raise VideoFailure(f"decoder returned frames of shape {frames.shape}, expected {(len(unique), height, width, 3)}")
    return DecodedVideo(item, ref, frames, inverse.reshape(index.shape), int(unique[-1] - unique[0] + 1),
                        time.perf_counter() - start)


def _quiet_decord() -> None:
    import decord

    decord.logging.set_level(decord.logging.QUIET)  # its errors reach us as exceptions; ffmpeg's log is noise


# ---- the pipeline -------------------------------------------------------------------------


@dataclass
class ExtractStats:
    videos_ok: int = 0
    videos_failed: int = 0
    clips: int = 0
    frames_decoded: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0  # time spent inside backbone.embed
    fill_seconds: float = 0.0  # from the start to the first embed call: the decoders filling the pipeline
    failures: list[dict] = field(default_factory=list)

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {"videos_ok": self.videos_ok, "videos_failed": self.videos_failed, "clips": self.clips,
                "frames_decoded": self.frames_decoded, "seconds": round(self.seconds, 3),
                "embed_seconds": round(self.embed_seconds, 3), "fill_seconds": round(self.fill_seconds, 3),
                "clips_per_s": round(self.clips_per_s, 2)}


def _failure(item: VideoItem, reason: str) -> dict:
    return {"video_id": item.id, "path": str(item.path), "reason": reason}


def extract_videos(videos: Sequence[VideoItem], backbone: Backbone, spec: ExtractSpec, partition: Partition,
                   workers: int = 2, batch_size: int = 32, progress: bool = True,
                   flush_every: int = FLUSH_EVERY) -> ExtractStats:
    """Extract every video not yet in ``partition`` (part files or failures) and write the results.

    Returns the stats of this call (videos written or failed now, clips embedded, seconds).
    Raises only on errors writing the cache or inside the backbone; video problems become
    failures.
    """
    _quiet_decord()
    threads = torch.get_num_threads()
    if backbone.device.type == "cpu":
        # leave a core per decoder thread: oversubscribed OpenMP threads spin and the model slows
        # down several-fold (measured: 10x on a busy 2-core machine)
        torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 1) - workers)))
    try:
        return _extract(videos, backbone, spec, partition, workers, batch_size, progress, flush_every)
    finally:
        torch.set_num_threads(threads)


def _extract(videos, backbone, spec, partition, workers, batch_size, progress, flush_every) -> ExtractStats:
    skip = partition.done_ids() | {f["video_id"] for f in partition.failures()}
    todo = [v for v in videos if v.id not in skip]
    run = _Extraction(backbone, spec, partition, batch_size, flush_every)
    # a bar on a terminal, plain lines in a pipe or a file (lab/console.py)
    bar = progress_bar(len(todo), desc=f"extract {backbone.name}", unit="video", disable=not progress or not todo)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode") as pool:
        queue = deque(todo)
        running: dict[Future, VideoItem] = {}
        ahead = 2 * max(1, workers) + 1  # videos decoding or decoded but not yet embedded
        try:
            while queue or running:
                while queue and len(running) < ahead:
                    item = queue.popleft()
                    running[pool.submit(decode_video, item, spec)] = item
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    run.decoded(running.pop(fut), fut)
                    bar.update(1)
                if run.waiting >= batch_size:
                    run.embed_ready()
                    elapsed = time.perf_counter() - run.start
                    bar.set_postfix_str(f"{run.stats.clips / elapsed:.1f} clips/s, {run.stats.videos_failed} failed")
            run.embed_ready(final=True)
            run.flush(force=True)
        except BaseException:
            # keep what is finished, even when interrupted: the next run resumes after it
            for fut in running:
                fut.cancel()
            run.flush(force=True)
            raise
        finally:
            bar.close()
    run.stats.seconds = time.perf_counter() - run.start
    run.stats.failures = partition.failures()
    return run.stats


class _Extraction:
    """The state of one ``_extract`` call: decoded videos go in (``decoded``), the backbone embeds full
    batches of clips taken across video boundaries (``embed_ready``), finished videos become rows
    written every ``flush_every`` (``flush``)."""

    def __init__(self, backbone: Backbone, spec: ExtractSpec, partition: Partition, batch_size: int,
                 flush_every: int):
        self.backbone, self.spec, self.partition = backbone, spec, partition
        self.batch_size, self.flush_every = batch_size, flush_every
        self.stats, self.rows, self.failures = ExtractStats(), [], []
        self.t_rel = spec.t_rel()
        self.start = time.perf_counter()
        # decoded videos whose clips are (partly) waiting for the backbone: [video, clips, outputs, next clip]
        self.pending: deque[list] = deque()
        self.waiting = 0  # clips decoded but not embedded yet

    def decoded(self, item: VideoItem, fut: Future) -> None:
        """Queue a decoded video's clips for the backbone, or record why it failed."""
        try:
            video = fut.result()
        except VideoFailure as exc:
            self._failed(item, str(exc))
            return
        except Exception as exc:  # an unexpected decoder error is still this video's problem
            self._failed(item, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
            return
        self.stats.frames_decoded += len(video.frames)
        frames = torch.from_numpy(video.frames)
        if self.backbone.device.type == "cuda":
            frames = frames.pin_memory().to(self.backbone.device, non_blocking=True)
        index = torch.from_numpy(video.clip_index).to(frames.device)
        clips = frames[index]  # (S, F, H, W, 3), gathered where the model runs
        self.pending.append([video, clips, [], 0])
        self.waiting += len(clips)

    def _failed(self, item: VideoItem, reason: str) -> None:
        self.failures.append(_failure(item, reason))
        self.stats.videos_failed += 1

    def embed_ready(self, final: bool = False) -> None:
        """Embed full batches (and, when final, the rest), taking clips across video boundaries."""
        while self.waiting >= self.batch_size or (final and self.waiting):
            chunks, owners, need = [], [], self.batch_size
            for entry in self.pending:
                take = min(need, len(entry[1]) - entry[3])
                if take:
                    chunks.append(entry[1][entry[3]:entry[3] + take])
                    owners.append((entry, take))
                    entry[3] += take
                    need -= take
                if need == 0:
                    break
            t0 = time.perf_counter()
            if not self.stats.fill_seconds:
                self.stats.fill_seconds = t0 - self.start
            out = self.backbone.embed(torch.cat(chunks) if len(chunks) > 1 else chunks[0])  # (B, D) on the CPU
            self.stats.embed_seconds += time.perf_counter() - t0
            offset = 0
            for entry, take in owners:
                entry[2].append(out[offset:offset + take])
                offset += take
            self.waiting -= offset
            while self.pending and self.pending[0][3] == len(self.pending[0][1]):
                self._finish(*self.pending.popleft()[:3])
        self.flush()

    def _finish(self, video: DecodedVideo, clips: torch.Tensor, outputs: list[torch.Tensor]) -> None:
        item, t_rel = video.item, self.t_rel
        emb = torch.cat(outputs).numpy()  # (S_real, D)
        if len(emb) < len(t_rel):  # a short clip: zero embeddings for the steps before the video start
            emb = np.concatenate([np.zeros((len(t_rel) - len(emb), emb.shape[1]), emb.dtype), emb])
        self.rows.append({"video_id": item.id, "split": item.split, "label": int(item.label),
                          "event_time": item.event_time, "ref_time": video.ref_time, "t_rel": t_rel, "emb": emb,
                          "real_s": min(video.ref_time, self.spec.history_s)})
        self.stats.videos_ok += 1
        self.stats.clips += len(clips)

    def flush(self, force: bool = False) -> None:
        """Write the finished rows (once ``flush_every`` have gathered, or now when forced) and the failures."""
        if self.rows and (force or len(self.rows) >= self.flush_every):
            self.partition.write_rows(self.rows)
            self.rows.clear()
        if self.failures:
            self.partition.add_failures(self.failures)
            self.failures.clear()


def _transient(task, task_run, state) -> bool:
    """Retry only errors that may pass: I/O on the cache, timeouts. Not bugs, not bad videos."""
    try:
        state.result()
    except (OSError, TimeoutError):
        return True
    except Exception:
        return False
    return False


@task(name="extract-videos", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient, cache_policy=NO_CACHE)
def extract_videos_task(videos: Sequence[VideoItem], backbone: Backbone, spec: ExtractSpec, partition: Partition,
                        workers: int = 2, batch_size: int = 32, progress: bool = True) -> ExtractStats:
    """Prefect task around ``extract_videos``; a retry resumes from the part files already written."""
    return extract_videos(videos, backbone, spec, partition, workers=workers, batch_size=batch_size, progress=progress)


# ---- one dataset and backbone -------------------------------------------------------------


def default_batch_size(backbone: Backbone) -> int:
    return 64 if backbone.device.type == "cuda" else 32


def extract_dataset(dataset: str | Path | Dataset, backbone: str | Backbone, home: Home | str | Path | None = None,
                    weights: str = "auto", device: str = "auto", workers: int = 2, batch_size: int | None = None,
                    history_s: float | None = None, step_hz: float = STEP_HZ, decode_fps: float = DECODE_FPS,
                    progress: bool = True, runner: Callable[..., ExtractStats] = extract_videos,
                    log: Callable[[str], None] = print) -> dict:
    """Fill (or find) the cache partition for a dataset and backbone; returns a summary dict.

    ``history_s`` defaults to what the default space needs (its longest window plus its longest
    horizon). ``runner`` does the work (``extract_videos`` or its Prefect task). The summary has
    dataset, backbone, weights, key, path, cache_hit, videos, videos_ok, videos_failed, clips,
    seconds, clips_per_s, dim, n_steps. Raises DatasetError for an unreadable manifest, KeyError
    for an unknown backbone and WeightsUnavailable for explicit weights that cannot be loaded.
    """
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    for problem in ds.problems:
        log(f"dataset problem (skipped): {problem}")
    if isinstance(backbone, str):  # the one find_cached built for this miss, or a new one
        bb = _HANDOVER.pop((backbone, weights, device), None) or create_backbone(backbone, weights=weights, device=device)
    else:
        bb = backbone
    spec, code, fingerprint, key, part, summary = _partition(ds, bb, home, history_s, step_hz, decode_fps)

    meta = part.meta
    problem = partition_problem(part, ds) if meta.get("complete") else ""
    if problem:  # not a hit: repair it by extracting what is missing
        moved = set_aside(part)
        log(f"cache damaged: {part.url}: {problem}; extracting the missing videos"
            + (f" ({len(moved)} unreadable part file(s) moved to {moved[0].rsplit('/', 1)[0]})" if moved else ""))
        meta = {**meta, "complete": False}
    if meta.get("complete"):
        return _hit(summary, part, meta, log)

    resumed = len(part.done_ids()) + len(part.failures())
    started = meta.get("started_at", utc_now())
    base = {"dataset": ds.name, "dataset_root": str(ds.root), "backbone": bb.name, "weights": bb.weights_id,
            "spec": spec.to_dict(), "dim": bb.dim, "n_steps": spec.n_steps, "code_version": code,
            "manifest_hash": ds.manifest_hash(), "files_fingerprint": fingerprint, "videos_total": len(ds.videos), "started_at": started}
    part.write_meta({**base, "complete": False})
    if resumed:
        log(f"resuming {ds.name}/{bb.name}/{key}: {resumed} of {len(ds.videos)} videos already done")
    bsz = batch_size or default_batch_size(bb)
    stats = runner(ds.videos, bb, spec, part, workers=workers, batch_size=bsz, progress=progress)

    done, failed = part.done_ids(), part.failures()
    all_ids = {v.id for v in ds.videos}
    complete = all_ids <= done | {f["video_id"] for f in failed}
    part.write_meta({**base, "complete": complete, "finished_at": utc_now() if complete else None,
                     "videos_ok": len(done & all_ids), "videos_failed": len(failed), "last_run": stats.to_dict()})
    summary.update(cache_hit=False, videos_ok=len(done & all_ids), videos_failed=len(failed), clips=stats.clips,
                   seconds=round(stats.seconds, 3), clips_per_s=round(stats.clips_per_s, 2),
                   embed_seconds=round(stats.embed_seconds, 3), frames_decoded=stats.frames_decoded,
                   complete=complete)
    for f in failed:  # only unreadable videos and ones too short for any prediction: each named
        log(f"skipped: {f['video_id']} ({f['path']}): {f['reason']}")
    if short := _short_clips(part, spec):
        log(f"{short} short clip(s) kept with less than {spec.history_s:g} s of history; their missing history is masked")
    weights_note = " (RANDOM weights)" if bb.weights_id == "random" else ""
    log(f"extracted {bb.name}{weights_note} features for {ds.name}: {summary['videos_ok']} videos ok, "
        f"{len(failed)} failed; {stats.clips} clips in {stats.seconds:.1f} s ({stats.clips_per_s:.1f} clips/s) "
        f"-> {part.url}")
    return _with_class_check(summary, part, log)


def find_cached(dataset: str | Path, backbone: str, home: Home | str | Path | None = None, weights: str = "auto",
                device: str = "auto", log: Callable[[str], None] = print) -> dict | None:
    """The summary of ``extract_dataset`` when its partition is complete and sound (a cache hit,
    logged as such), else None; writes nothing. The CLI asks first: a hit needs no Prefect server."""
    ds = load_dataset(dataset)
    bb = create_backbone(backbone, weights=weights, device=device)
    *_, part, summary = _partition(ds, bb, home, None, STEP_HZ, DECODE_FPS)
    meta = part.meta
    if not meta.get("complete") or partition_problem(part, ds):
        _HANDOVER.clear()  # the extraction that follows takes this backbone: built (and its weights note said) once
        _HANDOVER[(backbone, weights, device)] = bb
        return None
    for problem in ds.problems:
        log(f"dataset problem (skipped): {problem}")
    return _hit(summary, part, meta, log)


def _partition(ds: Dataset, bb: Backbone, home, history_s: float | None, step_hz: float, decode_fps: float) -> tuple:
    """(spec, extractor code, files fingerprint, key, partition, summary) of a dataset and backbone."""
    from crashsearch.lab.space import Space

    default_space = Space.load()
    if history_s is None:
        history_s = history_from_space(default_space)
    spec = ExtractSpec.for_backbone(bb, history_s=history_s, step_hz=step_hz, decode_fps=decode_fps,
                                    min_history_s=min_horizon_from_space(default_space))
    code = extractor_version()
    fingerprint = videos_fingerprint(ds.videos)
    key = partition_key(ds.manifest_hash(), bb.name, bb.weights_id, spec, code, fingerprint)
    part = Partition.open(home if isinstance(home, Home) else resolve_home(home), ds.name, bb.name, key)
    summary = {"dataset": ds.name, "backbone": bb.name, "weights": bb.weights_id, "key": key, "path": part.url,
               "videos": len(ds.videos), "dim": bb.dim, "n_steps": spec.n_steps}
    return spec, code, fingerprint, key, part, summary


def _hit(summary: dict, part: Partition, meta: dict, log: Callable[[str], None]) -> dict:
    summary.update(cache_hit=True, videos_ok=meta["videos_ok"], videos_failed=meta["videos_failed"], clips=0,
                   seconds=0.0, clips_per_s=0.0)
    log(f"cache hit: {summary['dataset']}/{summary['backbone']}/{summary['key']} already holds {meta['videos_ok']} "
        f"videos ({meta['videos_failed']} failed); nothing to extract")
    return _with_class_check(summary, part, log)


def _short_clips(part: Partition, spec: ExtractSpec) -> int:
    """How many videos of the partition have less real history than the spec's full history."""
    real = [r for k in part.part_files() for r in part.read_part(k, columns=["real_s"]).column("real_s").to_pylist()]
    return sum(1 for r in real if r is not None and r + 1e-6 < spec.history_s)


def _with_class_check(summary: dict, part: Partition, log: Callable[[str], None]) -> dict:
    """The summary with ``classes`` ({split: (pos, neg)}) and ``class_problem`` (the one line, or None)."""
    counts = partition_counts(part)
    log(f"classes: {format_counts(counts)}")
    try:
        check_counts(counts, f"{summary['dataset']}/{summary['backbone']}")
        problem = None
    except ClassCheckError as exc:
        problem = str(exc)
    return {**summary, "classes": counts, "class_problem": problem}
