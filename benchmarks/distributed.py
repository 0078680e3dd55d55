"""Benchmark the distributed path's overhead per experiment against the local path, by batch size.

The same 16 experiments (cells of one shape, so a batch of 16 trains as one vectorised model) on
the same cached pixels features of a small synthetic dataset, run two ways:

* local: ``LocalExecutor`` in this process (train, append to the store), after a warm-up;
* distributed: ``DistributedExecutor`` against a real Prefect server started here (127.0.0.1,
  temporary PREFECT_HOME) with ``--workers`` process workers, the train-batch flow deployed
  from this checkout: dispatch (run_deployment, timeout=0), pickup by a worker, a fresh flow-run
  process (imports, feature load), training and recording, and the executor's polling.

for batches of 1, 4 and 16 experiments. Reports seconds per experiment both ways, their ratio,
the overhead per batch, and where a flow run's time goes (scheduled -> pending -> running ->
completed, from the server's state timestamps).

    .venv/bin/python benchmarks/distributed.py [--batches 1,4,16] [--experiments 16] [--workers 1]
        [--encoder meanpool_mlp] [--epochs 5] [--out DIR]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))
SPACE_YAML = """  # one shape: every batch trains as one vectorised model
name: bench-distributed
groups:
  arch:
    backbone: [pixels]
    encoder: [{encoder}]
    size: [small]
  loss:
    loss: [bce, focal_2.0]
  train:
    lr: [0.0003, 0.001, 0.003, 0.01, 0.03]
    batch_size: [32]
  data:
    window_s: [1.0]
    augment: [none, jitter]
