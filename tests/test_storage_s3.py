"""The S3 backend (lab/storage_s3.py) against a real S3 API: moto in server mode on 127.0.0.1."""
from __future__ import annotations

import io
import threading

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.s3_server import TEST_SECRET


@pytest.fixture
def backend(s3_home):
    from crashsearch.lab.storage import backend_for

    return backend_for(s3_home)


def test_an_s3_url_gets_the_s3_backend_and_its_objects_round_trip(backend, s3_home):
    from crashsearch.lab.storage import Backend
    from crashsearch.lab.storage_s3 import S3Backend

    assert isinstance(backend, S3Backend) and isinstance(backend, Backend)
    assert backend.list("campaigns/") == [] and not backend.exists("campaigns/c1/campaign.json")
    backend.put("campaigns/c1/campaign.json", b'{"id": "c1"}')
    backend.put("campaigns/c1/log/part-1.parquet", b"x")
    backend.put("campaigns/c10/campaign.json", b"{}")
    assert backend.read("campaigns/c1/campaign.json") == b'{"id": "c1"}'
    assert backend.list("campaigns/c1/") == ["campaigns/c1/campaign.json", "campaigns/c1/log/part-1.parquet"]
    assert backend.list("campaigns/c1") == backend.list("campaigns/c1/")  # c10 is not under c1
    assert backend.folders("campaigns/") == ["c1", "c10"] and backend.folders("campaigns/c1/") == ["log"]
    assert backend.exists("campaigns/c1/campaign.json") and backend.mtime("campaigns/c1/campaign.json") > 0
    assert backend.url("campaigns/c1/campaign.json") == f"{s3_home}/campaigns/c1/campaign.json"
    backend.put("campaigns/c1/campaign.json", b"{}")  # put replaces
    assert backend.read("campaigns/c1/campaign.json") == b"{}"
    backend.delete("campaigns/c1/campaign.json")
    backend.delete("campaigns/c1/campaign.json")  # a missing key is not an error
    with pytest.raises(FileNotFoundError):
        backend.read("campaigns/c1/campaign.json")
    with pytest.raises(FileNotFoundError):
        backend.mtime("campaigns/c1/campaign.json")
    with pytest.raises(ValueError):
        backend.read("../other/x")


def test_create_is_conditional_and_replace_needs_the_current_etag(backend):
    assert backend.create("campaigns/c1/lease.json", b"first")
    assert not backend.create("campaigns/c1/lease.json", b"second")  # If-None-Match: * refused it
    data, tag = backend.read_tagged("campaigns/c1/lease.json")
    assert data == b"first"
    new = backend.replace("campaigns/c1/lease.json", b"third", tag)
    assert new and new != tag
    assert backend.replace("campaigns/c1/lease.json", b"fourth", tag) is None  # a stale ETag loses
    assert backend.read("campaigns/c1/lease.json") == b"third"
    assert backend.replace("campaigns/c1/nothing.json", b"x", tag) is None  # nothing to replace
    assert backend.delete_if("campaigns/c1/lease.json", tag) is False  # not the current ETag: kept
    assert backend.delete_if("campaigns/c1/lease.json", new) is True
    assert not backend.exists("campaigns/c1/lease.json")


def test_of_writers_racing_to_create_one_key_exactly_one_wins(backend):
    wins = []
    barrier = threading.Barrier(6)

    def race(i: int) -> None:
        barrier.wait()
        if backend.create("campaigns/c1/lease.json", f"writer {i}".encode()):
            wins.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert backend.read("campaigns/c1/lease.json") == f"writer {wins[0]}".encode()


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def test_duckdb_reads_the_home_through_the_backend_and_nothing_outside_its_campaigns(backend, s3_home):
    from crashsearch.lab.storage_s3 import S3Backend
    from crashsearch.lab.store import DUCKDB_CONFIG, lock_to_campaigns

    backend.put("campaigns/c1/log/part-1.parquet", _parquet(pa.table({"experiment_id": ["e1", "e2"]})))
    outside = S3Backend(s3_home.rsplit("/", 1)[0] + "/elsewhere")
    outside.put("secret.parquet", _parquet(pa.table({"secret": [42]})))
    backend.put("cache/features.parquet", _parquet(pa.table({"secret": [7]})))  # the home, but not its history
    con = duckdb.connect(":memory:", config=DUCKDB_CONFIG)
    backend.attach(con)
    lock_to_campaigns(con, backend.url("campaigns"))
    url = backend.url("campaigns/c1/log/part-1.parquet")
    assert con.execute(f"SELECT count(*) FROM read_parquet('{url}')").fetchone() == (2,)
    assert con.execute(f"SELECT count(*) FROM read_parquet('{backend.url('campaigns/*/log/part-*.parquet')}')").fetchone() == (2,)
    for path in [outside.url("secret.parquet"), backend.url("cache/features.parquet"),
                 f"{s3_home}/campaigns/../cache/features.parquet", "/etc/hostname"]:
        with pytest.raises(duckdb.Error):
            con.execute(f"SELECT * FROM read_parquet('{path}')").fetchall()
    with pytest.raises(duckdb.Error):  # the sandbox is for good
        con.execute("SET enable_external_access = true")


