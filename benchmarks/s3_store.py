"""Append and leaderboard latency: a home on a local S3 server (moto) against a local folder, same run.

Both homes get the same history (``--rows`` synthetic experiments of the collision space's schema
in ``--files`` bulk files, then compacted, as benchmarks/store.py writes them), then, alternating
between the homes so that the machine's load falls on both alike:

* ``append``: ``Store.append`` of 10 validated rows, one new log object each (``--appends`` times;
  minor compactions included, as a campaign meets them);
* ``leaderboard``: ``Store.leaderboard(k=10)``, a fresh DuckDB connection and a fresh listing each
  time, as ``crashsearch leaderboard`` does (``--repeat`` times).

The S3 server is moto in server mode on 127.0.0.1 (tests/s3_server.py), so the figures are the
client's and DuckDB's cost over the S3 API, not a network's: a real bucket adds its round trips
(tens of ms each) to every listing, HEAD and GET.

    .venv/bin/python benchmarks/s3_store.py [--rows 100000] [--files 4] [--appends 60] [--repeat 7]
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/s3_server.py, benchmarks/store.py

from benchmarks.store import synthetic_table  # noqa: E402
from tests.s3_server import S3Server  # noqa: E402

from crashsearch.lab.settings import resolve_home  # noqa: E402
from crashsearch.lab.space import Space  # noqa: E402
from crashsearch.lab.store import Store  # noqa: E402


def fill(store: Store, space: Space, rows: int, files: int) -> None:
    rng = np.random.default_rng(0)
    per_file = -(-rows // files)
    for offset in range(0, rows, per_file):
        store.append_table("bench", synthetic_table(space, min(per_file, rows - offset), offset, rng, "bench"), space)
    store.compact("bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--appends", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    space = Space.load()
    server = S3Server().start()
    try:
        os.environ.update(server.env())
        with tempfile.TemporaryDirectory(prefix="crashsearch-bench-s3-") as tmp:
            os.environ["CRASHSEARCH_SCRATCH"] = str(Path(tmp) / "scratch")
            stores = {"local folder": Store(resolve_home(Path(tmp) / "home")),
                      "S3 (moto, 127.0.0.1)": Store(resolve_home(f"s3://{server.make_bucket()}/home"))}
            for store in stores.values():
                fill(store, space, args.rows, args.files)
            appends = {name: [] for name in stores}
            boards = {name: [] for name in stores}
            cells = space.sample(random.Random(0), args.appends * 10)
            for i in range(args.appends):
                rows = [{"experiment_id": f"live-{i}-{j}", "cell_id": cells[i * 10 + j].id, "status": "ok",
                         "val_ap": 0.5} for j in range(10)]
                for name, store in stores.items():
                    start = time.perf_counter()
                    store.append("bench", [dict(r) for r in rows], space)
                    appends[name].append(time.perf_counter() - start)
            for _ in range(args.repeat):
                for name, store in stores.items():
                    start = time.perf_counter()
                    board = store.leaderboard(k=10)
                    boards[name].append(time.perf_counter() - start)
                    assert len(board) == 10
            counts = {name: int(store.query("SELECT count(*) AS n FROM experiments")["n"][0]) for name, store in stores.items()}
            assert len(set(counts.values())) == 1, counts
    finally:
        server.stop()

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    print(f"{args.rows:,} experiments compacted + {args.appends} appends of 10; {machine}; "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print("| home | append, 10 rows: median (best) ms | leaderboard k=10: median (best) s |")
    print("|---|---:|---:|")
    for name in stores:
        a, b = appends[name], boards[name]
        print(f"| {name} | {1000 * statistics.median(a):.0f} ({1000 * min(a):.0f}) "
              f"| {statistics.median(b):.3f} ({min(b):.3f}) |")


if __name__ == "__main__":
    main()
