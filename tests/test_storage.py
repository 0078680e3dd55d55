"""The storage seam (lab/storage.py): the contract every backend keeps, the store's I/O through it,
and one atomic-write helper (no module renames a file into place but lab/_io.py)."""
from __future__ import annotations

import ast
import errno
import threading
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import crashsearch.lab._io as io_module
from crashsearch.lab.storage import Backend, LocalBackend, backend_for
from crashsearch.lab.logfiles import append_line
from crashsearch.lab.store import Store
from crashsearch.lab.storage_s3 import S3Backend
from test_store import make_rows

REPO = Path(__file__).resolve().parent.parent


# ---- the backends under test ----------------------------------------------------------------------
# One case per backend: how to make one, how to make its writes fail, what a writer killed mid-write
# leaves, and a DuckDB connection that reads its URLs. An object-store backend adds its case here.

class LocalCase:
    name = "local"

    def make(self, tmp_path: Path) -> Backend:
        return LocalBackend(tmp_path / "root")

    @contextmanager
    def failing_writes(self, monkeypatch):
        """Writes fail after the bytes are written, before they are published (an I/O error at fsync)."""
        def broken_fsync(fd):
            raise OSError(errno.EIO, "Input/output error")

        with monkeypatch.context() as m:
            m.setattr(io_module.os, "fsync", broken_fsync)
            yield

    def killed_write(self, backend: LocalBackend, key: str, data: bytes) -> None:
        """What a writer killed between its write and its rename leaves: a hidden temp file."""
        final = backend.root / key
        final.parent.mkdir(parents=True, exist_ok=True)
        io_module.temp_beside(final).write_bytes(data)

    def duckdb(self) -> duckdb.DuckDBPyConnection:
        return duckdb.connect(":memory:")


class S3Case:
    """lab/storage_s3.py against moto in server mode on 127.0.0.1 (tests/s3_server.py)."""
    name = "s3"

    def make(self, tmp_path: Path, request=None) -> Backend:
        return backend_for(request.getfixturevalue("s3_home"))

    @contextmanager
    def failing_writes(self, monkeypatch):
        """The store cannot be reached: requests go to a port where nothing listens, without retries."""
        import s3fs

        from tests.s3_server import free_port

        dead = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False,
                                 client_kwargs={"endpoint_url": f"http://127.0.0.1:{free_port()}"},
                                 config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 2})
        with monkeypatch.context() as m:
            m.setattr(S3Backend, "_writer", lambda self: dead)
            yield

    def killed_write(self, backend, key: str, data: bytes) -> None:
        """What a writer killed mid-upload leaves on S3: an unfinished upload, which lists as nothing."""
        bucket, path = backend.bucket, backend._key(key)
        upload = backend.fs.call_s3("create_multipart_upload", Bucket=bucket, Key=path)
        backend.fs.call_s3("upload_part", Bucket=bucket, Key=path, UploadId=upload["UploadId"], PartNumber=1, Body=data)

    def duckdb(self) -> duckdb.DuckDBPyConnection:
        from crashsearch.lab.storage_s3 import s3_filesystem

        con = duckdb.connect(":memory:")
        con.register_filesystem(s3_filesystem())
        return con


BACKENDS = [LocalCase(), S3Case()]


@pytest.fixture(params=BACKENDS, ids=lambda case: case.name)
def case(request):
    return request.param


@pytest.fixture
def backend(case, tmp_path, request):
    return case.make(tmp_path) if isinstance(case, LocalCase) else case.make(tmp_path, request)


def _in_threads(target, n: int) -> None:
    """Run ``target(i)`` for i < n, each in a thread of its own, all at once; wait for every one."""
    workers = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


# ---- the contract ----------------------------------------------------------------------------------

def test_a_backend_is_the_protocol(backend):
    assert isinstance(backend, Backend)


def test_put_read_list_exists_mtime_delete(backend):
    backend.put("campaigns/b/log/part-2.parquet", b"two")
    backend.put("campaigns/a/campaign.json", b"{}")
    backend.put("campaigns/b/log/part-1.parquet", b"one")
    backend.put("other/x", b"x")
    assert backend.list("campaigns/") == ["campaigns/a/campaign.json", "campaigns/b/log/part-1.parquet",
                                          "campaigns/b/log/part-2.parquet"]
    assert backend.list("campaigns/b/log/") == ["campaigns/b/log/part-1.parquet", "campaigns/b/log/part-2.parquet"]
    assert backend.list("campaigns/c/") == []
    assert backend.read("campaigns/b/log/part-1.parquet") == b"one"
    assert backend.exists("other/x") and not backend.exists("other/y")
    assert backend.mtime("other/x") > 0
    assert backend.size("other/x") == 1 and backend.size("campaigns/b/log/part-2.parquet") == 3
    backend.put("other/x", b"replaced")
    assert backend.read("other/x") == b"replaced"
    backend.delete("other/x")
    backend.delete("other/x")  # a missing key is not an error
    assert not backend.exists("other/x") and backend.list("other/") == []
    with pytest.raises(FileNotFoundError):
        backend.read("other/x")
    with pytest.raises(FileNotFoundError):
        backend.mtime("other/x")
    with pytest.raises(FileNotFoundError):
        backend.size("other/x")


