"""`crashsearch status`: crashed campaigns, experiments in flight, best AP and the last error, from the store alone."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from crashsearch.flows.commands.status import run as main
from crashsearch.flows.status import campaign_status, format_status
from crashsearch.lab.settings import resolve_home
from crashsearch.lab.space import Space
from crashsearch.lab.store import Store
from crashsearch.tasks.record import Job, make_row

SPACE = Space.from_dict({
    "name": "status-test",
    "groups": {"arch": {"backbone": ["pixels"], "encoder": ["meanpool_mlp", "gru"], "size": ["small"]},
               "loss": {"loss": ["bce"]}, "train": {"lr": [0.001, 0.01], "batch_size": [32]},
               "data": {"window_s": [1.0]}},
})


def _row(cell_id: int, status: str, val_ap: float | None = None, error: Exception | None = None, minutes: int = 0,
         campaign: str = "c") -> dict:
    job = Job(SPACE.cell(cell_id), seed=cell_id)
    at = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=minutes)
    return make_row(job, campaign=campaign, dataset="d", space=SPACE, code_version="v", status=status,
                    metrics={"val_ap": val_ap} if val_ap is not None else None, error=error,
                    started_at=at, finished_at=at)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def home(tmp_path):
    return resolve_home(tmp_path / "home")


def test_status_shows_done_best_ap_last_error_and_crashed_campaigns(home, capsys):
    store = Store(home)
    store.append("alive", [_row(0, "ok", 0.61, campaign="alive"), _row(1, "ok", 0.83, campaign="alive"),
                           _row(2, "failed", error=RuntimeError("old failure"), minutes=1, campaign="alive"),
                           _row(3, "failed", error=ValueError("newest failure\nsecond line"), minutes=2, campaign="alive"),
                           _row(0, "invalid", campaign="alive")], SPACE)
    store.write_campaign("alive", {"status": "running", "pid": os.getpid(), "budget": 10, "dataset": "d"})
    store.append("dead", [_row(1, "ok", 0.5, campaign="dead")], SPACE)
    store.write_campaign("dead", {"status": "running", "pid": _dead_pid(), "budget": 4, "dataset": "d"})
    store.append("done", [_row(2, "ok", float("nan"), campaign="done")], SPACE)
    store.write_campaign("done", {"status": "finished", "pid": _dead_pid(), "budget": 1, "dataset": "d"})

    rows = {r["campaign"]: r for r in campaign_status(home)}
    alive = rows["alive"]
    assert alive["status"] == "running" and alive["done"] == 4 and alive["budget"] == 10  # invalid does not count
    assert alive["failed"] == 2 and alive["best_val_ap"] == pytest.approx(0.83)
    assert alive["last_error"] == "ValueError: newest failure second line"  # the latest, on one line
    assert rows["dead"]["status"] == "stopped (crashed?)"
    assert rows["done"]["status"] == "finished" and rows["done"]["best_val_ap"] is None  # NaN AP is no best
    assert list(rows)[0] == "alive"  # running campaigns come first

    assert main(SimpleNamespace(home_dir=home)) == 0
    out = capsys.readouterr().out
    assert "stopped (crashed?)" in out and "4/10" in out and "0.8300" in out and "ValueError: newest failure" in out


def test_status_counts_distributed_batches_in_flight_until_recorded(home):
    store = Store(home)
    store.append("dist", [_row(0, "ok", 0.7, campaign="dist")], SPACE)
    store.write_campaign("dist", {"status": "running", "pid": os.getpid(), "budget": 8})
    recorded = store.experiments("dist")["experiment_id"].iloc[0]
    doc = {"runs": [{"flow_run_id": "x", "experiment_ids": [recorded, "pending-1", "pending-2"]},
                    {"flow_run_id": "y", "experiment_ids": ["pending-3"]}]}
    (home.campaign("dist") / "inflight.json").write_text(json.dumps(doc))
    assert campaign_status(home)[0]["in_flight"] == 3  # the recorded one is no longer in flight

    store.write_campaign("dist", {"status": "finished"})  # a stale file of a finished campaign counts nothing
    assert campaign_status(home)[0]["in_flight"] == 0


@pytest.mark.parametrize("text", [b"[]", b"null", b'{"runs": null}', b'{"runs": [1, {"experiment_ids": "ab"}]}',
                                  b'{"runs": [{"experiment_ids": [1, null, "pending"]}]}', b"\x00\xff not utf-8"])
def test_status_of_a_running_campaign_survives_a_damaged_inflight_file(home, text):
    # each of these raised (AttributeError, TypeError, a DuckDB BinderException, UnicodeDecodeError)
    store = Store(home)
    store.append("dist", [_row(0, "ok", 0.7, campaign="dist")], SPACE)
    store.write_campaign("dist", {"status": "running", "pid": os.getpid(), "budget": 8})
    (home.campaign("dist") / "inflight.json").write_bytes(text)
    (row,) = campaign_status(home)
    assert row["status"] == "running" and row["in_flight"] == (1 if b"pending" in text else 0)


def test_status_names_a_training_error_s_class_once(home):
    # a TrainingError's message starts with its class: the status showed "NaNLossError: NaNLossError: ..."
    from crashsearch.tasks.errors import NaNLossError

    store = Store(home)
    store.append("c", [_row(0, "failed", error=NaNLossError(SPACE.cell(0), "loss went NaN"))], SPACE)
    store.write_campaign("c", {"status": "finished", "budget": 1})
    assert campaign_status(home)[0]["last_error"].startswith("NaNLossError: loss went NaN [cell 0")


def test_status_of_a_campaign_on_another_host_does_not_judge_its_pid(home):
    store = Store(home)
    store.write_campaign("remote", {"status": "running", "pid": _dead_pid(), "host": "some-other-node", "budget": 3})
    store.append("remote", [_row(0, "ok", 0.4, campaign="remote")], SPACE)
    assert campaign_status(home)[0]["status"] == "running (on some-other-node)"


def test_status_with_no_campaigns_says_so(home, capsys):
    assert main(SimpleNamespace(home_dir=home)) == 0
    assert "no campaigns under" in capsys.readouterr().out
    assert format_status([]).startswith("campaign")


def test_status_lists_only_the_most_recent_finished_campaigns(home):
    store = Store(home)
    for i in range(4):
        store.append(f"c{i}", [_row(0, "ok", 0.5, minutes=i, campaign=f"c{i}")], SPACE)
        store.write_campaign(f"c{i}", {"status": "finished", "budget": 1})
    shown = campaign_status(home, recent=2)
    assert len(shown) == 2


def test_inflight_json_lists_the_batches_of_every_trainer_thread(home, monkeypatch):
    """The pipeline calls DistributedExecutor.run from several trainer threads, one batch each.
    Before: each call wrote inflight.json with its own batch only (status saw a fraction of the
    work in flight), and the first call to end deleted the file under the others."""
    import threading
    import time
    import uuid
    from contextlib import nullcontext

    import prefect.client.orchestration

    from crashsearch.flows import distributed
    from crashsearch.flows.distributed import DistributedExecutor, _Dispatch

    done: set[str] = set()
    monkeypatch.setattr(prefect.client.orchestration, "get_client", lambda **kw: nullcontext(None))
    monkeypatch.setattr(distributed, "recorded_ids", lambda store, campaign, ids: {i for i in ids if i in done})
    ex = DistributedExecutor("train-batch/gpu", home, "dist", SPACE, "d", poll_s=0.01, log=lambda m: None)
    monkeypatch.setattr(ex, "_dispatch", lambda batch, jobs, attempt: _Dispatch(
        batch, jobs, uuid.uuid4(), f"run-{jobs[0].experiment_id}", attempt, time.monotonic()))
    monkeypatch.setattr(ex, "_poll_states", lambda client, inflight: None)
    monkeypatch.setattr(ex, "_lost", lambda d: None)
    monkeypatch.setattr(ex, "_rows", lambda batch: [])
    a, b = [Job(SPACE.cell(0), seed=1)], [Job(SPACE.cell(1), seed=1), Job(SPACE.cell(2), seed=1)]
    path = home.campaign("dist") / "inflight.json"
    errors: list[BaseException] = []

    def train(batch):
        try:
            list(ex.run([batch]))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    def listed() -> set[str]:
        try:
            return {i for r in json.loads(path.read_text())["runs"] for i in r["experiment_ids"]}
        except (FileNotFoundError, json.JSONDecodeError):
            return set()

    def wait_for(condition) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not condition():
            time.sleep(0.01)
        return condition()

    threads = [threading.Thread(target=train, args=(batch,)) for batch in (a, b)]
    for t in threads:
        t.start()
    try:
        ids_a, ids_b = {j.experiment_id for j in a}, {j.experiment_id for j in b}
        assert wait_for(lambda: listed() == ids_a | ids_b), listed()  # both calls' batches at once
        done.update(ids_a)
        threads[0].join(timeout=10)
        assert listed() == ids_b  # the first call ended: the other's batch is still listed
    finally:
        done.update(j.experiment_id for j in a + b)
        for t in threads:
            t.join(timeout=10)
    assert not errors, errors
    assert not path.exists()  # the last call removed it


def test_a_full_disk_for_inflight_json_is_said_once_and_stops_nothing(home, monkeypatch):
    """inflight.json only informs `status`; before, a failed write (a full disk) raised out of the
    executor's run call and failed the batch it was dispatching."""
    import errno
    import uuid

    from crashsearch.flows import distributed
    from crashsearch.flows.distributed import DistributedExecutor, _Dispatch

    said: list[str] = []
    ex = DistributedExecutor("train-batch/gpu", home, "dist", SPACE, "d", poll_s=0.01, log=said.append)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(distributed.os, "replace", full)
    batch = [Job(SPACE.cell(0), seed=1)]
    d = _Dispatch(batch, batch, uuid.uuid4(), "run-a", 1, 0.0)
    for _ in range(3):
        ex._publish(1, {d.run_id: d})  # no exception
    ex._publish(1, None)
    assert len(said) == 1 and "No space left on device" in said[0] and "training goes on" in said[0]