def test_no_secret_reaches_the_home(backend, s3_home):
    backend.put("campaigns/c1/campaign.json", b"{}")
    assert backend.create("campaigns/c1/lease.json", b"{}")
    for key in backend.list(""):
        assert TEST_SECRET.encode() not in backend.read(key)
    assert TEST_SECRET not in repr(backend.__dict__) and TEST_SECRET not in s3_home


def test_log_parts_are_read_once_into_a_capped_local_cache_named_by_their_etag(backend, tmp_path, monkeypatch):
    from crashsearch.lab import storage_s3
    from crashsearch.lab.storage_s3 import ObjectCache

    key = "campaigns/c1/log/part-1.parquet"
    backend.put(key, b"first")
    backend.list("campaigns/")
    assert backend.read(key) == b"first"
    cache = backend.cache
    copies = sorted(cache.folder.glob("*.parquet"))
    assert any(p.read_bytes() == b"first" for p in copies)
    backend.put(key, b"second, damaged in place")  # a new ETag: the old copy is not served
    backend.list("campaigns/")
    assert backend.read(key) == b"second, damaged in place"
    backend.delete(key)
    with pytest.raises(FileNotFoundError):
        backend.read(key)

    small = ObjectCache(tmp_path / "objects", cap_bytes=10)
    for i in range(3):
        backend.put(f"campaigns/c1/log/part-{i}.parquet", b"x" * 6)
        small.path(backend.fs, backend._path(f"campaigns/c1/log/part-{i}.parquet"), f'"tag{i}"')
    # over the cap, but each copy was used within the minute: a query may be about to read it by path
    assert len(list((tmp_path / "objects").glob("*.parquet"))) == 3
    monkeypatch.setattr(storage_s3, "IN_USE_SECONDS", 0)
    small.path(backend.fs, backend._path("campaigns/c1/log/part-0.parquet"), '"tag9"')
    assert [p.stat().st_size for p in (tmp_path / "objects").glob("*.parquet")] == [6]  # the newest only
    tiny = ObjectCache(tmp_path / "tiny", cap_bytes=1)  # smaller than one object: it is still read
    assert tiny.path(backend.fs, backend._path("campaigns/c1/log/part-0.parquet"), '"tag0"').read_bytes() == b"x" * 6


def test_an_object_read_through_open_copy_is_fetched_once_per_etag(backend, monkeypatch):
    key = "cache/ds/pixels/k/part-00000-a.parquet"

    def put_elsewhere(data: bytes) -> None:  # another node's write: no copy in this node's cache
        backend.fs.call_s3("put_object", Bucket=backend.bucket, Key=backend._key(key), Body=data)

    put_elsewhere(b"features")
    fetched = []
    real_get = backend.fs.get_file  # an instance attribute: fsspec mirrors its async methods per instance

    def counted_get(rpath, lpath, **kwargs):
        fetched.append(rpath)
        return real_get(rpath, lpath, **kwargs)

    monkeypatch.setattr(backend.fs, "get_file", counted_get)
    for _ in range(3):
        with backend.open_copy(key) as f:
            assert f.read() == b"features"
    assert len(fetched) == 1  # read from the bucket once, then from local disk
    put_elsewhere(b"rewritten")  # a new ETag is a new copy, never the stale one
    with backend.open_copy(key) as f:
        assert f.read() == b"rewritten"
    assert len(fetched) == 2
    backend.put("cache/ds/pixels/k/part-00001-b.parquet", b"mine")  # what this node writes it reads back
    with backend.open_copy("cache/ds/pixels/k/part-00001-b.parquet") as f:  # without a GET
        assert f.read() == b"mine"
    assert len(fetched) == 2

    backend.list("cache/")  # a listing's ETag of a part file stays true: the next reads ask no HEAD
    monkeypatch.setattr(backend.fs, "info", lambda *a, **k: pytest.fail("a HEAD for a listed part file"))
    with backend.open_copy(key) as f:
        assert f.read() == b"rewritten"
    monkeypatch.undo()
    monkeypatch.setattr(backend.fs, "get_file", counted_get)

    cache = backend.cache
    real_path = type(cache).path

    def trimmed_at_once(self, fs, path, etag):  # another process trims the copy before it is opened
        local = real_path(self, fs, path, etag)
        if len(fetched) == 2:
            local.unlink()
        return local

    monkeypatch.setattr(type(cache), "path", trimmed_at_once)
    with backend.open_copy(key) as f:  # fetched again, not a FileNotFoundError
        assert f.read() == b"rewritten"
    assert len(fetched) == 3


