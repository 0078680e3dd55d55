"""A home on S3 (or an S3-compatible store): the storage seam's object-store backend.

``S3Backend("s3://bucket/prefix")`` implements lab/storage.Backend over s3fs (fsspec), so the
same filesystem object serves the store's writes and DuckDB's reads (``filesystem()``, registered
on a connection with ``con.register_filesystem``). What the seam's guarantees become here:

* ``put`` is one PutObject: S3 makes an object visible whole or not at all (no multipart upload:
  the store's objects are small; one that is not fails rather than being split).
* ``create`` is a PutObject with ``If-None-Match: *``: of two writers racing, S3 lets one win
  (412 Precondition Failed, or 409 for a concurrent one, for the other). ``replace`` is the
  same with ``If-Match: <etag>``; the lease of lab/lease.py is built on these two.
* ``append`` reads the object and its ETag, then puts it back with the line under ``If-Match``
  (``If-None-Match: *`` when absent): a concurrent append makes the PUT fail, and the line is
  read and tried again, up to ``APPEND_TRIES`` times with a short jittered backoff. No line is
  lost or interleaved; each append costs a GET and a PUT of the whole object (the logs appended
  to are small: bug-fix events, diagnoses).
* ``list`` lists the keys under a prefix (S3 listings are strongly consistent); there are no temp
  objects, since nothing is renamed.

Log parts, feature part files and kept heads are read through a local cache (``ObjectCache``,
``open_copy``, ``local_path``): each is written once under a unique name and never changed, so a
copy named by its ETag stays true, and a node fetches each once (what it PUTs itself is kept at
once). DuckDB reads the log parts' local copies by path, with its own file system: reading them
through the registered s3fs filesystem now and then handed the Parquet reader wrong bytes ("don't
know what type", "Payload value bigger than allowed") in a query over many parts. The listing's
ETags and sizes answer the lookups that would each cost a HEAD. The cache is the home's,
``<its scratch folder>/objects`` (so a query's sandbox can allow it and nothing of another home),
capped at ``$CRASHSEARCH_OBJECT_CACHE_MB`` (default 2048 MB), the least recently used copies going
first (never one used in the last minute).

Credentials, region and endpoint come only from the standard environment and AWS config
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL or
AWS_ENDPOINT_URL_S3 for an S3-compatible store, AWS_PROFILE, an instance role): this module never
reads, stores or prints a secret, and a home's URL carries none.
"""
from __future__ import annotations

import errno
import hashlib
import math
import os
import random
import re
import threading
import time
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable
from urllib.parse import urlparse

from crashsearch.lab._io import one_line, publish, temp_beside
from crashsearch.lab.errors import UserError

_FS_LOCK = threading.Lock()
_FS: dict[int, object] = {}  # one s3fs filesystem per process (a forked child builds its own)


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _check_endpoint(url: str) -> None:
    """Raise UserError (one line) unless the endpoint is an http(s) URL: the client's ValueError for one
    it cannot parse ("Invalid endpoint", "Invalid IPv6 URL") was an internal error."""
    name = "AWS_ENDPOINT_URL_S3" if os.environ.get("AWS_ENDPOINT_URL_S3") else "AWS_ENDPOINT_URL"
    try:
        parsed = urlparse(url)
        parsed.port  # noqa: B018  (raises ValueError for a port that is not a number)
        ok = parsed.scheme in ("http", "https") and bool(parsed.hostname)
    except ValueError:
        ok = False
    if not ok:
        shown = url.rpartition("@")[2]  # never echo a secret back
        raise UserError(f"{name}={shown!r} is not an http(s) URL of an S3 endpoint (e.g. http://127.0.0.1:9000)")


def scratch_base() -> Path:
    """Where the local scratch folders of object-store homes live: ``$CRASHSEARCH_SCRATCH``, else
    ``~/.cache/crashsearch/homes`` (``$XDG_CACHE_HOME`` honoured). Each home has ``<base>/<hash of its
    URL>``; ``<base>/objects`` caches the log objects read (this module)."""
    base = os.environ.get("CRASHSEARCH_SCRATCH") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "crashsearch" / "homes"
    return Path(base).expanduser().resolve()


LOG_PART = re.compile(r"/campaigns/[^/]+/log/part-[^/]*\.parquet$")  # written once, never changed
# Every object written once under a unique name and never changed: log parts, feature part files,
# kept heads. A listing's ETag and size for them stay true, so reads skip the HEAD.
WRITTEN_ONCE = re.compile(r"(/campaigns/[^/]+/log/part-[^/]*\.parquet|/cache/[^/]+/[^/]+/[^/]+/part-[^/]*\.parquet"
                          r"|/campaigns/[^/]+/models/[^/]+\.safetensors)$")
