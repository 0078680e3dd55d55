"""Deployment: the train-batch flow records each experiment once; prefect.yaml deploys; a campaign spans two workers.

The fast tests call the train-batch body and the executor's bookkeeping directly. The slow ones
start a real Prefect server (127.0.0.1, a free port, a temporary PREFECT_HOME), deploy the repo's
prefect.yaml with `prefect --no-prompt deploy --all`, start two process workers on its `gpu` pool
and run campaigns whose batches train on them, one with a worker killed mid-run. Every process
they start carries a marker in its environment and is killed at the end, also on failure.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

import crashsearch.flows.train_batch as tb
from crashsearch.flows.distributed import DistributedExecutor, _Dispatch
from crashsearch.lab.settings import resolve_home
from crashsearch.lab.space import Space
from crashsearch.lab.store import Store
from crashsearch.tasks.record import Job, job_seed

REPO = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))
MARK = "CRASHSEARCH_TEST_CLUSTER"

# Two shapes (one per encoder): each round gives the workers about two batches to share.
SPACE_YAML = """
name: deploy-test
groups:
  arch:
    backbone: [pixels]
    encoder: [meanpool_mlp, gru]
    size: [small]
  loss:
    loss: [bce, focal_2.0]
  train:
    lr: [0.001, 0.003, 0.01]
    batch_size: [32]
  data:
    window_s: [1.0]
    augment: [none, jitter]
fixed:
  epochs: 2
  weight_decay: 0.01
  class_balance: true
  horizons_s: [0.5, 1.0, 1.5]
"""


@pytest.fixture(scope="module")
def lab(synth_dataset, tmp_path_factory):
    """(home, dataset, space path, Space) with the tiny dataset's pixels features cached."""
    from crashsearch.tasks.extract import extract_dataset

    home = resolve_home(tmp_path_factory.mktemp("deploy-home"))
    extract_dataset(synth_dataset, "pixels", home=home, progress=False, log=lambda *_: None)
    path = home.root / "space.yaml"
    path.write_text(SPACE_YAML)
    return home, synth_dataset, str(path), Space.load(path)


def _jobs(space: Space, cell_ids: list[int]) -> list[Job]:
    return [Job(space.cell(c), job_seed(0, c, 0), proposer="test", rationale="deploy test") for c in cell_ids]


def _raw_rows(home, campaign: str) -> pd.DataFrame:
    """Every row in the campaign's log objects, duplicates included (what the view hides); a local or s3 home."""
    import pyarrow as pa

    store = Store(home)
    tables = [pq.read_table(pa.BufferReader(store.backend.read(k))).to_pandas() for k in store.log_keys(campaign)]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


# ---- the train-batch body, no Prefect --------------------------------------------------------

def test_train_batch_trains_only_the_jobs_missing_from_the_store(lab):
    home, ds, space_path, space = lab
    a, b, c = _jobs(space, [0, 1, 12])
    first = tb.train_batch_fn(str(home.root), "tb-skip", ds.name, [a.to_dict()], space_path, device="cpu")
    assert first["recorded"] == [a.experiment_id] and first["skipped"] == []
    seen = []

    def train(cells, *rest):  # what a re-dispatch trains: only what is missing
        seen.extend(cell.id for cell in cells)
        from crashsearch.tasks.train import train_batch
        return train_batch(cells, *rest)

    again = tb.train_batch_fn(str(home.root), "tb-skip", ds.name, [j.to_dict() for j in (a, b, c)], space_path,
                              device="cpu", train_fn=train)
    assert sorted(seen) == [1, 12]
    assert sorted(again["recorded"]) == sorted([b.experiment_id, c.experiment_id]) and again["skipped"] == [a.experiment_id]
    assert again["worker"].endswith(f":{os.getpid()}") and again["device"] == "cpu"
    raw = _raw_rows(home, "tb-skip")
    assert len(raw) == 3 and raw["experiment_id"].is_unique
    assert set(raw["status"]) == {"ok"} and raw["val_ap"].between(0, 1).all()


