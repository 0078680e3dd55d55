"""One writer per campaign on object storage: the lease of lab/lease.py against a real S3 API (moto)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

HOLDER = """
import sys, time
from crashsearch.lab.lease import ObjectLease
from crashsearch.lab.storage import backend_for
lease = ObjectLease(backend_for(sys.argv[1]), "c1", ttl=float(sys.argv[2])).acquire()
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def backend(s3_home):
    from crashsearch.lab.storage import backend_for

    return backend_for(s3_home)


def _hold(s3_home: str, ttl: float) -> subprocess.Popen:
    """Another writer: a process that takes the lease of campaign c1 and keeps it until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, s3_home, str(ttl)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _lease(backend) -> dict:
    return json.loads(backend.read("campaigns/c1/lease.json"))


def test_a_second_writer_is_refused_with_the_holders_name_and_gets_it_once_released(backend, s3_home):
    from crashsearch.lab.lease import ObjectLease
    from crashsearch.lab.lock import CampaignBusy

    proc = _hold(s3_home, ttl=30)
    try:
        with pytest.raises(CampaignBusy, match=f"pid {proc.pid}"):
            ObjectLease(backend, "c1", ttl=30).acquire()
        assert _lease(backend)["pid"] == proc.pid  # the refused writer changed nothing
    finally:
        proc.terminate()  # no finally runs in the holder: its lease stays behind, like a crash
        proc.wait()
    with ObjectLease(backend, "c1", ttl=30) as lease:  # its pid is dead on this host: free at once
        assert lease.previous["pid"] == proc.pid
        assert _lease(backend)["pid"] == os.getpid()
        with ObjectLease(backend, "c1") as again:  # re-entrant within one process
            assert again is lease
        assert backend.exists("campaigns/c1/lease.json")
    assert not backend.exists("campaigns/c1/lease.json")  # released: no ghost campaign left behind


def _foreign(backend, expires_in: float) -> None:
    """A lease held by a writer on another host (its pid means nothing here), expiring in ``expires_in`` s."""
    record = {"host": "gpu-node-7", "pid": 4242, "since": "2026-12-06T00:00:00+00:00",
              "expires": time.time() + expires_in, "ttl": 60}
    backend.put("campaigns/c1/lease.json", json.dumps(record).encode())


def test_a_live_lease_of_another_host_is_refused_and_taken_over_once_it_has_expired(backend):
    from crashsearch.lab.lease import ObjectLease
    from crashsearch.lab.lock import CampaignBusy

    _foreign(backend, expires_in=60)
    with pytest.raises(CampaignBusy, match="host gpu-node-7 pid 4242"):
        ObjectLease(backend, "c1").acquire()
    _foreign(backend, expires_in=-1)  # its holder stopped renewing a second ago
    with ObjectLease(backend, "c1", ttl=30) as lease:
        assert lease.previous["host"] == "gpu-node-7"
        assert _lease(backend)["host"] == socket.gethostname()


def test_of_two_writers_taking_over_one_stale_lease_only_one_wins(backend):
    from crashsearch.lab.lease import ObjectLease

    _foreign(backend, expires_in=-1)
    _, stale_tag = backend.read_tagged("campaigns/c1/lease.json")
    first = ObjectLease(backend, "c1", ttl=30).acquire()  # read the stale lease, replaced it on its ETag
    try:
        # a second writer that read the same stale lease before the first won: its overwrite is refused
        assert backend.replace("campaigns/c1/lease.json", b'{"host": "late"}', stale_tag) is None
        assert _lease(backend)["pid"] == os.getpid()
    finally:
        first.release()


def test_the_holder_renews_its_lease_past_its_first_expiry(backend, s3_home):
    proc = _hold(s3_home, ttl=3)  # renewed every second
    try:
        first = _lease(backend)["expires"]
        deadline = time.time() + 30
        while _lease(backend)["expires"] <= first + 2 and time.time() < deadline:
            time.sleep(0.2)
        assert _lease(backend)["expires"] > first + 2  # renewed at least twice
        assert _lease(backend)["pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_a_holder_whose_lease_was_taken_over_stops_writing(backend):
    from crashsearch.lab.lease import LeaseLost, ObjectLease

    lease = ObjectLease(backend, "c1", ttl=1.5).acquire()
    try:
        _foreign(backend, expires_in=60)  # another writer took it (this one had stalled past its expiry)
        deadline = time.time() + 30
        while not lease.lost.is_set() and time.time() < deadline:
            time.sleep(0.1)
        with pytest.raises(LeaseLost):
            lease.check()
    finally:
        lease.release()
    assert _lease(backend)["host"] == "gpu-node-7"  # releasing a lost lease leaves the new holder's alone


def test_an_s3_home_resolves_to_its_url_and_a_local_scratch_folder_and_gets_a_lease(s3_home, tmp_path, monkeypatch):
    from crashsearch.lab.errors import UserError
    from crashsearch.lab.lease import ObjectLease, campaign_lock
    from crashsearch.lab.lock import CampaignLock
    from crashsearch.lab.settings import check_home, resolve_home

    monkeypatch.setenv("CRASHSEARCH_SCRATCH", str(tmp_path / "scratch"))
    home = resolve_home(s3_home + "/")
    assert home.url == s3_home and home.location == s3_home
    assert home.root.parent == tmp_path / "scratch" and home.root.is_dir()
    assert resolve_home(s3_home).root == home.root  # one scratch folder per home
    assert isinstance(campaign_lock(home, "c1"), ObjectLease)
    assert isinstance(campaign_lock(resolve_home(tmp_path / "h"), "c1"), CampaignLock)
    with pytest.raises(UserError, match="no campaigns"):
        check_home(resolve_home(s3_home, create=False))
    for bad in ("gs://bucket/p", "s3:///p", "s3://key:secret@bucket/p"):
        with pytest.raises(UserError):
            resolve_home(bad)


def test_the_store_refuses_a_write_from_a_run_whose_lease_was_taken_over(s3_home, backend):
    from crashsearch.lab.lease import LeaseLost, campaign_lock
    from crashsearch.lab.settings import resolve_home
    from crashsearch.lab.space import Space
    from crashsearch.lab.store import Store

    home = resolve_home(s3_home)
    store, space = Store(home), Space.load()
    lease = campaign_lock(home, "c1")
    lease.ttl = 1.5  # renewed every half second
    lease.acquire()
    try:
        store.append("c1", [{"experiment_id": "e1", "cell_id": 1, "status": "ok", "val_ap": 0.5}], space)
        _foreign(backend, expires_in=60)  # another writer took it over
        deadline = time.time() + 30
        while not lease.lost.is_set() and time.time() < deadline:
            time.sleep(0.1)
        with pytest.raises(LeaseLost):
            store.append("c1", [{"experiment_id": "e2", "cell_id": 2, "status": "ok", "val_ap": 0.5}], space)
    finally:
        lease.release()
    assert list(store.experiments("c1")["experiment_id"]) == ["e1"]  # nothing written after the loss


# ---- hostile settings ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", ["0", "0.5", "-3", "abc", "nan", "inf", "1e12"])
def test_a_lease_length_outside_one_second_to_a_day_is_refused_in_one_line(monkeypatch, raw):
    """inf and 1e12 passed (a lease that never ends; inf crashed the renewal thread with a traceback)."""
    from crashsearch.lab.errors import UserError
    from crashsearch.lab.lease import MAX_LEASE_SECONDS, lease_seconds

    monkeypatch.setenv("CRASHSEARCH_LEASE_SECONDS", raw)
    with pytest.raises(UserError, match="CRASHSEARCH_LEASE_SECONDS") as err:
        lease_seconds()
    assert "\n" not in str(err.value)
    monkeypatch.setenv("CRASHSEARCH_LEASE_SECONDS", str(MAX_LEASE_SECONDS))
    assert lease_seconds() == MAX_LEASE_SECONDS


@pytest.mark.parametrize("expires", ["1e300", "NaN", "Infinity", "1e12"])
def test_a_lease_whose_expiry_no_writer_sets_is_damaged_and_taken_over(backend, expires):
    """An expiry of nan, inf or 1e300 was an internal error (a timestamp out of range); one far ahead (1e12, the
    year 33658) kept the campaign for ever. Any expiry beyond the longest lease is damage, taken over at once."""
    from crashsearch.lab.lease import ObjectLease
    from crashsearch.lab.lock import CampaignBusy

    text = '{"host": "gpu-node-7", "pid": 4242, "since": "2026-12-06T00:00:00+00:00", "expires": %s}' % expires
    backend.put("campaigns/c1/lease.json", text.encode())
    with ObjectLease(backend, "c1", ttl=30) as lease:
        assert lease.previous["host"] == "gpu-node-7"
        assert _lease(backend)["pid"] == os.getpid()
    _foreign(backend, expires_in=3600)  # a live lease of an hour still holds
    with pytest.raises(CampaignBusy, match="gpu-node-7"):
        ObjectLease(backend, "c1", ttl=30).acquire()


# ---- one re-entrant base (lab/lock.Reentrant) under both locks -------------------------------------------------
def test_a_lock_file_removed_with_its_folder_by_a_releasing_run_is_taken_again(tmp_path, monkeypatch):
    """The race CampaignLock retries: the file it opened was unlinked (and the empty campaign's folder removed)
    by a run that released it meanwhile. The retry makes the folder again (the shared base must keep that)."""
    import shutil

    from crashsearch.lab import lock as lock_module

    real = lock_module._unlinked
    calls = []

    def releasing_run_meanwhile(fd, path):
        calls.append(path)
        if len(calls) == 1:
            shutil.rmtree(path.parent)  # what release() does to a campaign that wrote nothing
            return True
        return real(fd, path)

    monkeypatch.setattr(lock_module, "_unlinked", releasing_run_meanwhile)
    with lock_module.CampaignLock(tmp_path, "c1") as lock:
        assert len(calls) == 2 and lock.path.is_file() and lock.depth == 1
        with lock_module.CampaignLock(tmp_path, "c1") as again:
            assert again is lock and lock.depth == 2
    assert not (tmp_path / "campaigns" / "c1").exists()  # nothing written: no ghost campaign


def test_both_locks_share_one_reentrant_base_and_keep_their_own_keys(tmp_path, backend):
    from crashsearch.lab.lease import ObjectLease
    from crashsearch.lab.lock import CampaignLock, Reentrant

    with CampaignLock(tmp_path, "c1") as local, ObjectLease(backend, "c1", ttl=30) as lease:
        assert Reentrant.held(lease.path) is lease and Reentrant.held(str(local.path.resolve())) is local
        assert isinstance(local, Reentrant) and isinstance(lease, Reentrant)
    assert Reentrant.held(lease.path) is None and Reentrant.held(str(local.path.resolve())) is None