def test_open_copy_reads_an_object_from_local_disk(backend):
    backend.put("cache/ds/pixels/k/part-00000-a.parquet", b"features")
    with backend.open_copy("cache/ds/pixels/k/part-00000-a.parquet") as f:
        assert f.read() == b"features"
    with backend.open_copy("cache/ds/pixels/k/part-00000-a.parquet") as f:  # a second read: the same bytes
        assert f.read() == b"features"
    with pytest.raises(FileNotFoundError):
        backend.open_copy("cache/ds/pixels/k/part-00001-b.parquet")
    assert Path(backend.local_path("cache/ds/pixels/k/part-00000-a.parquet")).read_bytes() == b"features"
    with pytest.raises(FileNotFoundError):
        backend.local_path("cache/ds/pixels/k/part-00001-b.parquet")


def test_folders_are_the_names_directly_under_a_prefix(backend):
    backend.put("campaigns/b/log/part-1.parquet", b"one")
    backend.put("campaigns/a/campaign.json", b"{}")
    backend.put("campaigns/top.txt", b"not a folder")
    assert backend.folders("campaigns/") == ["a", "b"]
    assert backend.folders("campaigns/b/") == ["log"]
    assert backend.folders("campaigns/a/") == [] and backend.folders("nothing/") == []


def test_a_failing_put_leaves_the_old_object_and_nothing_listed(case, backend, monkeypatch):
    backend.put("c/log/part-1.parquet", b"old")
    with case.failing_writes(monkeypatch), pytest.raises(OSError):
        backend.put("c/log/part-1.parquet", b"new")
    with case.failing_writes(monkeypatch), pytest.raises(OSError):
        backend.put("c/log/part-2.parquet", b"new")
    assert backend.read("c/log/part-1.parquet") == b"old"
    assert backend.list("c/") == ["c/log/part-1.parquet"]
    assert not backend.exists("c/log/part-2.parquet")


def test_a_killed_writer_leaves_nothing_listed(case, backend):
    backend.put("c/log/part-1.parquet", b"one")
    case.killed_write(backend, "c/log/part-2.parquet", b"half")
    case.killed_write(backend, "c/campaign.json", b"{")
    assert backend.list("c/") == ["c/log/part-1.parquet"]
    assert not backend.exists("c/log/part-2.parquet")


def test_create_is_exclusive_under_a_race(backend):
    threads, barrier, won = 16, threading.Barrier(16), []

    def racer(i: int) -> None:
        barrier.wait()
        if backend.create("c/lease", f"writer {i}".encode()):
            won.append(i)

    _in_threads(racer, threads)
    assert len(won) == 1
    assert backend.read("c/lease") == f"writer {won[0]}".encode()  # whole, and the winner's
    assert backend.list("c/") == ["c/lease"]  # the losers left nothing behind
    assert backend.create("c/lease", b"late") is False and backend.read("c/lease") == f"writer {won[0]}".encode()


def test_append_keeps_every_line_in_order(backend):
    backend.append("c/events.jsonl", '{"a": 1}')
    backend.append("c/events.jsonl", b'{"b": 2}\n')
    assert backend.read("c/events.jsonl") == b'{"a": 1}\n{"b": 2}\n'
    backend.put("c/hand.jsonl", b'{"a": 1}')  # a last line without its newline (a hand edit)
    backend.append("c/hand.jsonl", '{"b": "\u00e9"}')
    assert backend.read("c/hand.jsonl").decode() == '{"a": 1}\n{"b": "\u00e9"}\n'
    with pytest.raises(ValueError, match="newline inside"):
        backend.append("c/events.jsonl", "two\nlines")
    assert backend.read("c/events.jsonl") == b'{"a": 1}\n{"b": 2}\n'
    with pytest.raises(ValueError):
        backend.append("../outside", "x")


APPENDERS = 6
APPENDS_EACH = {"local": 40, "s3": 5}  # each s3 append is a GET and a PUT of the whole object


def _line(i: int, j: int) -> str:
    """Writer i's line j: lengths up to 3 kB, so that local writes cross page boundaries."""
    return f"writer {i} line {j} " + "x" * (200 + (i * 997 + j * 1709) % 2800)