def test_a_row_recorded_during_training_is_not_written_again(lab):
    """The late original and its re-dispatch: whoever appends second finds the id and skips it."""
    home, ds, space_path, space = lab
    a, b = _jobs(space, [2, 3])
    from crashsearch.tasks.train import train_batch

    def train_while_the_other_run_records_b(cells, *rest):
        tb.train_batch_fn(str(home.root), "tb-late", ds.name, [b.to_dict()], space_path, device="cpu")
        return train_batch(cells, *rest)

    summary = tb.train_batch_fn(str(home.root), "tb-late", ds.name, [a.to_dict(), b.to_dict()], space_path,
                                device="cpu", train_fn=train_while_the_other_run_records_b)
    assert summary["recorded"] == [a.experiment_id] and summary["skipped"] == [b.experiment_id]
    raw = _raw_rows(home, "tb-late")
    assert sorted(raw["experiment_id"]) == sorted([a.experiment_id, b.experiment_id])  # b once, not twice


def test_a_bad_job_is_reported_in_one_line_and_the_rest_run(lab, capsys):
    home, ds, space_path, space = lab
    good = _jobs(space, [4])[0]
    bad = {**good.to_dict(), "cell_id": 10**9, "experiment_id": "bad-one"}
    summary = tb.train_batch_fn(str(home.root), "tb-bad", ds.name, [bad, good.to_dict()], space_path, device="cpu")
    assert summary["recorded"] == [good.experiment_id]
    assert len(summary["rejected"]) == 1 and "bad-one" in summary["rejected"][0] and "\n" not in summary["rejected"][0]
    assert "skipped job 0 (bad-one)" in capsys.readouterr().err