def test_inflight_json_is_written_when_its_batches_change_not_at_every_poll(home, monkeypatch):
    """Every poll (2 s) rewrote the file: on an object-store home, a PUT per poll and trainer thread."""
    import uuid

    from crashsearch.flows.distributed import DistributedExecutor, _Dispatch

    ex = DistributedExecutor("train-batch/gpu", home, "dist", SPACE, "d", poll_s=0.01, log=lambda m: None)
    puts: list[str] = []
    real_put = ex.store.backend.put
    monkeypatch.setattr(ex.store.backend, "put", lambda key, data: (puts.append(key), real_put(key, data)))
    batch = [Job(SPACE.cell(0), seed=1)]
    d = _Dispatch(batch, batch, uuid.uuid4(), "run-a", 1, 0.0)
    for _ in range(3):
        ex._publish(1, {d.run_id: d})
    assert len(puts) == 1
    d.state, d.worker = "RUNNING", "w1"  # a worker took it: status may show that
    ex._publish(1, {d.run_id: d})
    assert len(puts) == 2 and json.loads((home.campaigns / "dist" / "inflight.json").read_text())["runs"][0]["worker"] == "w1"
    ex._publish(1, None)
    assert not (home.campaigns / "dist" / "inflight.json").exists()
    ex._publish(2, {d.run_id: d})  # a new call after the file went: written again
    assert len(puts) == 3 and (home.campaigns / "dist" / "inflight.json").exists()