CACHE_MB = 2048
IN_USE_SECONDS = 60  # a copy used this recently is not trimmed: DuckDB reads copies by path, after the fetch
_LISTED: dict[str, dict] = {}  # bucket/key of a WRITTEN_ONCE object -> what the last listing said (ETag, size, time)


class ObjectCache:
    """Local copies of immutable objects, named by path hash and ETag, capped in size (LRU)."""

    def __init__(self, folder: Path, cap_bytes: int):
        self.folder, self.cap = folder, cap_bytes
        self._lock = threading.Lock()

    def path(self, fs, path: str, etag: str) -> Path:
        """The local copy of ``bucket/key`` at ``etag``, downloaded first if missing (streamed to a
        temp file beside it, then published whole: a big feature part never sits in memory)."""
        local = self._local(path, etag)
        try:
            os.utime(local)  # recently used: trimmed last
            return local
        except FileNotFoundError:
            pass
        # FileNotFoundError when a compaction removed it: callers list again
        self._publish(local, lambda temp: fs.get_file(path, str(temp)))
        return local

    def keep(self, path: str, etag: str, data: bytes) -> None:
        """Seed the cache with an object this process just wrote, so reading it back costs no GET. Best
        effort: a cache that cannot be written is named when something is read through it."""
        try:
            self._publish(self._local(path, etag), lambda temp: temp.write_bytes(data))
        except (OSError, UserError):
            pass

    def forget(self, path: str) -> None:
        """Remove every copy of ``bucket/key``, whatever its ETag."""
        for copy in self.folder.glob(f"{hashlib.sha256(path.encode()).hexdigest()[:24]}-*"):
            copy.unlink(missing_ok=True)

    def _local(self, path: str, etag: str) -> Path:
        tag = etag.strip('"').replace("/", "_")
        return self.folder / f"{hashlib.sha256(path.encode()).hexdigest()[:24]}-{tag}{PurePosixPath(path).suffix}"

    def _publish(self, local: Path, write: Callable[[Path], object]) -> None:
        """``write(temp)`` a hidden temp file beside ``local``, then publish it as ``local`` and trim."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a FileNotFoundError here read as the object missing on the store (internal error)
            raise UserError(f"cannot create the local read cache {self.folder} ({exc.strerror or exc}); set "
                            f"CRASHSEARCH_SCRATCH to a folder this user can write") from None
        temp = temp_beside(local)
        try:
            write(temp)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        publish(temp, local)
        self._trim(keep=local)

    def open(self, fs, path: str, etag: str | None = None) -> BinaryIO:
        """``bucket/key`` opened from its local copy at ``etag`` (a HEAD asks for the ETag when not given)."""
        for attempt in (1, 2):
            local = self.path(fs, path, etag or fs.info(path)["ETag"])
            try:
                return open(local, "rb")
            except FileNotFoundError:  # another process trimmed it between the two calls: fetch again
                if attempt == 2:
                    raise

    def _trim(self, keep: Path) -> None:
        """Remove the least recently used copies until the cache fits its cap (never ``keep``, being read)."""
        with self._lock:
            files = []
            for entry in os.scandir(self.folder):
                if entry.is_file() and not entry.name.startswith("."):  # hidden: a download under way
                    st = entry.stat()
                    files.append((st.st_mtime, st.st_size, entry.path))
            total = sum(size for _, size, _ in files)
            for mtime, size, path in sorted(files):
                if total <= self.cap:
                    break
                if path == str(keep) or time.time() - mtime < IN_USE_SECONDS:  # a query may be about to read it
                    continue
                try:
                    os.unlink(path)
                    total -= size
                except FileNotFoundError:
                    pass


def scratch_folder(root: str) -> Path:
    """The local scratch folder of the home at ``root`` (its one spelling, ``s3://bucket/prefix``)."""
    return scratch_base() / hashlib.sha256(root.encode()).hexdigest()[:16]


def _cache(root: str) -> ObjectCache:
    """The read cache of the home at ``root``: ``<its scratch folder>/objects``, capped as set."""
    raw = os.environ.get("CRASHSEARCH_OBJECT_CACHE_MB") or str(CACHE_MB)
    try:
        mb = float(raw)
    except ValueError:
        raise UserError(f"CRASHSEARCH_OBJECT_CACHE_MB={raw!r} is not a number of megabytes") from None
    if not (0 <= mb and math.isfinite(mb)):  # nan and inf passed float() and failed later, as internal errors
        raise UserError(f"CRASHSEARCH_OBJECT_CACHE_MB={raw!r}: the read cache's cap is a number of megabytes, 0 or more")
    return ObjectCache(scratch_folder(root) / "objects", int(mb * 2 ** 20))


def _filesystem_class():
    import s3fs

    class CachedS3FileSystem(s3fs.S3FileSystem):
        """s3fs, but a written-once object's details come from the last listing (no HEAD)."""

        async def _info(self, path, *args, **kwargs):
            listed = _LISTED.get(self._strip_protocol(path))
            if listed is not None and not args and not kwargs.get("version_id"):
                return dict(listed)
            return await super()._info(path, *args, **kwargs)

    return CachedS3FileSystem


def s3_filesystem():
    """The process's s3fs filesystem, configured from the environment; listings are never cached
    (another worker's new log file must show at the next listing)."""
    try:
        cls = _filesystem_class()
    except ImportError:  # a runtime dependency; only a broken install lacks it
        raise UserError("an s3:// home needs the s3fs package (pip install s3fs)") from None
    with _FS_LOCK:
        fs = _FS.get(os.getpid())
        if fs is None:
            kwargs = {}
            if _endpoint():  # botocore reads AWS_ENDPOINT_URL too; named here for older botocore
                _check_endpoint(_endpoint())
                kwargs["endpoint_url"] = _endpoint()
            fs = cls(use_listings_cache=False, skip_instance_cache=True, client_kwargs=kwargs)
            _FS[os.getpid()] = fs
        return fs


def _code(exc: BaseException) -> str:
    """The S3 error code behind an exception s3fs raised ("" when it is not an S3 error)."""
    for err in (exc, exc.__cause__, exc.__context__):
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            error = response.get("Error", {})
            return str(error.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return ""


_REFUSED = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
# what the S3 client accepts as a bucket (botocore's check: legacy names with capitals and underscores included);
# anything else it refused as a ParamValidationError, which read as an unreachable endpoint
BUCKET_NAME = re.compile(r"[a-zA-Z0-9.\-_]{1,255}")


class S3Location:
    """Where a home under ``s3://bucket/prefix`` is, and how a request for one of its keys is made: the
    URL checked, keys mapped under the prefix, and the client's errors turned into the project's (a
    missing bucket, refused credentials and an unreachable endpoint are the user's setup, one line)."""

    def __init__(self, url: str):
        parsed = urlparse(str(url))
        if parsed.scheme != "s3" or not parsed.netloc:
            raise UserError(f"not an S3 home URL: {url} (expected s3://bucket/prefix)")
        if parsed.query or parsed.fragment or "@" in parsed.netloc:
            shown = f"s3://{parsed.netloc.rpartition('@')[2]}{parsed.path}"  # never echo a secret back
            raise UserError(f"an S3 home URL is s3://bucket/prefix, with no credentials or options "
                            f"(credentials come from AWS_*): {shown}")
        if not BUCKET_NAME.fullmatch(parsed.netloc):
            raise UserError(f"not an S3 bucket name: {parsed.netloc!r} in {url} (letters, digits, '.', '-' and '_'; "
                            f"no port: the endpoint comes from AWS_ENDPOINT_URL)")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        if self.prefix and any(part in ("", ".", "..") for part in self.prefix.split("/")):
            # S3 keeps them literally ("home/../x" is not "x"), but a client that reads the catalog's URLs may not
            raise UserError(f"an S3 home URL's prefix has no empty, '.' or '..' parts: s3://{self.bucket}/{self.prefix}")
        self.root = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.fs = s3_filesystem()
        self.cache = _cache(self.root)

    # ---- keys -------------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/") or not key:
            raise ValueError(f"bad storage key {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _path(self, key: str) -> str:
        return f"{self.bucket}/{self._key(key)}"

    def url(self, key: str) -> str:
        self._key(key)  # refuses a bad key
        return f"{self.root}/{key}"

    def attach(self, con) -> None:
        """Let DuckDB connection ``con`` read this home's s3:// URLs (through the same filesystem)."""
        con.register_filesystem(self.fs)

    def _writer(self):
        """The filesystem writes go through (the process's; a test swaps in an unreachable one)."""
        return self.fs

    def _call(self, method: str, **kwargs) -> dict:
        fs = self._writer() if method in ("put_object", "delete_object") else self.fs
        try:
            return fs.call_s3(method, Bucket=self.bucket, **kwargs)
        except FileNotFoundError as exc:  # s3fs reports a missing bucket as a missing file: the user's URL
            if _code(exc) == "NoSuchBucket" or "bucket does not exist" in str(exc):
                raise UserError(f"the bucket {self.bucket} does not exist (home {self.root}): create it, or check "
                                f"the URL and AWS_ENDPOINT_URL") from None
            raise
        except PermissionError as exc:  # 403: credentials wrong or expired, or the bucket's policy (no secret in it)
            raise OSError(errno.EACCES, f"the S3 store refused access ({_code(exc) or 'AccessDenied'}); check the "
                          f"credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE) "
                          f"and the bucket's policy", f"s3://{self.bucket}/{kwargs.get('Key') or kwargs.get('Prefix', '')}") from exc
        except (OSError, ValueError):
            raise
        except Exception as exc:  # botocore's connection and timeout errors: the network, not the code
            if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
                raise UserError(f"no AWS credentials for the home {self.root}: set AWS_ACCESS_KEY_ID and "
                                f"AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (an instance role serves too)") from None
            if type(exc).__module__.startswith(("botocore", "aiobotocore", "aiohttp")):
                where = _endpoint() or "AWS"
                raise OSError(errno.EHOSTUNREACH, f"cannot reach the S3 endpoint {where} ({type(exc).__name__}); "
                              f"check AWS_ENDPOINT_URL and the network",
                              f"s3://{self.bucket}/{kwargs.get('Key', '')}") from exc
            raise

class S3Backend(S3Location):
    """A home under ``s3://bucket/prefix``: lab/storage.Backend over S3 requests (module docstring).
    Keys are relative to the prefix."""

    APPEND_TRIES = 25  # conditional PUTs per append before giving up: each lost race means another append landed
    APPEND_BACKOFF = 0.02  # seconds: the first retry's mean wait, doubling per try up to one second

    # ---- the Backend protocol ---------------------------------------------------------------------------
    def list(self, prefix: str) -> list[str]:
        base = self._key(prefix.rstrip("/")) if prefix.strip("/") else self.prefix
        start = f"{base}/" if base else ""
        keys = []
        token = None
        while True:
            kwargs = {"Prefix": start, **({"ContinuationToken": token} if token else {})}
            page = self._call("list_objects_v2", **kwargs)
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix) + 1:] if self.prefix else item["Key"]
                if key and not key.endswith("/"):
                    keys.append(key)
                    path = f"{self.bucket}/{item['Key']}"
                    if WRITTEN_ONCE.search("/" + path):  # immutable: what the listing says stays true
                        _LISTED[path] = {"name": path, "type": "file", "size": item["Size"], "ETag": item["ETag"],
                                         "LastModified": item["LastModified"], "Key": path, "Size": item["Size"]}
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return sorted(keys)

    def folders(self, prefix: str) -> list[str]:
        """The names under ``prefix`` that hold objects (the common prefixes of a delimiter listing)."""
        base = self._key(prefix.rstrip("/")) if prefix.strip("/") else self.prefix
        start = f"{base}/" if base else ""
        names, token = set(), None
        while True:
            kwargs = {"Prefix": start, "Delimiter": "/", **({"ContinuationToken": token} if token else {})}
            page = self._call("list_objects_v2", **kwargs)
            names.update(p["Prefix"][len(start):].rstrip("/") for p in page.get("CommonPrefixes", []))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return sorted(n for n in names if n)

    def read(self, key: str) -> bytes:
        """The object's bytes from the bucket itself, never a local copy: what is quarantined, copied or
        judged is the object, not this disk's copy of it."""
        return self.read_tagged(key)[0]

    def forget_copy(self, key: str) -> None:
        """Remove this node's copies of ``key`` from the read cache: the next read fetches it again (a
        copy damaged on this disk is not the object's damage). Not part of the protocol."""
        self.cache.forget(self._path(key))

    def open_copy(self, key: str) -> BinaryIO:
        """``key`` from the home's read cache (fetched once per ETag; the last listing's ETag, else a HEAD)."""
        path = self._path(key)
        try:
            return self.cache.open(self.fs, path, (_LISTED.get(path) or {}).get("ETag"))
        except FileNotFoundError:
            _LISTED.pop(path, None)
            raise FileNotFoundError(self.url(key)) from None

    def local_path(self, key: str) -> str:
        """The path of ``key``'s copy in the home's read cache (fetched first if missing), for DuckDB."""
        path = self._path(key)
        try:
            return str(self.cache.path(self.fs, path, (_LISTED.get(path) or {}).get("ETag") or self.fs.info(path)["ETag"]))
        except FileNotFoundError:
            _LISTED.pop(path, None)
            raise FileNotFoundError(self.url(key)) from None

    def read_tagged(self, key: str) -> tuple[bytes, str]:
        """The bytes of ``key`` and their ETag; FileNotFoundError if absent."""
        try:
            response = self._call("get_object", Key=self._key(key))
        except FileNotFoundError:
            raise FileNotFoundError(self.url(key)) from None
        return _read_body(self.fs, response["Body"]), response["ETag"]

    def put(self, key: str, data: bytes) -> None:
        etag = self._call("put_object", Key=self._key(key), Body=bytes(data))["ETag"]
        path = self._path(key)
        if WRITTEN_ONCE.search("/" + path):  # the writer reads it back next
            self.cache.keep(path, etag, data)

    def create(self, key: str, data: bytes) -> bool:
        return self.create_tagged(key, data) is not None

    def create_tagged(self, key: str, data: bytes) -> str | None:
        """Create ``key`` only if absent (If-None-Match: *); its ETag, or None when it exists."""
        return self._conditional(key, data, IfNoneMatch="*")

    def replace(self, key: str, data: bytes, tag: str) -> str | None:
        """Overwrite ``key`` only if its ETag is still ``tag`` (If-Match); the new ETag, or None."""
        return self._conditional(key, data, IfMatch=tag)

    def _conditional(self, key: str, data: bytes, **condition) -> str | None:
        try:
            return self._call("put_object", Key=self._key(key), Body=bytes(data), **condition)["ETag"]
        except (OSError, ValueError) as exc:
            if _code(exc) in _REFUSED:
                return None
            if "IfMatch" in condition and isinstance(exc, FileNotFoundError):  # gone: not ours any more
                return None
            raise

    def append(self, key: str, line: bytes | str) -> None:
        data = one_line(line)
        for attempt in range(self.APPEND_TRIES):
            try:
                old, tag = self.read_tagged(key)
            except FileNotFoundError:
                old, tag = b"", None
            if old and not old.endswith(b"\n"):  # a last line without its newline (a hand edit)
                old += b"\n"
            new = old + data
            if (self.create_tagged(key, new) if tag is None else self.replace(key, new, tag)) is not None:
                return
            if attempt < self.APPEND_TRIES - 1:
                # another appender got there first: read its line too, after a jittered wait so that
                # the losers of one race do not all meet again at the next
                time.sleep(random.uniform(0.5, 1.5) * min(1.0, self.APPEND_BACKOFF * 2 ** attempt))
        raise OSError(errno.EAGAIN, f"could not append a line after {self.APPEND_TRIES} tries: other writers kept "
                      f"changing it", self.url(key))

    def delete(self, key: str) -> None:
        _LISTED.pop(self._path(key), None)
        try:
            self._call("delete_object", Key=self._key(key))
        except FileNotFoundError:
            pass

    def delete_if(self, key: str, tag: str) -> bool | None:
        """Delete ``key`` only if its ETag is ``tag`` (DeleteObject with If-Match): True; False when
        it is gone or another; None when the store refuses the condition (NotImplemented)."""
        try:
            self._call("delete_object", Key=self._key(key), IfMatch=tag)
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as exc:
            code = _code(exc)
            if code in _REFUSED:
                return False
            if code in ("NotImplemented", "501"):
                return None
            raise
        return True

    def exists(self, key: str) -> bool:
        try:
            self._call("head_object", Key=self._key(key))
        except FileNotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        listed = _LISTED.get(self._path(key))
        if listed is not None:  # written once: its size cannot change
            return int(listed["size"])
        try:
            return int(self._call("head_object", Key=self._key(key))["ContentLength"])
        except FileNotFoundError:
            raise FileNotFoundError(self.url(key)) from None

    def mtime(self, key: str) -> float:
        listed = _LISTED.get(self._path(key))
        if listed is not None:  # a log part: its time cannot change
            return listed["LastModified"].timestamp()
        try:
            modified = self._call("head_object", Key=self._key(key))["LastModified"]
        except FileNotFoundError:
            raise FileNotFoundError(self.url(key)) from None
        return modified.timestamp() if isinstance(modified, datetime) else float(modified)


def _read_body(fs, body) -> bytes:
    """Read an aiobotocore streaming body on s3fs's event loop."""
    from fsspec.asyn import sync

    async def read() -> bytes:
        async with body:
            return await body.read()

    return sync(fs.loop, read)