def test_features_are_loaded_once_per_worker_process(lab, monkeypatch):
    home, ds, space_path, space = lab
    import crashsearch.lab.cache as cache

    calls = []
    real = cache.load_features
    monkeypatch.setattr(cache, "load_features", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setattr(tb, "_FEATURES", {})
    for cell in (5, 6):
        tb.train_batch_fn(str(home.root), "tb-cache", ds.name, [_jobs(space, [cell])[0].to_dict()], space_path, device="cpu")
    assert len(calls) == 1 and len(tb._FEATURES) == 1


def test_a_batch_of_several_backbones_is_refused(lab):
    home, ds, space_path, space = lab
    full = Space.load(None)  # the default space has several backbones
    cells = [full.cell(0)]
    cells.append(next(full.cell(i) for i in range(1, full.size) if full.cell(i)["backbone"] != cells[0]["backbone"]))
    jobs = [Job(c, 1).to_dict() for c in cells]
    with pytest.raises(ValueError, match="one backbone"):
        tb.train_batch_fn(str(home.root), "tb-mixed", ds.name, jobs, None, device="cpu")


# ---- the executor's bookkeeping, no server -------------------------------------------------

def _executor(lab, campaign: str, **kw) -> DistributedExecutor:
    home, ds, space_path, space = lab
    return DistributedExecutor("train-batch/test", home, campaign, space, ds.name, space_path=space_path,
                               code_version="test", log=kw.pop("log", lambda m: None), **kw)


def test_when_a_run_counts_as_lost(lab):
    logs = []
    ex = _executor(lab, "ex-lost", timeout_s=10, log=logs.append)
    now = time.monotonic()
    jobs = _jobs(lab[3], [0])
    waiting = _Dispatch(jobs, jobs, uuid.uuid4(), "r1", 1, dispatched_at=now - 60)
    assert ex._lost(waiting) is None  # nobody took it: re-dispatching would not help ...
    assert ex._lost(waiting) is None and len(logs) == 1 and "is a worker polling" in logs[0]  # ... warned once
    running = _Dispatch(jobs, jobs, uuid.uuid4(), "r2", 1, dispatched_at=now - 60, started_at=now - 5, state="RUNNING")
    assert ex._lost(running) is None
    running.started_at = now - 11
    assert "timeout 10s" in ex._lost(running)
    crashed = _Dispatch(jobs, jobs, uuid.uuid4(), "r3", 1, dispatched_at=now, state="CRASHED", message="killed")
    assert ex._lost(crashed) == "ended crashed (killed) without recording every job"


def test_given_up_jobs_become_failed_rows_and_rows_come_back_in_batch_order(lab):
    home, ds, space_path, space = lab
    ex = _executor(lab, "ex-give-up")
    jobs = _jobs(space, [7, 8, 9])
    tb.train_batch_fn(str(home.root), "ex-give-up", ds.name, [jobs[1].to_dict()], space_path, device="cpu")
    ex._record_failed(jobs, ["run-a: ended failed (boom)", "run-b: ended crashed"])
    rows = ex._rows(list(reversed(jobs)))
    assert [r["experiment_id"] for r in rows] == [j.experiment_id for j in reversed(jobs)]
    by_id = {r["experiment_id"]: r for r in rows}
    assert by_id[jobs[1].experiment_id]["status"] == "ok"  # recorded by a worker: never overwritten
    failed = by_id[jobs[0].experiment_id]
    assert failed["status"] == "failed" and failed["error_class"] == "DispatchFailed"
    assert "2 dispatches" in failed["error_message"] and "boom" in failed["error_message"]
    assert failed["val_ap"] is None  # nulls come back as None, like freshly made rows
    assert len(_raw_rows(home, "ex-give-up")) == 3


def test_distributed_mode_without_a_server_fails_in_one_line_before_any_flow_runs(lab, capsys):
    from crashsearch.flows.cli import main as cli

    home, ds, space_path, _ = lab
    code = cli(["campaign", "--home", str(home.root), "--dataset", str(ds.root), "--space", space_path,
                "--campaign", "no-server", "--budget", "2", "--distributed", "train-batch/gpu"])
    err = capsys.readouterr().err
    assert code == 2 and "set PREFECT_API_URL" in err and len(err.strip().splitlines()) == 1
    assert not Store(home).log_files("no-server")


# ---- quiet local runs -----------------------------------------------------------------------

def test_quiet_prefect_drops_cancellation_noise_and_keeps_real_errors():
    import asyncio
    import io
    import logging

    from crashsearch.flows.runtime import quiet_prefect

    stream = io.StringIO()
    logger = logging.getLogger("prefect.test-shutdown-noise")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        with quiet_prefect():
            pass
        for error in (asyncio.CancelledError(), ValueError("a real failure")):  # after the block: exit time
            try:
                raise error
            except BaseException:
                logger.exception("background task stopped")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "a real failure" in text and "CancelledError" not in text
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


@pytest.mark.slow
def test_cli_flow_runs_on_the_temporary_server_print_no_traceback(lab, tmp_path):
    """`crashsearch extract` and `crashsearch campaign` as a user runs them: a fresh Prefect home, INFO logs."""
    _, ds, space_path, _ = lab
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_LOGGING_LEVEL": "INFO",
           "CRASHSEARCH_VERBOSE": "1"}  # Prefect's INFO lines on the terminal, as a user asks for them
    for key in ("PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED"):
        env.pop(key, None)  # the CLI must set the quiet defaults itself
    home = str(tmp_path / "home")
    for args in (["extract", "--dataset", str(ds.root), "--backbone", "pixels"],
                 ["campaign", "--dataset", str(ds.root), "--budget", "4", "--round-size", "4", "--seeds", "1",
                  "--space", space_path, "--policies", "random"]):
        run = subprocess.run([sys.executable, "-m", "crashsearch.flows.cli", *args, "--home", home], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "Starting temporary server" in run.stderr  # the path under test
        assert "Traceback" not in run.stderr, run.stderr[-5000:]


@pytest.mark.slow
def test_nightly_runs_the_campaign_its_control_arm_and_the_report_with_artifacts(lab):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, TaskRunFilter, TaskRunFilterTags

    from crashsearch.flows.nightly import nightly_flow

    home, ds, space_path, _ = lab
    result = nightly_flow(dataset=str(ds.root), campaign="nightly-test", home=str(home.root), policies="random,tpe",
                          budget=4, round_size=4, space=space_path, seeds=1, control_budget=2, control_policies="random",
                          propose_mode="concurrent", policy_args={"tpe": {"n_startup_trials": 1}})
    assert result["campaign"]["recorded"] == 4 and result["controls"] == ["nightly-test-baseline-random"]
    info = json.loads((home.campaign("nightly-test") / "campaign.json").read_text())
    assert info["propose_mode"] == "concurrent" and info["policy_args"] == {"tpe": {"n_startup_trials": 1}}
    assert Path(result["analysis"]["report"]).exists()
    assert len(Store(home).experiments("nightly-test-baseline-random")) == 2
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["nightly-test-leaderboard", "nightly-test-report"])))}
        gpu_tasks = client.read_task_runs(task_run_filter=TaskRunFilter(tags=TaskRunFilterTags(all_=["gpu"])))
    assert keys == {"nightly-test-leaderboard", "nightly-test-report"}  # results beside the runs in the UI
    assert gpu_tasks and all(t.name.startswith("train-batch") for t in gpu_tasks)  # training is bound to the gpu limit


