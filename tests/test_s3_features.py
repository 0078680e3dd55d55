"""The feature cache on an s3:// home (lab/cache.py over lab/storage_s3.py), against a real S3 API
(moto in server mode on 127.0.0.1).

Extraction writes the partition to the bucket; a second node (another scratch folder, so an empty
local read cache) loads the features and runs a campaign from the bucket alone, fetching each part
file once; nothing lands in a scratch folder's ``cache/``; a damaged part on the bucket is named and
repaired by extract, quarantined on the bucket, never deleted.
"""
from __future__ import annotations

import functools
from pathlib import Path

import pytest

from tests.test_s3_home import SPACE


def _node(monkeypatch, scratch: Path) -> list[str]:
    """Make this process a fresh node: its own scratch folder and object cache, and a new s3fs
    filesystem (the process keeps one, bound to the cache folder it was made with). Returns the list
    the node's downloads from the bucket are appended to."""
    import crashsearch.lab.storage_s3 as s3

    monkeypatch.setenv("CRASHSEARCH_SCRATCH", str(scratch))
    monkeypatch.setattr(s3, "_FS", {})
    fs = s3.s3_filesystem()
    fetched: list[str] = []
    real_get = fs.get_file  # an instance attribute: fsspec mirrors its async methods per instance

    def counted_get(rpath, lpath, **kwargs):
        fetched.append(rpath)
        return real_get(rpath, lpath, **kwargs)

    monkeypatch.setattr(fs, "get_file", counted_get)
    return fetched


@pytest.fixture
def s3_features(s3_home, synth_dataset, tmp_path, monkeypatch):
    """(URL, dataset, the partition's part-file keys): the pixels features extracted into the s3 home
    by node A (its scratch under tmp_path/a)."""
    from crashsearch.lab.cache import latest_partition
    from crashsearch.lab.settings import resolve_home
    from crashsearch.tasks.extract import extract_dataset, extract_videos

    _node(monkeypatch, tmp_path / "a")
    home = resolve_home(s3_home)
    summary = extract_dataset(synth_dataset, "pixels", home=home, progress=False, log=lambda *_: None,
                              runner=functools.partial(extract_videos, flush_every=4))  # several part files
    assert summary["path"].startswith(s3_home + "/cache/")  # named by its URL, not the scratch folder
    keys = latest_partition(s3_home, synth_dataset.name, "pixels").part_files()
    assert len(keys) == 3
    return s3_home, synth_dataset, keys


def _scratch_caches(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("cache") if p.is_dir()]


def test_a_second_node_loads_features_and_runs_a_campaign_from_the_bucket_fetching_each_part_once(
        s3_features, tmp_path, monkeypatch):
    # before: the feature cache lived in the home's local scratch folder, so every GPU node had to
    # extract the features itself; a node with an empty scratch found none
    from crashsearch.flows.campaign import run_campaign
    from crashsearch.lab.cache import list_cached, load_features
    from crashsearch.lab.settings import resolve_home
    from crashsearch.lab.storage import backend_for

    url, ds, keys = s3_features
    backend = backend_for(url)
    partition = keys[0].rsplit("/", 1)[0]
    assert keys and f"{partition}/meta.json" in backend.list("cache/")
    assert not _scratch_caches(tmp_path)  # node A kept nothing of it in its scratch's cache/

    fetched = _node(monkeypatch, tmp_path / "b")  # node B: an empty scratch, the bucket only
    features = load_features(url, ds.name, "pixels", dataset=ds)
    assert len(features.video_ids) == len(ds.videos) and features.x.shape[1:] == (23, features.meta["dim"])
    assert features.meta["path"] == f"{url}/{partition}"
    assert [c["path"] for c in list_cached(url, ds.name)] == [f"{url}/{partition}"]
    assert sorted(fetched) == sorted(backend._path(k) for k in keys)  # each part file once
    load_features(url, ds.name, "pixels", dataset=ds)  # warm: from local disk
    space = tmp_path / "tiny.yaml"
    space.write_text(SPACE)
    summary = run_campaign(resolve_home(url), ds.root, "c-feat", budget=2, round_size=2, space_path=str(space),
                           seeds=1, policies=["random"], device="cpu")
    assert summary.recorded == 2
    assert len([f for f in fetched if "/cache/" in f]) == len(keys)  # the campaign read the node's copies
    assert not _scratch_caches(tmp_path)


def test_a_damaged_part_on_the_bucket_is_named_and_extract_repairs_it_keeping_it_in_quarantine(
        s3_features, tmp_path, monkeypatch):
    from crashsearch.lab.cache import FeaturesNotFound, load_features
    from crashsearch.lab.storage import backend_for
    from crashsearch.tasks.extract import extract_dataset

    url, ds, keys = s3_features
    backend = backend_for(url)
    backend.put(keys[0], b"garbage")  # damaged in place: a new ETag, so no node serves its old copy
    _node(monkeypatch, tmp_path / "b")
    name = keys[0].rsplit("/", 1)[1]
    with pytest.raises(FeaturesNotFound, match=rf"the feature cache s3://\S+ is damaged: part file {name} is unreadable"):
        load_features(url, ds.name, "pixels", dataset=ds)
    lines: list[str] = []
    summary = extract_dataset(ds, "pixels", home=url, progress=False, log=lines.append)
    assert not summary["cache_hit"]
    assert any(line.startswith(f"cache damaged: {url}/cache/") and f"moved to {url}/quarantine/cache/" in line
               for line in lines), lines
    assert backend.read(f"quarantine/{keys[0]}") == b"garbage"  # kept, on the bucket
    assert keys[0] not in backend.list("cache/")
    assert len(load_features(url, ds.name, "pixels", dataset=ds).video_ids) == len(ds.videos)
    assert extract_dataset(ds, "pixels", home=url, progress=False, log=lines.append)["cache_hit"]
    assert not _scratch_caches(tmp_path)


def test_extract_with_an_s3_home_finds_the_features_on_the_bucket(s3_features, tmp_path, monkeypatch, capsys):
    # bug: the extract command gave the flow the home's local scratch folder, not its URL
    from crashsearch.flows.cli import main as cli

    url, ds, _ = s3_features
    _node(monkeypatch, tmp_path / "b")
    assert cli(["extract", "--home", url, "--dataset", str(ds.root), "--backbone", "pixels", "--device", "cpu"]) == 0
    assert f"cache hit: {ds.name}/pixels/" in capsys.readouterr().out  # found on the bucket, nothing extracted
    assert not _scratch_caches(tmp_path)