def test_concurrent_appends_lose_no_line_and_interleave_none(case, backend, monkeypatch):
    """Appenders racing on one object (threads here; processes and machines alike, the guarantee is the
    store's): every line lands whole. On S3 the races are real conditional PUTs refused by the server."""
    refused = []
    if case.name == "s3":
        real = type(backend).replace

        def replace(self, key, data, tag):  # counts the races lost, so the test knows they happened
            out = real(self, key, data, tag)
            if out is None:
                refused.append(key)
            return out

        monkeypatch.setattr(type(backend), "replace", replace)
    backend.append("c/events.jsonl", "first")
    barrier = threading.Barrier(APPENDERS)
    errors = []

    def appender(i: int) -> None:
        barrier.wait()
        try:
            for j in range(APPENDS_EACH[case.name]):
                backend.append("c/events.jsonl", _line(i, j))
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    _in_threads(appender, APPENDERS)
    assert errors == []
    lines = backend.read("c/events.jsonl").decode().split("\n")
    assert lines[0] == "first" and lines[-1] == ""
    expected = [_line(i, j) for i in range(APPENDERS) for j in range(APPENDS_EACH[case.name])]
    assert sorted(lines[1:-1]) == sorted(expected)  # none lost, none twice, none torn, no blank line
    for i in range(APPENDERS):  # each writer's lines in the order it appended them
        mine = [ln for ln in lines if ln.startswith(f"writer {i} ")]
        assert mine == [_line(i, j) for j in range(APPENDS_EACH[case.name])]
    if case.name == "s3":
        assert refused, "no append lost a race: the test raced nothing"


def test_an_s3_append_that_keeps_losing_its_race_fails_naming_the_key(request, monkeypatch):
    backend = S3Case().make(None, request)
    backend.append("c/events.jsonl", "first")
    monkeypatch.setattr(S3Backend, "APPEND_TRIES", 3)
    monkeypatch.setattr(S3Backend, "APPEND_BACKOFF", 0.0)
    real_read, tries = S3Backend.read_tagged, []

    def read_tagged(self, key):  # another writer appends between each read and its conditional PUT
        data, tag = real_read(self, key)
        tries.append(key)
        self.put(key, data + f"other {len(tries)}\n".encode())
        return data, tag

    monkeypatch.setattr(S3Backend, "read_tagged", read_tagged)
    with pytest.raises(OSError, match="could not append a line after 3 tries") as raised:
        backend.append("c/events.jsonl", "mine")
    assert raised.value.filename == backend.url("c/events.jsonl") and len(tries) == 3
    monkeypatch.setattr(S3Backend, "read_tagged", real_read)
    assert real_read(backend, "c/events.jsonl")[0] == b"first\nother 1\nother 2\nother 3\n"  # theirs kept, not ours


def test_a_local_append_to_a_fifo_fails_at_once(tmp_path):
    import os

    (tmp_path / "c").mkdir()
    os.mkfifo(tmp_path / "c" / "events.jsonl")  # opening it for writing would wait for a reader forever
    with pytest.raises(OSError, match="not a regular file"):
        LocalBackend(tmp_path).append("c/events.jsonl", "x")


def test_duckdb_reads_an_object_by_its_url(case, backend):
    import io

    buffer = io.BytesIO()
    pq.write_table(pa.table({"x": [1, 2, 3]}), buffer)
    backend.put("campaigns/c/log/part-1.parquet", buffer.getvalue())
    con = case.duckdb()
    try:
        url = backend.url("campaigns/c/log/part-1.parquet")
        assert con.execute("SELECT sum(x) FROM read_parquet(?)", [url]).fetchone()[0] == 6
    finally:
        con.close()


@pytest.mark.parametrize("key", ["/etc/passwd", "../outside", "campaigns/../../outside", "a/../../b"])
def test_bad_keys_are_refused(backend, key):
    for call in (lambda: backend.put(key, b"x"), lambda: backend.create(key, b"x"), lambda: backend.read(key),
                 lambda: backend.delete(key), lambda: backend.exists(key), lambda: backend.url(key),
                 lambda: backend.append(key, "x")):
        with pytest.raises(ValueError):
            call()


# ---- the local backend and the store over the seam --------------------------------------------------

def test_backend_for_a_path_is_local(tmp_path):
    assert isinstance(backend_for(tmp_path), LocalBackend)


@pytest.mark.parametrize("url, says", [("gs://bucket/home", "gs:// homes are not supported yet"),
                                       ("ftp://host/home", "no storage backend for ftp://host/home")])