# ---- a real server, two workers ---------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            out.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(name))
    return out


def _descendants(pid: int) -> list[int]:
    children, out, todo = _children(), [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _marked(mark: str) -> list[int]:
    """Processes of ours whose environment carries this cluster's marker (orphans included)."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                if needle in Path(f"/proc/{name}/environ").read_bytes():
                    found.append(int(name))
            except OSError:
                continue
    return found


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


class Cluster:
    """A Prefect server and workers as child processes; ``close`` kills every one of them."""

    def __init__(self, root: Path):
        self.root, self.mark, self.port = root, uuid.uuid4().hex, _free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, MARK: self.mark, "PREFECT_HOME": str(root / "prefect-home"),
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
                    "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1",
                    "CRASHSEARCH_CODE_DIR": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.env.pop("PREFECT_API_URL", None)
        self.client_env = {**self.env, "PREFECT_API_URL": self.api}

    def spawn(self, name: str, args: list[str], env: dict) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "wb")
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str, tail: int = 3000) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def start_server(self, timeout: float = 90) -> None:
        proc = self.spawn("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port),
                                     "--no-ui", "--no-scheduler"], self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"prefect server exited: {self.log('server')}"
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{self.api}/health", timeout=2).status == 200:
                    return
            time.sleep(0.5)
        raise AssertionError(f"prefect server not up after {timeout}s: {self.log('server')}")

    @contextlib.contextmanager
    def client(self):
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.api}), get_client(sync_client=True) as client:
            yield client

    def start_worker(self, name: str, pool: str = "gpu") -> subprocess.Popen:
        """A worker node with a scratch folder of its own (an s3:// home shares nothing else between nodes)."""
        env = {**self.client_env, "CRASHSEARCH_SCRATCH": str(self.root / f"scratch-{name}")}
        return self.spawn(name, [PREFECT, "worker", "start", "--pool", pool, "--name", name, "--limit", "1",
                                 "--type", "process"], env)

    def wait_for_workers(self, names: set[str], pool: str = "gpu", timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while not names <= {w.name for w in client.read_workers_for_work_pool(pool) if w.status.value == "ONLINE"}:
                assert time.monotonic() < deadline, f"workers did not register: {[self.log(n) for n in names]}"
                time.sleep(0.5)

    def kill_node(self, name: str) -> list[int]:
        """SIGKILL a worker, its process group and its flow-run children (which run in their own sessions)."""
        proc = self.procs[name]
        victims = _descendants(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        _kill(victims)
        proc.wait(timeout=10)
        return victims

    def close(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for _ in range(5):
            left = _marked(self.mark)
            if not left:
                break
            _kill(left)
            time.sleep(0.2)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_server):
    """Server up, pools `gpu` and `cpu`, the `gpu` tag limited to 2 (one per worker), the repo's
    prefect.yaml deployed, workers w1 and w2 polling `gpu`. Every process has the AWS environment of
    the session's S3 server (tests/s3_server.py) and one scratch folder for s3:// homes."""
    from prefect.client.schemas.actions import WorkPoolCreate

    c = Cluster(tmp_path_factory.mktemp("cluster"))
    s3 = {**s3_server.env(), "CRASHSEARCH_SCRATCH": str(c.root / "scratch")}
    c.env.update(s3)
    c.client_env.update(s3)
    try:
        c.start_server()
        with c.client() as client:
            for pool in ("gpu", "cpu"):
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            client.create_concurrency_limit(tag="gpu", concurrency_limit=2)
        # CRASHSEARCH_CODE_DIR unset while deploying: the workers resolve it when a run starts
        deploy_env = {k: v for k, v in c.client_env.items() if k != "CRASHSEARCH_CODE_DIR"}
        c.deploy = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all"], cwd=REPO, env=deploy_env,
                                  capture_output=True, text=True, timeout=180)
        assert c.deploy.returncode == 0, c.deploy.stdout[-3000:] + c.deploy.stderr[-3000:]
        for name in ("w1", "w2"):
            c.start_worker(name)
        c.wait_for_workers({"w1", "w2"})
        yield c
    finally:
        c.close()


def _campaign_cli(c: Cluster, lab, campaign: str, budget: int, round_size: int, timeout_s: int,
                  extra: tuple[str, ...] = ()) -> subprocess.Popen:
    home, ds, space_path, _ = lab  # home: a Home, or the URL of an s3:// home
    args = [sys.executable, "-m", "crashsearch.flows.cli", "campaign", "--home", str(getattr(home, "root", home)), "--dataset", str(ds.root),
            "--campaign", campaign, "--budget", str(budget), "--round-size", str(round_size), "--seeds", "2",
            "--space", space_path, "--distributed", "train-batch/gpu", "--max-in-flight", "2",
            "--dispatch-timeout", str(timeout_s), *extra]
    # INFO: inside the flow the campaign's messages (re-dispatches among them) are Prefect log lines
    return c.spawn(f"campaign-{campaign}", args, {**c.client_env, "PREFECT_LOGGING_LEVEL": "INFO"})


def _finish(c: Cluster, proc: subprocess.Popen, name: str, timeout: float) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"campaign did not finish in {timeout}s: {c.log(name)}\nw1: {c.log('w1')}\nw2: {c.log('w2')}")
    out = c.log(name, tail=20000)
    assert proc.returncode == 0, out
    return out


def _train_runs(c: Cluster, campaign: str) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with c.client() as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"campaign:{campaign}"])))


