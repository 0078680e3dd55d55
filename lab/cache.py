"""The Parquet feature cache: where extraction writes embedding sequences and training reads them.

Layout, one partition per (dataset, backbone, extraction spec), under the home through its storage
backend (lab/storage.py): files in a folder home, objects under an s3:// home, the same keys::

    cache/<dataset>/<backbone>/<key>/
        part-00000-<rand>.parquet ...   one row per extracted video (schema below)
        meta.json                       what the partition holds and whether it is complete
        failures.json                   [{"video_id", "path", "reason"}] for skipped videos

``key`` is 12 hex digits of a sha256 over the dataset's manifest hash and the sizes of its video
files, the backbone name, its weights id ("random", "none" or the pretrained id/path), the ExtractSpec and the extractor's code
version (a hash of the extraction sources, EXTRACTOR_FILES). Any change to one of these is a new
partition, so features from different weights or code never mix.

Row schema of the part files:
    video_id   string
    split      string          "train" | "val" | "test" (the manifest's split at extraction time)
    label      int8            1 = collision
    event_time float64, null   seconds from the video start (null for negatives)
    ref_time   float64         the reference time t_rel is relative to: the event for positives,
                               the last frame for negatives (seconds from the video start)
    t_rel      list<float32>   (S,) ascending, t_rel[-1] == 0, spacing 1/step_hz
    emb        list<float32>   S*D values, row-major (S, D): emb[s*D:(s+1)*D] is the embedding of
                               the clip ENDING at ref_time + t_rel[s]
    real_s     float64, null   seconds of the sequence that are real: min(ref_time, history_s). A
                               step whose clip would end before the video start (t_rel[s] <
                               -real_s) is padding: a zero embedding, masked out in training and
                               evaluation (lab.features). Null (part files written before short
                               clips were kept) means every step is real.

Contract: every file is written with one ``Backend.put`` (a folder home: lab/_io.atomic_write, a
hidden temp name, fsynced, then renamed into place; an object store: one PUT), so a reader or a
crash never sees half a file. A part file is never modified after its write, so it is read through
``Backend.local_path``: a folder home reads the file itself, an object-store home reads its copy in
the node's size-capped local read cache, fetched once per node (lab/storage_s3.py). A damaged part
file is copied to ``quarantine/`` and then removed, never deleted (``set_aside``). A partition is
complete when meta.json says so, which happens after every video of the manifest is either in a
part file or in failures.json; an incomplete partition resumes by skipping the videos already written.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from crashsearch.lab.errors import UserError
from crashsearch.lab.features import FeatureSet
from crashsearch.lab.quarantine import QUARANTINE, set_aside as quarantine_object
from crashsearch.lab.settings import Home, resolve_home
from crashsearch.lab.storage import Backend, backend_for

REPO_ROOT = Path(__file__).resolve().parent.parent
# The code that decides what a cached embedding is: a change here is a new partition key.
EXTRACTOR_FILES = ("models/backbones.py", "lab/cache.py", "tasks/extract.py")

ROW_SCHEMA = pa.schema([
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("split", pa.string()),
    pa.field("label", pa.int8()),
    pa.field("event_time", pa.float64()),
    pa.field("ref_time", pa.float64()),
    pa.field("t_rel", pa.list_(pa.float32())),
    pa.field("emb", pa.list_(pa.float32())),
    pa.field("real_s", pa.float64()),
])


class FeaturesNotFound(UserError, FileNotFoundError):
    """No complete cache partition for a dataset and backbone; the message names both."""


# ---- the extraction spec ------------------------------------------------------------------


@dataclass(frozen=True)
class ExtractSpec:
    """What one partition's embedding sequences are: the time grid and the clips behind it."""

    step_hz: float = 4.0  # embedding steps per second (the stride between clip ends)
    history_s: float = 5.5  # seconds before the reference time covered: max window + max horizon
    clip_frames: int = 16  # frames per clip (from the backbone)
    frame_size: tuple[int, int] = (256, 256)  # (H, W) frames are decoded at (from the backbone)
    decode_fps: float = 8.0  # sampling rate of the frames inside a clip
    min_history_s: float = 0.5  # the earliest prediction (shortest horizon): a video with less is skipped

    def __post_init__(self) -> None:
        assert self.step_hz > 0 and self.decode_fps > 0, "step_hz and decode_fps must be positive"
        assert self.history_s >= 0 and self.clip_frames >= 1, "history_s >= 0 and clip_frames >= 1"
        assert 0 <= self.min_history_s <= self.history_s, "0 <= min_history_s <= history_s"
        object.__setattr__(self, "frame_size", (int(self.frame_size[0]), int(self.frame_size[1])))

    @classmethod
    def for_backbone(cls, backbone: Any, history_s: float = 5.5, step_hz: float = 4.0,
                     decode_fps: float = 8.0, min_history_s: float = 0.5) -> "ExtractSpec":
        """The spec for a backbone (anything with ``clip_frames`` and ``frame_size``)."""
        return cls(step_hz, history_s, backbone.clip_frames, tuple(backbone.frame_size), decode_fps,
                   min(min_history_s, history_s))

    @property
    def n_steps(self) -> int:
        """S: clip ends from -history_s to 0 inclusive."""
        return int(round(self.history_s * self.step_hz)) + 1

    def t_rel(self) -> np.ndarray:
        """(S,) float32 clip-end times relative to the reference, ascending, last == 0."""
        return (np.arange(-(self.n_steps - 1), 1, dtype=np.float64) / self.step_hz).astype(np.float32)

    def frame_offsets(self) -> np.ndarray:
        """(F,) seconds of a clip's frames relative to the clip end, ascending, last == 0."""
        return np.arange(-(self.clip_frames - 1), 1, dtype=np.float64) / self.decode_fps

    def to_dict(self) -> dict:
        d = asdict(self)
        d["frame_size"] = list(self.frame_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ExtractSpec":
        return cls(float(d["step_hz"]), float(d["history_s"]), int(d["clip_frames"]), tuple(d["frame_size"]),
                   float(d["decode_fps"]), float(d.get("min_history_s", 0.0)))

    def real_steps(self, real_s: float) -> int:
        """How many of the S steps (the last ones) are real when ``real_s`` seconds precede the reference."""
        return min(self.n_steps, int(math.floor(real_s * self.step_hz + 1e-6)) + 1)


def min_horizon_from_space(space: Any) -> float:
    """The space's shortest prediction horizon: the least history a video needs to be scored at all."""
    horizons = space.fixed.get("horizons_s", [0.0])
    return min(float(h) for h in (horizons if isinstance(horizons, (list, tuple)) else [horizons]))


def history_from_space(space: Any) -> float:
    """Seconds of history a space needs: its longest window plus its longest prediction horizon."""
    window = max(float(v) for v in space.axis("window_s").values)
    horizons = space.fixed.get("horizons_s", [0.0])
    horizon = max(float(h) for h in (horizons if isinstance(horizons, (list, tuple)) else [horizons]))
    return window + horizon


def extractor_version(root: Path | None = None) -> str:
    """12 hex of a sha256 over EXTRACTOR_FILES (a missing file hashes as its name)."""
    h = hashlib.sha256()
    for rel in EXTRACTOR_FILES:
        path = Path(root or REPO_ROOT) / rel
        h.update(rel.encode())
        h.update(path.read_bytes() if path.is_file() else b"<missing>")
    return h.hexdigest()[:12]


def videos_fingerprint(videos: Iterable[Any]) -> str:
    """16 hex over each video's id and file size: a re-rendered dataset with the same manifest
    (same ids, labels and times, other pixels) is new data. Sizes, not contents: hashing
    gigabytes of video on every run would cost more than the check is worth."""
    h = hashlib.sha256()
    for v in sorted(videos, key=lambda v: v.id):
        try:
            size = Path(v.path).stat().st_size
        except OSError:
            size = -1
        h.update(f"{v.id}:{size};".encode())
    return h.hexdigest()[:16]


def partition_key(manifest_hash: str, backbone: str, weights_id: str, spec: ExtractSpec,
                  code_version: str | None = None, fingerprint: str = "") -> str:
    """12 hex digits identifying a partition; see the module docstring."""
    payload = {"manifest": manifest_hash, "files": fingerprint, "backbone": backbone, "weights": weights_id,
               "spec": spec.to_dict(), "code": code_version or extractor_version()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


# ---- one partition ------------------------------------------------------------------------

CACHE = "cache"  # the feature cache's folder (key prefix) in a home
_PART = re.compile(r"part-[^/]*\.parquet")


def _resolve(home: Home | str | os.PathLike | None) -> Home:
    return home if isinstance(home, Home) else resolve_home(home)


def _backend(home: Home | str | os.PathLike | None) -> Backend:
    return backend_for(_resolve(home).location)


def cache_url(home: Home | str | os.PathLike | None, *names: str) -> str:
    """Where the feature cache (or ``names`` inside it, e.g. a dataset and backbone) lives, as messages
    name it: a local path for a folder home, an s3:// URL for an object-store home. Creates nothing."""
    return _backend(home).url("/".join((CACHE, *names)))


def utc_now() -> str:
    """The current UTC time as ISO 8601 with seconds, as meta.json records it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Partition:
    """One cache partition: the objects under ``prefix`` (``cache/<dataset>/<backbone>/<key>/``) of a
    home's backend. Writers add part files and failures; meta.json says when it is complete. Part files are
    named by their keys (``part_files``) and read with ``read_part``."""

    def __init__(self, backend: Backend, prefix: str):
        self.backend = backend
        self.prefix = prefix.strip("/") + "/"

    def __repr__(self) -> str:
        return f"Partition({self.url})"

    @classmethod
    def open(cls, home: Home | str | os.PathLike | None, dataset: str, backbone: str, key: str) -> "Partition":
        """The partition of a dataset, backbone and key in a home (nothing is written until a writer does)."""
        return cls(_backend(home), f"{CACHE}/{dataset}/{backbone}/{key}/")

    @property
    def key(self) -> str:
        return self.prefix.split("/")[-2]

    @property
    def dataset(self) -> str:
        return self.prefix.split("/")[-4]

    @property
    def backbone(self) -> str:
        return self.prefix.split("/")[-3]

    @property
    def url(self) -> str:
        """The partition's folder as messages name it (a local path, or an s3:// URL)."""
        return self.backend.url(self.prefix.rstrip("/"))

    @property
    def meta(self) -> dict:
        """meta.json's content ({} if absent or unreadable)."""
        return self._read_json("meta.json", {})

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    def mtime(self) -> float:
        """When meta.json was last written (0.0 when it is gone)."""
        try:
            return self.backend.mtime(self.prefix + "meta.json")
        except FileNotFoundError:
            return 0.0

    def write_meta(self, meta: dict) -> None:
        self.backend.put(self.prefix + "meta.json", json.dumps(meta, indent=2, sort_keys=True).encode())

    def part_files(self) -> list[str]:
        """The keys of the part files, sorted (read them with ``read_part``)."""
        return [k for k in self.backend.list(self.prefix) if _PART.fullmatch(k[len(self.prefix):])]

    def read_part(self, key: str, columns: list[str] | None = None, schema: pa.Schema | None = None) -> pa.Table:
        """One part file as a table: from local disk (an object store's copy is fetched once per node).
        Raises OSError or pyarrow.ArrowException when it cannot be read."""
        # by path, not a Python file object: Arrow's reader threads calling back into Python could
        # abort the interpreter at exit ("terminate called without an active exception")
        return pq.read_table(self.backend.local_path(key), columns=columns, schema=schema)

    def done_ids(self) -> set[str]:
        """Video ids already written to part files."""
        ids: set[str] = set()
        for key in self.part_files():
            ids.update(self.read_part(key, columns=["video_id"]).column("video_id").to_pylist())
        return ids

    def failures(self) -> list[dict]:
        """The recorded failures: [{"video_id", "path", "reason"}]."""
        return self._read_json("failures.json", [])

    def add_failures(self, failures: Iterable[dict]) -> None:
        """Append failures (a video already listed keeps its first reason)."""
        new = list(failures)
        if not new:
            return
        old = self.failures()
        seen = {f["video_id"] for f in old}
        merged = old + [f for f in new if f["video_id"] not in seen]
        self.backend.put(self.prefix + "failures.json", json.dumps(merged, indent=1).encode())

    def write_rows(self, rows: list[dict]) -> str | None:
        """Write rows (dicts with ROW_SCHEMA's columns, ``emb`` an (S, D) array) as a new part file;
        return its key."""
        if not rows:
            return None
        columns = {name: [] for name in ROW_SCHEMA.names}
        for row in rows:
            for name in ROW_SCHEMA.names:
                value = row.get(name) if name == "real_s" else row[name]  # no real_s: every step real
                if name in ("emb", "t_rel"):
                    value = np.asarray(value, dtype=np.float32).reshape(-1)
                columns[name].append(value)
        table = pa.table(columns, schema=ROW_SCHEMA)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        key = f"{self.prefix}part-{len(self.part_files()):05d}-{uuid.uuid4().hex[:6]}.parquet"
        self.backend.put(key, sink.getvalue().to_pybytes())  # one atomic put: whole or absent
        return key

    def read_table(self) -> pa.Table:
        """Every part file as one table (ROW_SCHEMA), sorted by video id."""
        keys = self.part_files()
        if not keys:
            return ROW_SCHEMA.empty_table()
        table = pa.concat_tables([self.read_part(k, schema=ROW_SCHEMA) for k in keys]).sort_by("video_id")
        # two writers racing on one partition could both write a video: keep one row per id
        ids = table.column("video_id").to_pylist()
        first = [i for i, vid in enumerate(ids) if i == 0 or vid != ids[i - 1]]
        return table if len(first) == len(ids) else table.take(first)

    def _read_json(self, name: str, default: Any) -> Any:
        try:
            return json.loads(self.backend.read(self.prefix + name))
        except (OSError, ValueError):
            return default


# ---- reading ------------------------------------------------------------------------------


def _partitions(backend: Backend, dataset: str | None = None, backbone: str | None = None) -> list[Partition]:
    """The partitions that have a meta.json, in key order (one listing of the cache, or of a dataset's)."""
    parts = []
    for key in backend.list(f"{CACHE}/{dataset}/" if dataset else f"{CACHE}/"):
        names = key.split("/")
        if len(names) == 5 and names[4] == "meta.json" and backbone in (None, names[2]):
            parts.append(Partition(backend, "/".join(names[:4])))
    return parts


def matches_dataset(meta: dict, dataset: Any) -> bool:
    """Whether a partition's meta.json was written for this dataset's manifest and video files
    (a partition written before meta.json recorded them cannot be checked and counts)."""
    if "manifest_hash" in meta and meta["manifest_hash"] != dataset.manifest_hash():
        return False
    return "files_fingerprint" not in meta or meta["files_fingerprint"] == videos_fingerprint(dataset.videos)


def partition_problem(part: "Partition", dataset: Any = None) -> str:
    """What is wrong with a complete partition's files, in a few words ("" when nothing is).

    Every part file must read, and the videos it holds plus its recorded failures must cover
    the dataset's videos (with ``dataset``) or the count meta.json promises."""
    ids: set[str] = set()
    for key in part.part_files():
        try:
            ids.update(part.read_part(key, columns=["video_id"]).column("video_id").to_pylist())
        except (OSError, pa.ArrowException) as exc:
            return f"part file {key.rsplit('/', 1)[-1]} is unreadable ({(str(exc).splitlines() or [type(exc).__name__])[0]})"
    failed = {f.get("video_id") for f in part.failures()}
    if dataset is not None:
        missing = {v.id for v in dataset.videos} - ids - failed
        if missing:
            return f"{len(missing)} of its {len(dataset.videos)} videos are missing (e.g. {sorted(missing)[0]})"
    promised = part.meta.get("videos_ok")
    if isinstance(promised, int) and len(ids) < promised:
        return f"it holds {len(ids)} of the {promised} videos meta.json promises"
    return ""


def set_aside(part: "Partition") -> list[str]:
    """Copy a partition's unreadable part files to ``quarantine/<their key>`` in the same home, then
    remove them from the partition (never deleted before the copy is written); return where they
    went (paths or URLs). The videos they held are then extracted again."""
    moved = []
    for key in part.part_files():
        try:
            pq.read_metadata(part.backend.local_path(key))
            continue
        except (OSError, pa.ArrowException):
            pass
        moved.append(quarantine_object(part.backend, key, f"{QUARANTINE}/{key}"))  # no rename: copy, then delete
    return moved


def list_cached(home: Home | str | os.PathLike | None, dataset_name: str | None = None) -> list[dict]:
    """One dict per partition: dataset, backbone, key, weights, videos, failures, complete (and path, finished_at)."""
    out = []
    for part in _partitions(_backend(home), dataset_name):
        meta = part.meta
        out.append({
            "dataset": meta.get("dataset", part.dataset),
            "backbone": meta.get("backbone", part.backbone),
            "key": part.key,
            "weights": meta.get("weights"),
            "videos": meta.get("videos_ok", len(part.done_ids())),
            "failures": meta.get("videos_failed", len(part.failures())),
            "complete": bool(meta.get("complete")),
            "finished_at": meta.get("finished_at"),
            "path": part.url,
        })
    return out


def weights_id(meta: dict) -> str:
    """The weights id a partition's meta.json records ("random" for caches written before it did)."""
    return str(meta.get("weights", "random"))


def latest_partition(home: Home | str | os.PathLike | None, dataset_name: str, backbone: str,
                     dataset: Any = None) -> Partition:
    """The most recently finished complete partition; raises FeaturesNotFound naming dataset and backbone.

    With ``dataset`` (a lab.datasets.Dataset) only a partition extracted from that dataset's
    manifest and video files counts (checked by content, not by folder name), and it must still
    hold every video it promises; otherwise FeaturesNotFound says which, in one line."""
    metas = {p: p.meta for p in _partitions(_backend(home), dataset_name, backbone)}  # each read once
    done = [p for p, meta in metas.items() if meta.get("complete")]

    def newest(parts: list[Partition]) -> Partition:
        return max(parts, key=lambda p: (metas[p].get("finished_at") or "", p.mtime()))

    if done and dataset is not None:
        same = [p for p in done if matches_dataset(metas[p], dataset)]
        if not same:
            raise FeaturesNotFound(
                f"the feature cache {cache_url(home, dataset_name, backbone)} was extracted from another dataset named "
                f"{dataset_name!r} (its manifest or video files differ from {dataset.root}); "
                f"run `crashsearch extract --dataset {dataset.root} --backbone {backbone}`")
        best = newest(same)
        problem = partition_problem(best, dataset)
        if problem:
            raise FeaturesNotFound(f"the feature cache {best.url} is damaged: {problem}; "
                                   f"`crashsearch extract --dataset {dataset.root} --backbone {backbone}` repairs it")
        return best
    if not done:
        found = sorted({c["backbone"] for c in list_cached(home, dataset_name) if c["complete"]})
        raise FeaturesNotFound(
            f"no complete feature cache for dataset {dataset_name!r} and backbone {backbone!r} under {cache_url(home)} "
            f"(complete for this dataset: {', '.join(found) or 'none'}); "
            f"run `crashsearch extract --dataset <dir> --backbone {backbone}`")
    return newest(done)


def load_features(home: Home | str | os.PathLike | None, dataset_name: str, backbone: str,
                  device: str | torch.device = "cpu", dataset: Any = None) -> FeatureSet:
    """The FeatureSet of the latest complete partition for a dataset and backbone, on ``device``.

    Rows are sorted by video id. ``dataset``: see latest_partition. Raises FeaturesNotFound if
    there is none, and ValueError if a part file's embeddings do not have the S*D values
    meta.json promises.
    """
    part = latest_partition(home, dataset_name, backbone, dataset)
    meta = part.meta
    spec = ExtractSpec.from_dict(meta["spec"])
    n_steps, dim = int(meta["n_steps"]), int(meta["dim"])
    table = part.read_table()
    n = table.num_rows
    flat = table.column("emb").combine_chunks()
    lengths = np.diff(flat.offsets.to_numpy()) if n else np.zeros(0, dtype=np.int64)
    if n and not np.all(lengths == n_steps * dim):
        bad = table.column("video_id")[int(np.flatnonzero(lengths != n_steps * dim)[0])].as_py()
        raise UserError(f"{part.url}: video {bad} has an embedding of the wrong size (expected {n_steps}x{dim})")
    values = flat.flatten().to_numpy(zero_copy_only=False) if n else np.zeros(0, dtype=np.float32)
    x = torch.from_numpy(np.array(values, dtype=np.float32).reshape(n, n_steps, dim))  # (N, S, D), a writable copy
    y = torch.as_tensor(table.column("label").to_numpy(zero_copy_only=False).astype(np.float32))
    t_rel = torch.from_numpy(spec.t_rel())
    real = table.column("real_s").to_numpy(zero_copy_only=False).astype(np.float64)  # null -> NaN
    real_s = torch.as_tensor(np.where(np.isnan(real), spec.history_s, real), dtype=torch.float32)
    fs = FeatureSet(
        dataset=dataset_name, backbone=backbone, x=x, y=y,
        split=np.asarray(table.column("split").to_pylist(), dtype=str),
        t_rel=t_rel, video_ids=table.column("video_id").to_pylist(), step_hz=spec.step_hz,
        weights=weights_id(meta), meta={**meta, "path": part.url}, real_s=real_s,
    )
    return fs.to(device)
