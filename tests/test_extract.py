"""Feature extraction into the Parquet cache: timing, schema, cache hits, resume, bad videos, the flow."""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from crashsearch.lab.cache import ExtractSpec, FeaturesNotFound, history_from_space, list_cached, load_features
from crashsearch.lab.datasets import VideoItem, load_dataset
from crashsearch.lab.space import Space
from crashsearch.models.backbones import create_backbone
from crashsearch.tasks.extract import VideoFailure, extract_dataset, extract_videos, plan_frames, reference_time

SECONDS = 8.0  # the shortest clip the generator allows: events sit at >= 6.8 s


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Six small synthetic videos (3 positive) in the Nexar layout."""
    from crashsearch.lab.synth import generate

    return generate(tmp_path_factory.mktemp("synth") / "tiny", videos=6, seed=3, seconds=SECONDS)


class CountingBackbone:
    """Wraps a backbone and counts embed calls and clips; optionally fails on the n-th call."""

    def __init__(self, inner, fail_on_call: int | None = None):
        self.inner, self.calls, self.clips, self.fail_on_call = inner, 0, 0, fail_on_call

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def embed(self, clips):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise RuntimeError("simulated crash in the middle of a run")
        self.clips += len(clips)
        return self.inner.embed(clips)


def _pixels(fail_on_call=None) -> CountingBackbone:
    return CountingBackbone(create_backbone("pixels"), fail_on_call)


def _run(dataset, home, backbone, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("log", lambda m: None)
    return extract_dataset(dataset, backbone, home=home, **kw)


# ---- timing: which frames each clip uses --------------------------------------------------


def test_spec_grid_and_history_from_the_space():
    assert history_from_space(Space.load()) == pytest.approx(5.5)  # window 4.0 + horizon 1.5
    spec = ExtractSpec(step_hz=4.0, history_s=5.5, clip_frames=4, frame_size=(24, 40), decode_fps=8.0)
    t = spec.t_rel()
    assert spec.n_steps == 23 and t.shape == (23,) and t[0] == pytest.approx(-5.5) and t[-1] == 0.0
    assert np.allclose(np.diff(t), 0.25)


def test_plan_frames_ends_each_clip_at_its_time_and_never_looks_ahead():
    spec = ExtractSpec(step_hz=4.0, history_s=5.5, clip_frames=4, frame_size=(24, 40), decode_fps=8.0)
    index = plan_frames(n_frames=240, fps=30.0, ref_time=7.0, spec=spec)  # (S, F)
    assert index.shape == (23, 4)
    assert index[-1].tolist() == [198, 202, 206, 210]  # floor((7.0 - k/8) * 30): frames 1/8 s apart, last at 7.0 s
    assert np.all(index[:, -1] == np.floor((7.0 + spec.t_rel().astype(np.float64)) * 30 + 1e-6))
    assert np.all(np.diff(index, axis=1) > 0), "frames inside a clip go forward in time"
    assert index[0, 0] == int(np.floor((7.0 - 5.5 - 3 / 8) * 30 + 1e-6))
    # clips reaching before the first frame repeat it instead of failing
    early = plan_frames(n_frames=80, fps=8.0, ref_time=5.5, spec=spec)
    assert early.min() == 0 and early[0].tolist() == [0, 0, 0, 0]


def test_reference_time_and_short_videos():
    """A short clip is kept (before: anything under 5.5 s of history was dropped); only a video too
    short for the earliest prediction, or whose event is past its end, is skipped."""
    neg = VideoItem("n", None, 0, None, None, "train")
    pos = VideoItem("p", None, 1, 7.2, 6.0, "train")
    assert reference_time(neg, n_frames=80, fps=8.0, min_history_s=0.5) == pytest.approx(79 / 8)
    assert reference_time(pos, n_frames=80, fps=8.0, min_history_s=0.5) == pytest.approx(7.2)
    assert reference_time(VideoItem("e", None, 1, 3.0, None, "train"), 80, 8.0, 0.5) == pytest.approx(3.0)
    assert reference_time(neg, n_frames=40, fps=8.0, min_history_s=0.5) == pytest.approx(39 / 8)  # a 5 s negative
    with pytest.raises(VideoFailure, match="too short to predict: 0.30 s before the reference time, the earliest "
                                           "prediction needs 0.50 s"):
        reference_time(VideoItem("e", None, 1, 0.3, None, "train"), 80, 8.0, 0.5)
    with pytest.raises(VideoFailure, match="event at 12.00 s but the video ends"):
        reference_time(VideoItem("l", None, 1, 12.0, None, "train"), 80, 8.0, 0.5)
    spec = ExtractSpec(step_hz=4.0, history_s=5.5, clip_frames=4, frame_size=(24, 40), decode_fps=8.0)
    assert [spec.real_steps(s) for s in (0.5, 3.0, 3.1, 5.5, 9.0)] == [3, 13, 13, 23, 23]


# ---- the cache ----------------------------------------------------------------------------


def test_schema_labels_and_embeddings_match_the_manifest(synth, tmp_path):
    bb = _pixels()
    summary = _run(synth.root, tmp_path, bb)
    assert summary["cache_hit"] is False and summary["videos_ok"] == 6 and summary["videos_failed"] == 0
    fs = load_features(tmp_path, synth.name, "pixels")

    assert fs.x.shape == (6, 23, bb.dim) and fs.x.dtype == torch.float32 and torch.isfinite(fs.x).all()
    assert torch.allclose(fs.t_rel, torch.arange(-22, 1) / 4.0) and fs.step_hz == 4.0
    by_id = {v.id: v for v in load_dataset(synth.root).videos}  # the split extraction used: the loader's default seed
    assert fs.video_ids == sorted(by_id)
    assert fs.y.tolist() == [float(by_id[i].label) for i in fs.video_ids]
    assert list(fs.split) == [by_id[i].split for i in fs.video_ids]
    assert fs.weights == "none" and fs.meta["complete"] and fs.meta["manifest_hash"] == synth.manifest_hash()
    assert bb.clips == 6 * 23, "one clip per video and step"

    # the rows' reference time is the event for positives, the last frame for negatives
    (part,) = Path(fs.meta["path"]).glob("part-*.parquet")  # six videos fit in one part file
    for row in pq.read_table(part).to_pylist():
        item = by_id[row["video_id"]]
        expected = item.event_time if item.label else (SECONDS * 8 - 1) / 8
        assert row["ref_time"] == pytest.approx(expected) and len(row["emb"]) == 23 * bb.dim

    # x[i, s] is the embedding of the clip ending at ref + t_rel[s]: recompute one by hand
    import decord

    i = fs.video_ids.index(next(v.id for v in synth.videos if v.label == 1))
    item, spec = by_id[fs.video_ids[i]], ExtractSpec.for_backbone(bb)
    vr = decord.VideoReader(str(item.path), width=bb.frame_size[1], height=bb.frame_size[0])
    s = 10
    end = item.event_time + float(fs.t_rel[s])
    idx = [int(np.floor((end - k / 8.0) * vr.get_avg_fps() + 1e-6)) for k in reversed(range(bb.clip_frames))]
    clip = torch.from_numpy(vr.get_batch(idx).asnumpy())[None]
    torch.testing.assert_close(fs.x[i, s], bb.inner.embed(clip)[0])
    torch.testing.assert_close(spec.frame_offsets(), np.arange(-3, 1) / 8.0)


def test_second_run_is_a_cache_hit_with_no_backbone_calls(synth, tmp_path):
    _run(synth.root, tmp_path, _pixels())
    again, logged = _pixels(), []
    summary = _run(synth.root, tmp_path, again, log=logged.append)
    assert summary["cache_hit"] is True and summary["videos_ok"] == 6
    assert again.calls == 0
    assert any(line.startswith("cache hit:") for line in logged)
    (entry,) = list_cached(tmp_path, synth.name)
    assert entry["backbone"] == "pixels" and entry["complete"] and entry["videos"] == 6 and entry["weights"] == "none"


def test_new_pixels_under_the_same_manifest_are_a_new_partition(synth, tmp_path):
    data = tmp_path / synth.name
    shutil.copytree(synth.root, data)
    first = _run(data, tmp_path / "home", _pixels())
    videos = sorted((data / "train").glob("*.mp4"))
    shutil.copyfile(videos[0], videos[1])  # same ids, labels and times; other video bytes
    second = _run(data, tmp_path / "home", _pixels())
    assert second["cache_hit"] is False and second["key"] != first["key"]
    assert len(list_cached(tmp_path / "home", synth.name)) == 2


def test_an_interrupted_run_resumes_where_it_stopped(synth, tmp_path):
    runner = functools.partial(extract_videos, flush_every=1)
    crashing = _pixels(fail_on_call=3)  # batch = one video's 23 clips: two videos finish, the third crashes
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(synth.root, tmp_path / "a", crashing, batch_size=23, workers=1, runner=runner)
    (entry,) = list_cached(tmp_path / "a")
    assert not entry["complete"]
    with pytest.raises(FeaturesNotFound, match=f"dataset '{synth.name}' and backbone 'pixels'"):
        load_features(tmp_path / "a", synth.name, "pixels")

    resumed = _pixels()
    summary = _run(synth.root, tmp_path / "a", resumed, batch_size=23, workers=1)
    assert summary["videos_ok"] == 6 and resumed.clips == 4 * 23, "only the four missing videos are embedded"

    _run(synth.root, tmp_path / "b", _pixels())  # a clean run gives the same features
    a, b = load_features(tmp_path / "a", synth.name, "pixels"), load_features(tmp_path / "b", synth.name, "pixels")
    assert a.video_ids == b.video_ids
    torch.testing.assert_close(a.x, b.x)


def test_corrupt_truncated_empty_and_short_videos_are_reported_and_skipped(synth, tmp_path):
    good = [v for v in synth.videos][:4]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "random.mp4").write_bytes(np.random.default_rng(0).bytes(20_000))
    data = good[0].path.read_bytes()
    (bad / "truncated.mp4").write_bytes(data[: int(len(data) * 0.3)])
    (bad / "empty.mp4").write_bytes(b"")
    shutil.copy(good[1].path, bad / "early_event.mp4")  # event 0.3 s in: no prediction time at all
    lines = ["path,label,event_time"] + [f"{v.path},{v.label},{v.event_time or ''}" for v in good]
    lines += [f"{bad / 'random.mp4'},1,7.0", f"{bad / 'truncated.mp4'},0,", f"{bad / 'empty.mp4'},0,",
              f"{bad / 'early_event.mp4'},1,0.3"]
    manifest = tmp_path / "mixed.csv"
    manifest.write_text("\n".join(lines) + "\n")
    ds = load_dataset(manifest)
    assert len(ds.videos) == 8 and not ds.problems

    logged = []
    summary = _run(ds, tmp_path / "home", create_backbone("pixels"), log=logged.append)
    assert summary["videos_ok"] == 4 and summary["videos_failed"] == 4 and summary["complete"]
    failures = {f["video_id"]: f["reason"] for f in json.loads((tmp_path / "home" / "cache" / ds.name / "pixels" /
                                                                summary["key"] / "failures.json").read_text())}
    assert set(failures) == {"random", "truncated", "empty", "early_event"}
    assert failures["random"].startswith("cannot open video")
    assert failures["truncated"].startswith(("cannot open video", "decode failed"))
    assert failures["empty"] == "empty file (0 bytes)"
    assert failures["early_event"].startswith("too short to predict: 0.30 s")
    skipped = [line for line in logged if line.startswith("skipped:")]  # each named in one line
    assert len(skipped) == 4 and any("truncated" in line for line in skipped)

    fs = load_features(tmp_path / "home", ds.name, "pixels")
    assert sorted(fs.video_ids) == sorted(v.id for v in good)


# ---- the Prefect flow and the CLI ---------------------------------------------------------


@pytest.mark.slow
def test_cli_runs_the_prefect_flow_end_to_end(synth, tmp_path, capsys):
    from crashsearch.flows.cli import main

    args = ["extract", "--home", str(tmp_path), "--dataset", str(synth.root), "--backbone", "vjepa2_vitl",
            "--weights", "random", "--device", "auto", "--workers", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "extracted vjepa2_vitl (RANDOM weights) features" in out and "6 videos ok, 0 failed" in out
    fs = load_features(tmp_path, synth.name, "vjepa2_vitl")
    assert fs.x.shape == (6, 23, 64) and fs.weights == "random" and fs.meta["weights"] == "random"

    assert main(args) == 0
    assert "cache hit:" in capsys.readouterr().out

    assert main(args[:6] + ["no_such_net"]) == 2
    assert "unknown backbone 'no_such_net'" in capsys.readouterr().err


def test_partition_writes_are_atomic_and_duplicates_are_read_once(tmp_path):
    from crashsearch.lab.cache import Partition

    part = Partition.open(tmp_path, "ds", "pixels", "k" * 12)
    row = {"video_id": "a", "split": "train", "label": 1, "event_time": 7.0, "ref_time": 7.0,
           "t_rel": np.zeros(3, np.float32), "emb": np.ones((3, 2), np.float32)}
    part.write_rows([row])
    part.write_rows([row, {**row, "video_id": "b", "label": 0, "event_time": None}])  # a racing writer's duplicate
    assert part.read_table().column("video_id").to_pylist() == ["a", "b"]
    assert part.done_ids() == {"a", "b"}
    assert not list(Path(part.url).glob(".*tmp")), "no temporary files are left behind"
    part.add_failures([{"video_id": "c", "path": "/x/c.mp4", "reason": "empty file (0 bytes)"}])
    part.add_failures([{"video_id": "c", "path": "/x/c.mp4", "reason": "another reason"}])
    assert part.failures() == [{"video_id": "c", "path": "/x/c.mp4", "reason": "empty file (0 bytes)"}]


def test_only_transient_errors_are_retried():
    from prefect.states import Failed

    from crashsearch.tasks.extract import _transient

    assert _transient(None, None, Failed(data=OSError("No space left on device")))
    assert _transient(None, None, Failed(data=TimeoutError("slow disk")))
    assert not _transient(None, None, Failed(data=ValueError("a bug")))
    assert not _transient(None, None, Failed(data=RuntimeError("CUDA out of memory")))