def _pid(text) -> int:
    return int(str(text).rsplit(":", 1)[-1])


@pytest.mark.slow
def test_prefect_yaml_deploys_every_flow_with_pools_schedule_and_pull_steps(cluster):
    with cluster.client() as client:
        deployments = {f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in client.read_deployments()}
    assert set(deployments) == {"extract/gpu", "campaign/gpu", "train-batch/gpu", "analyze/cpu", "nightly/cpu"}
    assert {n: d.work_pool_name for n, d in deployments.items()} == {
        "extract/gpu": "gpu", "campaign/gpu": "gpu", "train-batch/gpu": "gpu", "analyze/cpu": "cpu", "nightly/cpu": "cpu"}
    nightly = deployments["nightly/cpu"]
    (schedule,) = nightly.schedules
    assert schedule.schedule.cron == "0 2 * * *" and schedule.schedule.timezone == "UTC" and schedule.active
    assert nightly.parameters["distributed"] == "train-batch/gpu"
    assert nightly.parameters["policy_args"] == {"claude": {"role": "explorer"}, "gemini": {"role": "exploiter"}}
    clone = deployments["campaign/gpu"].pull_steps[0]["prefect.deployments.steps.git_clone"]
    assert clone["repository"] == "{{ prefect.variables.crashsearch_repo }}"  # resolved on the worker at run time
    assert "pip install" in deployments["campaign/gpu"].pull_steps[1]["prefect.deployments.steps.run_shell_script"]["script"]
    batches = deployments["train-batch/gpu"]
    assert batches.global_concurrency_limit.limit == 8  # batches at once: one per GPU
    assert batches.concurrency_options.collision_strategy.value == "ENQUEUE"
    from crashsearch.flows.distributed import check_deployment

    with cluster.client():
        check_deployment("train-batch/gpu")
        with pytest.raises(ValueError, match=r"deployment 'train-batch/nope' not found on http://127\.0\.0\.1.*prefect"):
            check_deployment("train-batch/nope")
    assert deployments["train-batch/gpu"].pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $CRASHSEARCH_CODE_DIR }}"}}]


@pytest.mark.slow
def test_a_distributed_campaign_trains_on_both_workers_and_records_each_experiment_once(cluster, lab):
    home = lab[0]
    # groups of at most 3: the first 5 cells go out as two batches at once, and since each worker takes
    # one run at a time, both workers must train. (With one group per round the pipeline dispatches
    # the seed-0 batch, then its replicates; a fast idle machine then ran both on w1, in turn.)
    out = _finish(cluster, _campaign_cli(cluster, lab, "dist-both", budget=10, round_size=5, timeout_s=300,
                                         extra=("--max-group", "3")), "campaign-dist-both", timeout=240)
    assert "Traceback" not in out
    df = Store(home).experiments("dist-both")
    assert len(df) == 10 and df["experiment_id"].is_unique and (df["status"] == "ok").all()
    assert len(_raw_rows(home, "dist-both")) == 10  # no duplicate even on disk
    assert not (home.campaigns / "dist-both" / "inflight.json").exists()
    runs = [r for r in _train_runs(cluster, "dist-both") if r.state.is_completed()]
    worker_of = {_pid(r.infrastructure_pid): r.labels.get("prefect.worker.name") for r in runs}
    row_workers = {worker_of.get(_pid(w)) for w in df["worker"]}
    assert row_workers == {"w1", "w2"}, (row_workers, worker_of, set(df["worker"]))
    assert df["worker"].nunique() == len(runs)  # one flow-run process per batch, each on one worker


