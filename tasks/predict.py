"""Run a packaged detector (tasks/detector.py) on videos: the risk over the whole video, the alert time.

Each video is decoded by the extraction code (tasks.extract.decode_video, decord) on a grid of clip
ends every 1/step_hz seconds from its start to its last frame, embedded by the package's backbone
(models.backbones, on the GPU when there is one), and the head scores the window ending at each
step (tasks.detector.risk_over_time). Per video: ``max_risk``, ``alert_s`` (the first clip end whose
risk reaches the threshold; empty if none) and, from a manifest with event times, ``event_s`` and
``margin_s`` = event - alert (positive: the warning came that long before the event).

Inputs: video files, folders (a folder holding a dataset manifest is read as that dataset, with its
labels and event times; any other folder gives its video files), or a manifest CSV. An unreadable
video is one line on stderr and the others are predicted.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from crashsearch.lab._io import atomic_write
from crashsearch.lab.errors import UserError
from crashsearch.lab.storage import is_url
from crashsearch.lab.cache import ExtractSpec
from crashsearch.lab.datasets import DatasetError, VideoItem, load_dataset
from crashsearch.tasks.detector import Detector

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
EMBED_BATCH = 32  # clips per backbone call: bounds the frames gathered at once


@dataclass
class Prediction:
    """One video's result; ``times`` and ``risk`` are the whole series (for plots)."""

    video: str
    item: VideoItem | None
    max_risk: float
    alert_s: float | None
    times: np.ndarray = field(repr=False)
    risk: np.ndarray = field(repr=False)
    label: int | None = None
    event_s: float | None = None

    @property
    def margin_s(self) -> float | None:
        if self.event_s is None or self.alert_s is None:
            return None
        return self.event_s - self.alert_s

    def row(self) -> dict:
        out = {"video": self.video, "max_risk": round(self.max_risk, 6),
               "alert_s": None if self.alert_s is None else round(self.alert_s, 3)}
        if self.label is not None:
            out.update(label=self.label, event_s=self.event_s,
                       margin_s=None if self.margin_s is None else round(self.margin_s, 3))
        return out


def gather_videos(paths: Iterable[str | Path], log: Callable[[str], None]) -> list[tuple[VideoItem, bool]]:
    """(video, labelled) for every input path; a path that is neither a video, a folder nor a manifest
    is one line through ``log``. ``labelled``: the item's label and event time come from a manifest."""
    out: list[tuple[VideoItem, bool]] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            log(f"{path}: no such file or directory")
        elif path.suffix.lower() == ".csv" or (path.is_dir() and _has_manifest(path)):
            try:
                dataset = load_dataset(path)
            except DatasetError as exc:
                log(str(exc))
                continue
            for problem in dataset.problems:
                log(f"skipped: {problem}")
            out += [(v, True) for v in dataset.videos]
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
            if not files:
                log(f"{path}: no video files ({', '.join(VIDEO_SUFFIXES)}) in this folder")
            out += [(_plain_item(p), False) for p in files]
        else:
            out.append((_plain_item(path), False))
    return out


def _has_manifest(folder: Path) -> bool:
    try:
        load_dataset(folder)
    except DatasetError:
        return False
    return True


def _plain_item(path: Path) -> VideoItem:
    return VideoItem(str(path), path.resolve(), 0, None, None, "test")


def backbone_for(detector: Detector, device: str = "auto"):
    """The package's backbone, as its features were extracted. Raises ValueError in one line when
    this machine cannot build it (weights missing, another shape)."""
    from crashsearch.models.backbones import create_backbone

    spec = detector.model["features"]
    wanted = str(spec["weights"])
    tries = ["random", "random-full"] if wanted == "random" else (["none"] if wanted == "none" else [wanted, "auto"])
    for weights in tries:
        try:
            backbone = create_backbone(spec["backbone"], weights=weights, device=device)
        except Exception:  # noqa: BLE001 - explained below, with what the package needs
            continue
        if (backbone.weights_id == wanted and backbone.dim == int(detector.model["in_dim"])
                and backbone.clip_frames == int(spec["clip_frames"])
                and list(backbone.frame_size) == [int(v) for v in spec["frame_size"]]):
            return backbone
    raise UserError(f"the package needs backbone {spec['backbone']} with weights {wanted!r} "
                     f"({detector.model['in_dim']}-d, {spec['clip_frames']} frames of {spec['frame_size']}); "
                     f"they cannot be loaded here")