# ---- hostile URLs and settings -----------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["s3://bucket-x/../x", "s3://bucket-x/home/../x", "s3://bucket-x/./home",
                                 "s3://bucket-x/a//b"])
def test_a_home_url_with_dot_or_empty_parts_is_refused_in_one_line(s3_home, url):
    """S3 keeps "home/../x" literally (a third prefix, neither home nor x); they were accepted."""
    from crashsearch.lab.errors import UserError
    from crashsearch.lab.settings import resolve_home

    with pytest.raises(UserError, match=r"no empty, '\.' or '\.\.' parts") as err:
        resolve_home(url, create=False)
    assert "\n" not in str(err.value)


def test_one_home_however_its_url_is_spelled(s3_home):
    from crashsearch.lab.settings import resolve_home

    bucket, prefix = s3_home.removeprefix("s3://").split("/", 1)
    homes = {resolve_home(url, create=False) for url in (s3_home, s3_home + "/", f"S3://{bucket}/{prefix}",
                                                          f"s3://{bucket}//{prefix}/")}
    assert len(homes) == 1 and homes.pop().url == s3_home


@pytest.mark.parametrize("raw", ["-5", "nan", "inf", "abc"])
def test_a_bad_read_cache_cap_is_refused_in_one_line(monkeypatch, raw):
    """-5 passed (every copy trimmed at once); nan and inf were internal errors with a traceback file."""
    from crashsearch.lab import storage_s3
    from crashsearch.lab.errors import UserError

    monkeypatch.setenv("CRASHSEARCH_OBJECT_CACHE_MB", raw)
    with pytest.raises(UserError, match="CRASHSEARCH_OBJECT_CACHE_MB") as err:
        storage_s3._cache("s3://bucket/home")
    assert "\n" not in str(err.value)
    monkeypatch.setenv("CRASHSEARCH_OBJECT_CACHE_MB", "0")  # no cache beyond the copy being read: allowed
    assert storage_s3._cache("s3://bucket/home").cap == 0


@pytest.mark.parametrize("bucket", ["bucket!x", "bucket-x:9000", "bucket x"])
def test_a_url_whose_bucket_the_client_would_refuse_is_one_line_not_an_unreachable_endpoint(s3_home, bucket):
    """The client's ParamValidationError read "cannot reach the S3 endpoint ... check the network"."""
    from crashsearch.lab.errors import UserError
    from crashsearch.lab.settings import resolve_home

    with pytest.raises(UserError, match=f"not an S3 bucket name: '{bucket}'"):
        resolve_home(f"s3://{bucket}/home", create=False)


def test_a_read_cache_that_cannot_be_created_is_named_not_taken_for_a_missing_object(backend, monkeypatch):
    """CRASHSEARCH_SCRATCH=/proc/nope: the cache's mkdir failed with ENOENT, which the read reported as the log
    part missing on the store (``status`` and ``query`` ended in an internal error naming the object)."""
    from pathlib import Path

    from crashsearch.lab.errors import UserError
    from crashsearch.lab.storage_s3 import ObjectCache

    table = pa.table({"x": [1]})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    backend.put("campaigns/c1/log/part-1.parquet", sink.getvalue())
    backend.list("campaigns/c1/log/")
    monkeypatch.setattr(backend, "cache", ObjectCache(Path("/proc/nope/objects"), 2 ** 20))
    with pytest.raises(UserError, match="cannot create the local read cache /proc/nope/objects .*CRASHSEARCH_SCRATCH"):
        backend.local_path("campaigns/c1/log/part-1.parquet")


@pytest.mark.parametrize("endpoint", ["notaurl", "http://[::1", "http://127.0.0.1:abc", "ftp://host"])
def test_an_endpoint_url_the_client_cannot_use_is_one_line(monkeypatch, endpoint):
    """"notaurl" and "http://[::1" were internal errors (the client's ValueError); ftp:// read as unreachable."""
    from crashsearch.lab import storage_s3
    from crashsearch.lab.errors import UserError

    monkeypatch.setattr(storage_s3, "_FS", {})  # a fresh client, built from this environment
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    with pytest.raises(UserError, match="AWS_ENDPOINT_URL=.* is not an http"):
        storage_s3.s3_filesystem()