@pytest.fixture
def s3_deploy_home(cluster, lab, s3_server, monkeypatch):
    """(URL, Home) of a fresh s3:// home whose feature cache (on the bucket) holds the lab dataset's
    pixels features; this process reads it with the campaign client's scratch folder."""
    from crashsearch.tasks.extract import extract_dataset

    for key, value in {**s3_server.env(), "CRASHSEARCH_SCRATCH": cluster.env["CRASHSEARCH_SCRATCH"]}.items():
        monkeypatch.setenv(key, value)
    url = f"s3://{s3_server.make_bucket()}/home"
    home = resolve_home(url)
    extract_dataset(lab[1], "pixels", home=home, progress=False, log=lambda *_: None)  # the bucket's feature cache
    return url, home


@pytest.mark.slow
def test_a_distributed_campaign_on_an_s3_home_shares_only_the_bucket(cluster, lab, s3_deploy_home):
    """Each worker's home is the same s3:// URL and each has its own scratch folder: the features reach
    the workers and the rows reach the campaign through the bucket only."""
    _, ds, space_path, _ = lab
    url, home = s3_deploy_home
    args = [sys.executable, "-m", "crashsearch.flows.cli", "campaign", "--home", url, "--dataset", str(ds.root),
            "--campaign", "dist-s3", "--budget", "10", "--round-size", "5", "--seeds", "2", "--space", space_path,
            "--distributed", "train-batch/gpu", "--max-in-flight", "2", "--dispatch-timeout", "300", "--max-group", "3"]
    out = _finish(cluster, cluster.spawn("campaign-dist-s3", args, {**cluster.client_env, "PREFECT_LOGGING_LEVEL": "INFO"}),
                  "campaign-dist-s3", timeout=240)
    assert "Traceback" not in out
    df = Store(home).experiments("dist-s3")
    assert len(df) == 10 and df["experiment_id"].is_unique and (df["status"] == "ok").all()
    keys = Store(home).backend.list("campaigns/dist-s3/")
    # the workers kept the leaders' heads on the bucket, where `champion` on any machine finds them
    assert any(k.startswith("campaigns/dist-s3/models/") for k in keys), keys
    assert not (home.root / "campaigns" / "dist-s3" / "models").exists()
    assert "campaigns/dist-s3/inflight.json" not in keys  # listed on the bucket while batches ran; gone at the end
    runs = [r for r in _train_runs(cluster, "dist-s3") if r.state.is_completed()]
    worker_of = {_pid(r.infrastructure_pid): r.labels.get("prefect.worker.name") for r in runs}
    assert {worker_of.get(_pid(w)) for w in df["worker"]} == {"w1", "w2"}
    assert not (home.root / "campaigns" / "dist-s3" / "log").exists()  # no row went through a local folder
    assert not (home.root / "cache").exists()  # nor a feature: the workers read the bucket's partition ...
    for worker in ("w1", "w2"):  # ... once each, into the read cache of their own scratch folder
        assert list((cluster.root / f"scratch-{worker}").glob("*/objects/*.parquet")), worker  # <home's scratch>/objects
        assert not list((cluster.root / f"scratch-{worker}").glob("*/cache"))
    assert any(k.endswith("/meta.json") for k in Store(home).backend.list(f"cache/{ds.name}/pixels/"))
    assert not any(k.endswith("lease.json") for k in Store(home).backend.list("campaigns/dist-s3/"))


@pytest.mark.slow
def test_a_batch_that_keeps_failing_ends_as_failed_rows(cluster, lab):
    home, ds, space_path, space = lab
    ex = DistributedExecutor("train-batch/gpu", home, "dist-fail", space, ds.name,
                             space_path=str(home.root / "no-such-space.yaml"), max_attempts=2, poll_s=0.5,
                             timeout_s=120, log=lambda m: None)
    jobs = _jobs(space, [10, 11])
    with cluster.client():
        ((batch, rows),) = list(ex.run([jobs]))
    assert batch == jobs and ex.dispatches == 2 and ex.redispatches == 1
    assert [r["error_class"] for r in rows] == ["DispatchFailed"] * 2
    assert "no-such-space.yaml" in rows[0]["error_message"]  # the flow's own error, carried in the row