def predict_video(item: VideoItem, detector: Detector, backbone, labelled: bool = False) -> Prediction:
    """The risk over one whole video. Raises tasks.extract.VideoFailure for an unusable video."""
    import decord

    from crashsearch.tasks.extract import VideoFailure, decode_video

    spec_d = detector.model["features"]
    try:
        reader = decord.VideoReader(str(item.path), num_threads=1)
        n_frames, fps = len(reader), float(reader.get_avg_fps())
        del reader
    except Exception as exc:  # decord raises DECORDError (a RuntimeError) for anything unreadable
        raise VideoFailure(f"cannot open video: {' '.join(str(exc).split())[:200]}") from None
    if n_frames == 0 or not math.isfinite(fps) or fps <= 0:
        raise VideoFailure(f"no frames or no usable frame rate ({n_frames} frames, {fps} fps)")
    last = (n_frames - 1) / fps
    spec = ExtractSpec(float(spec_d["step_hz"]), last, int(spec_d["clip_frames"]), tuple(spec_d["frame_size"]),
                       float(spec_d["decode_fps"]), 0.0)
    # the whole video: clip ends from its start to its last frame (the reference is the last frame)
    video = decode_video(replace(item, event_time=None), spec)
    frames = torch.from_numpy(video.frames)
    outputs = []
    for start in range(0, len(video.clip_index), EMBED_BATCH):
        index = torch.from_numpy(video.clip_index[start:start + EMBED_BATCH])
        outputs.append(backbone.embed(frames[index]))  # (b, D)
    real = torch.cat(outputs)  # (S_real, D)
    n_steps = spec.n_steps
    emb = torch.cat([real.new_zeros(n_steps - len(real), real.shape[1]), real])  # (S, D)
    risk = detector.risk(emb, first_real=n_steps - len(real))
    times = video.ref_time + spec.t_rel().astype(np.float64)
    above = np.flatnonzero(np.nan_to_num(risk, nan=-1.0) >= detector.threshold)
    return Prediction(video=str(item.path) if not labelled else item.id, item=item,
                      max_risk=float(np.nanmax(risk)), alert_s=float(times[above[0]]) if len(above) else None,
                      times=times, risk=risk, label=int(item.label) if labelled else None,
                      event_s=item.event_time if labelled else None)


def plot_prediction(pred: Prediction, threshold: float, path: Path) -> None:
    """One PNG: risk over time, the threshold, the alert and (when known) the event."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.plot(pred.times, pred.risk, color="tab:blue", label="risk")
    ax.axhline(threshold, color="tab:orange", linestyle="--", label=f"threshold {threshold:.3f}")
    if pred.alert_s is not None:
        ax.axvline(pred.alert_s, color="tab:orange", linestyle=":", label=f"alert {pred.alert_s:.2f} s")
    if pred.event_s is not None:
        ax.axvline(pred.event_s, color="tab:red", label=f"event {pred.event_s:.2f} s")
    ax.set(xlabel="time (s)", ylabel="risk", ylim=(-0.02, 1.02), title=Path(pred.video).name)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, dpi=90, format="png"))
    finally:
        plt.close(fig)


@dataclass
class PredictRun:
    predictions: list[Prediction]
    failures: list[str]
    seconds: float
    threshold: float

    @property
    def videos_per_s(self) -> float:
        return len(self.predictions) / self.seconds if self.seconds > 0 else 0.0


def predict(model_dir: str | Path, paths: Iterable[str | Path], plots: str | Path | None = None,
            device: str = "auto", log: Callable[[str], None] | None = None, progress: bool = True) -> PredictRun:
    """Predict every video of ``paths`` with the package in ``model_dir`` (a folder, or the URL of one
    published on an object store); returns the predictions and one line per video that could not be
    predicted. Raises ValueError for a bad package."""
    from crashsearch.lab.console import echo, progress_bar
    from crashsearch.tasks.extract import VideoFailure, _quiet_decord

    log = log or echo
    if is_url(model_dir):  # the nightly champion published on an object-store home
        from crashsearch.tasks.champion import fetch_package

        model_dir = fetch_package(str(model_dir))
    detector = Detector.load(model_dir)
    items = gather_videos(paths, log)
    backbone = backbone_for(detector, device)
    _quiet_decord()
    plot_dir = Path(plots) if plots else None
    if plot_dir is not None:
        plot_dir.mkdir(parents=True, exist_ok=True)
    bar = progress_bar(len(items), desc="predict", unit="video") if progress and items else None
    predictions, failures, used = [], [], set()
    started = time.perf_counter()
    try:
        for item, labelled in items:
            try:
                pred = predict_video(item, detector, backbone, labelled)
            except VideoFailure as exc:
                failures.append(f"{item.path}: {exc}")
                log(f"skipped: {failures[-1]}")
            else:
                predictions.append(pred)
                if plot_dir is not None:
                    plot_prediction(pred, detector.threshold, _unique(plot_dir, _safe(pred.video), used))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return PredictRun(predictions, failures, time.perf_counter() - started, detector.threshold)


def _unique(folder: Path, stem: str, used: set[str]) -> Path:
    """``folder/stem.png``, numbered when two videos share a name (same file name in two folders)."""
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}-{n}"
    used.add(name)
    return folder / f"{name}.png"


def _safe(name: str) -> str:
    stem = Path(name).stem if "/" in name or "." in name else name
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem) or "video"