def test_a_home_url_without_a_backend_is_one_line(url, says):
    from crashsearch.lab.errors import UserError

    with pytest.raises(UserError, match=says):
        backend_for(url)


def test_a_failing_local_put_removes_its_temp_file(tmp_path, monkeypatch):
    backend = LocalBackend(tmp_path)
    with LocalCase().failing_writes(monkeypatch), pytest.raises(OSError) as raised:
        backend.put("c/state.json", b"{}")
    assert raised.value.filename == str(tmp_path / "c" / "state.json")  # the error names the file
    assert list((tmp_path / "c").iterdir()) == []


def test_a_local_read_of_a_fifo_fails_at_once(tmp_path):
    import os

    (tmp_path / "c").mkdir()
    os.mkfifo(tmp_path / "c" / "campaign.json")  # reading it would wait for a writer forever
    with pytest.raises(OSError, match="not a regular file"):
        LocalBackend(tmp_path).read("c/campaign.json")


class Recording:
    """A backend that records the calls the store makes through it (to a real LocalBackend)."""

    def __init__(self, inner: Backend):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        method = getattr(self.inner, name)

        def call(*args):
            self.calls.append((name, args[0] if args else None))
            return method(*args)
        return call


def test_the_store_does_its_io_through_its_backend(home, space):
    backend = Recording(LocalBackend(home.root))
    store = Store(home, backend=backend)
    store.write_campaign("c1", {"space": space.name})
    for i in range(3):
        store.append("c1", make_rows(space, 2, start=2 * i), space)
    parts = [key for name, key in backend.calls if name == "put" and key.startswith("campaigns/c1/log/part-")]
    assert len(parts) == 3 and ("put", "campaigns/c1/campaign.json") in backend.calls
    backend.calls.clear()
    assert store.compact("c1") == (3, 6)
    merged = [key for name, key in backend.calls if name == "put"]
    assert len(merged) == 1 and merged[0].endswith(".merged.parquet")  # put first, then the deletes
    assert sorted(key for name, key in backend.calls if name == "delete") == sorted(parts)
    assert [c for c in backend.calls if c[0] == "delete"] == backend.calls[-3:]
    assert store.log_keys("c1") == merged and len(store.experiments("c1")) == 6
    assert [c["id"] for c in store.campaigns()] == ["c1"]


def test_append_line_keeps_every_line(tmp_path):
    backend = LocalBackend(tmp_path)
    backend.put("c/diagnoses.jsonl", b'{"a": 1}')  # a last line without its newline
    append_line(backend, "c/diagnoses.jsonl", '{"b": 2}')
    append_line(backend, "c/diagnoses.jsonl", '{"c": 3}\n')
    assert backend.read("c/diagnoses.jsonl") == b'{"a": 1}\n{"b": 2}\n{"c": 3}\n'


# ---- one atomic-write helper ------------------------------------------------------------------------

PACKAGE = ["lab", "tasks", "flows", "analysis", "agents", "models", "api.py", "__init__.py", "__main__.py"]
# Renames that are not a file written in place, each named with why:
RENAME_EXCEPTIONS = {
    ("flows/champion.py", "nightly_champion"): "swaps a whole package folder (two folder renames)",
    ("tasks/champion.py", "fetch_package"): "publishes a whole fetched package folder (one folder rename)",
}


def _renames(path: Path) -> list[tuple[str, int]]:
    """(enclosing function, line) of each os.replace/os.rename call and each one-argument
    ``.rename(x)``/``.replace(x)`` call (Path's; str.replace takes two, DataFrame.rename keywords)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute):
                attr, owner = child.func.attr, child.func.value
                if attr in ("replace", "rename") and isinstance(owner, ast.Name) and owner.id == "os":
                    found.append((function, child.lineno))
                elif attr in ("replace", "rename") and len(child.args) == 1 and not child.keywords:
                    found.append((function, child.lineno))
            visit(child, name)

    visit(tree, "<module>")
    return found


def test_no_module_renames_a_file_into_place_but_the_atomic_writer():
    files = []
    for entry in PACKAGE:
        root = REPO / entry
        files += [root] if root.is_file() else sorted(root.rglob("*.py"))
    offenders, excepted = [], set()
    for path in files:
        rel = path.relative_to(REPO).as_posix()
        if rel == "lab/_io.py":
            continue
        for function, line in _renames(path):
            if (rel, function) in RENAME_EXCEPTIONS:
                excepted.add((rel, function))
            else:
                offenders.append(f"{rel}:{line} in {function}")
    assert offenders == [], "write files through lab/_io.atomic_write (or publish), not a rename: " + ", ".join(offenders)
    assert excepted == set(RENAME_EXCEPTIONS)  # an exception that no longer applies is removed from the list