@pytest.mark.slow
def test_ctrl_c_to_a_distributed_campaign_cancels_its_runs_instead_of_waiting_for_them(cluster, lab):
    # bug: the pipeline waited for every dispatched batch to be recorded, so a Ctrl-C waited for the
    # workers' training (here hours) without a word
    home, _, space_path, _ = lab
    long = Path(space_path).with_name("long.yaml")
    long.write_text(SPACE_YAML.replace("epochs: 2\n", "epochs: 100000\n"))
    proc = _campaign_cli(cluster, (lab[0], lab[1], str(long), lab[3]), "dist-int", budget=4, round_size=2,
                         timeout_s=600)
    deadline, running = time.monotonic() + 120, None
    while running is None:  # a worker is training a batch
        assert time.monotonic() < deadline and proc.poll() is None, cluster.log("campaign-dist-int")
        running = next((r for r in _train_runs(cluster, "dist-int") if r.state.type.value == "RUNNING"), None)
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    sent = time.monotonic()
    try:
        proc.wait(timeout=120)
    finally:
        took = time.monotonic() - sent
    out = cluster.log("campaign-dist-int", tail=20000)
    assert proc.returncode == 130 and took < 30, (took, out[-3000:])
    assert "interrupted; finished experiments are kept" in out and "Traceback" not in out, out[-3000:]
    deadline = time.monotonic() + 60
    with cluster.client() as client:
        while client.read_flow_run(running.id).state.type.value not in ("CANCELLING", "CANCELLED", "CRASHED"):
            assert time.monotonic() < deadline, client.read_flow_run(running.id).state
            time.sleep(0.5)
    assert len(Store(home).experiments("dist-int")) == 0  # nothing half-trained was recorded


@pytest.mark.slow
@pytest.mark.parametrize("where", ["folder", "s3"])
def test_a_killed_workers_batch_is_redispatched_and_the_history_is_complete(cluster, lab, where, request):
    home, campaign = lab[0], f"dist-kill-{where}"
    if where == "s3":  # the home on the bucket, each worker with its own scratch folder
        url, home = request.getfixturevalue("s3_deploy_home")
        lab = (url, *lab[1:])
    try:
        _killed_worker_run(cluster, lab, home, campaign)
    finally:
        cluster.start_worker("w1")  # the node comes back for the tests after this one
        cluster.wait_for_workers({"w1", "w2"})


def _killed_worker_run(cluster, lab, home, campaign: str) -> None:
    # groups of at most 2: the first 4 cells go out as two batches at once, one per worker (each takes
    # one run at a time), so w1 surely gets one; with one group w2 could train everything alone
    proc = _campaign_cli(cluster, lab, campaign, budget=8, round_size=4, timeout_s=12, extra=("--max-group", "2"))
    deadline, victim = time.monotonic() + 120, None
    while victim is None:  # w1 has taken a batch and is starting it
        assert time.monotonic() < deadline and proc.poll() is None, cluster.log(f"campaign-{campaign}")
        for run in _train_runs(cluster, campaign):
            if run.labels.get("prefect.worker.name") == "w1" and run.state.type.value in ("PENDING", "RUNNING"):
                victim = run
        time.sleep(0.2)
    killed = cluster.kill_node("w1")
    out = _finish(cluster, proc, f"campaign-{campaign}", timeout=240)

    assert "re-dispatching" in out and "Traceback" not in out
    df = Store(home).experiments(campaign)
    assert len(df) == 8 and df["experiment_id"].is_unique and (df["status"] == "ok").all()
    lost_ids = {j["experiment_id"] for j in victim.parameters["jobs"]}
    assert lost_ids <= set(df["experiment_id"])  # the killed batch was trained again ...
    redone = df[df["experiment_id"].isin(lost_ids)]
    assert not {_pid(w) for w in redone["worker"]} & set(killed)  # ... by another process
    with cluster.client() as client:
        assert not client.read_flow_run(victim.id).state.is_completed()  # it really died mid-run
    assert len(_raw_rows(home, campaign)) == 8  # the late writer, if any, skipped its rows