fixed:
  epochs: {epochs}
  weight_decay: 0.01
  class_balance: true
  horizons_s: [0.5, 1.0, 1.5]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A Prefect server and process workers as child process groups; ``close`` kills them all."""

    def __init__(self, root: Path, workers: int):
        self.root, self.port = root, _free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.env = {**os.environ, "PREFECT_HOME": str(root / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                    "PREFECT_UI_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "1",
                    "PREFECT_WORKER_PREFETCH_SECONDS": "1", "PREFECT_LOGGING_LEVEL": "WARNING"}
        self.env.pop("PREFECT_API_URL", None)
        self.procs: list[subprocess.Popen] = []
        self.workers = workers

    def _spawn(self, name: str, args: list[str], env: dict) -> subprocess.Popen:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=open(self.root / f"{name}.log", "wb"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        server = self._spawn("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port),
                                        "--no-ui", "--no-scheduler"], self.env)
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start: {(self.root / 'server.log').read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{self.api}/health", timeout=2).status == 200:
                    break
            time.sleep(0.5)
        from prefect import flow
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import WorkPoolCreate

        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name="bench", type="process"))
        flow.from_source(str(REPO), "flows/train_batch.py:train_batch_flow").deploy(
            name="bench", work_pool_name="bench", print_next_steps=False, ignore_warnings=True)
        for i in range(self.workers):
            self._spawn(f"w{i + 1}", [PREFECT, "worker", "start", "--pool", "bench", "--name", f"w{i + 1}",
                                      "--limit", "1", "--type", "process"], {**self.env, "PREFECT_API_URL": self.api})
        with get_client(sync_client=True) as client:
            while len(client.read_workers_for_work_pool("bench")) < self.workers:
                time.sleep(0.5)

    def close(self) -> None:
        for proc in self.procs:
            for pid in [proc.pid] + _descendants(proc.pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def _descendants(pid: int) -> list[int]:
    """Child processes, recursively (flow runs start in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                ppid = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _jobs(space, n: int, tag: str):
    from crashsearch.tasks.record import Job, job_seed

    assert n <= space.size, f"the benchmark space has {space.size} cells, fewer than {n}"
    return [Job(space.cell(c), job_seed(0, c, 0), proposer="bench", rationale=tag) for c in range(n)]


def _chunks(jobs: list, size: int) -> list[list]:
    return [jobs[i:i + size] for i in range(0, len(jobs), size)]


def _phases(campaign: str) -> dict[str, float]:
    """Median seconds per flow run from creation to pending, pending to running, running to completed."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    gaps: dict[str, list[float]] = {"to_pending": [], "to_running": [], "running": []}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"campaign:{campaign}"])))
        for run in runs:
            at = {}
            for state in client.read_flow_run_states(run.id):
                at.setdefault(state.type.value, state.timestamp)
            if {"PENDING", "RUNNING", "COMPLETED"} <= set(at):
                gaps["to_pending"].append((at["PENDING"] - run.created).total_seconds())
                gaps["to_running"].append((at["RUNNING"] - at["PENDING"]).total_seconds())
                gaps["running"].append((at["COMPLETED"] - at["RUNNING"]).total_seconds())
    return {k: statistics.median(v) if v else float("nan") for k, v in gaps.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,4,16", help="batch sizes (experiments per batch / flow run)")
    parser.add_argument("--experiments", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="process workers (each runs one flow run at a time)")
    parser.add_argument("--encoder", default="meanpool_mlp", help="the cells' temporal encoder (training cost)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", default=None, help="folder for distributed.json (default: print only)")
    args = parser.parse_args(argv)
    sizes = [int(b) for b in args.batches.split(",")]

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    root = Path(tempfile.mkdtemp(prefix="crashsearch-bench-dist-"))
    from crashsearch.tasks.campaign.executor import LocalExecutor
    from crashsearch.flows.distributed import DistributedExecutor
    from crashsearch.lab.cache import load_features
    from crashsearch.lab.settings import resolve_home
    from crashsearch.lab.space import Space
    from crashsearch.lab.store import Store
    from crashsearch.lab.synth import generate
    from crashsearch.lab.versions import code_version
    from crashsearch.tasks.execute import BatchContext
    from crashsearch.tasks.extract import extract_dataset

    import torch

    torch.set_num_threads(1)
    home = resolve_home(root / "home")
    ds = generate(home.datasets / "synth-day", videos=24, seed=0, style="day", width=64, height=48, fps=8, seconds=8.0)
    extract_dataset(ds, "pixels", home=home, progress=False, log=lambda *_: None)
    space_path = root / "space.yaml"
    space_path.write_text(SPACE_YAML.format(encoder=args.encoder, epochs=args.epochs))
    space = Space.load(space_path)
    features = load_features(home, ds.name, "pixels", device="cpu")
    store = Store(home)

    results = []
    local_ctx = BatchContext("warmup", ds.name, space, code_version(), "cpu")
    list(LocalExecutor({"pixels": features}, local_ctx, store).run(_chunks(_jobs(space, 4, "warmup"), 4)))
    for size in sizes:
        ctx = BatchContext(f"local-b{size}", ds.name, space, code_version(), "cpu")
        jobs = _jobs(space, args.experiments, f"local b{size}")
        t0 = time.perf_counter()
        list(LocalExecutor({"pixels": features}, ctx, store).run(_chunks(jobs, size)))
        results.append({"path": "local", "batch": size, "seconds": time.perf_counter() - t0})
        print(f"local       batch {size:>2}: {results[-1]['seconds'] / args.experiments:.3f} s/experiment", flush=True)

    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = Server(root, args.workers)
    # this process's client talks to the server started here; the processes die with the block
    with temporary_settings(updates={PREFECT_API_URL: server.api}), contextlib.closing(server):
        server.start()
        for size in sizes:
            campaign = f"dist-b{size}"
            ex = DistributedExecutor("train-batch/bench", home, campaign, space, ds.name, space_path=str(space_path),
                                     device="cpu", max_in_flight=args.workers, poll_s=0.5, timeout_s=600)
            jobs = _jobs(space, args.experiments, f"dist b{size}")
            t0 = time.perf_counter()
            done = list(ex.run(_chunks(jobs, size)))
            seconds = time.perf_counter() - t0
            assert sum(len(rows) for _, rows in done) == args.experiments and ex.redispatches == 0
            results.append({"path": "distributed", "batch": size, "seconds": seconds, "flow_runs": ex.dispatches,
                            "phases": _phases(campaign)})
            print(f"distributed batch {size:>2}: {seconds / args.experiments:.3f} s/experiment "
                  f"({ex.dispatches} flow runs, phases {results[-1]['phases']})", flush=True)

    lines = ["| experiments per batch | local s/exp | distributed s/exp | ratio | overhead s/batch | flow run: to pending | pending to running | running |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for size in sizes:
        loc = next(r for r in results if r["path"] == "local" and r["batch"] == size)
        dist = next(r for r in results if r["path"] == "distributed" and r["batch"] == size)
        n, batches = args.experiments, dist["flow_runs"]
        over = (dist["seconds"] * args.workers - loc["seconds"]) / batches  # worker-seconds beyond the local work
        p = dist["phases"]
        lines.append(f"| {size} | {loc['seconds'] / n:.3f} | {dist['seconds'] / n:.3f} | {dist['seconds'] / loc['seconds']:.1f}x "
                     f"| {over:.2f} | {p['to_pending']:.2f} | {p['to_running']:.2f} | {p['running']:.2f} |")
    table = "\n".join(lines)
    print(table)
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
            "load_average": os.getloadavg(), "python": platform.python_version(), "workers": args.workers,
            "experiments": args.experiments, "encoder": args.encoder, "epochs": args.epochs, "results": results, "table": table}
    print(json.dumps({k: meta[k] for k in ("date", "machine", "load_average", "python", "workers", "encoder", "epochs")}))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "distributed.json").write_text(json.dumps(meta, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
