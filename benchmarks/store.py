"""Benchmark the history store: leaderboard and a group-by over a synthetic log of 1M experiments.

Writes the log as a few Parquet files (the full experiment schema of the collision space) into a
temp home through ``Store.append_table``, then times, through the Store (each call opens a fresh
DuckDB connection, as the CLI does), the leaderboard, a group-by (mean val_ap by backbone x
encoder) and a point query, in three states of the log:

1. ``uncompacted``: the few bulk files, all "recent", so the view deduplicates every row;
2. ``compacted``: after ``Store.compact`` (one merged base file: the steady state);
3. ``live``: the compacted base plus ``--appends`` small files a running campaign appended
   since (10 rows each, through ``Store.append``), some re-appending ids already in the base.

Goal: leaderboard over 1M rows under 1 s on a 2-core CPU.

    .venv/bin/python benchmarks/store.py [--rows 1000000] [--files 4] [--repeat 5] [--appends 200]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from crashsearch.lab.schema import experiment_schema
from crashsearch.lab.settings import Home
from crashsearch.lab.space import Space
from crashsearch.lab.store import Store

GROUP_BY = """
    SELECT backbone, encoder, avg(val_ap) AS mean_val_ap, count(*) AS n
    FROM experiments WHERE status IN ('ok', 'healed')
    GROUP BY backbone, encoder ORDER BY mean_val_ap DESC"""
POINT = "SELECT * FROM experiments WHERE cell_id = 4242 ORDER BY finished_at"


def synthetic_table(space: Space, rows: int, offset: int, rng: np.random.Generator, campaign: str) -> pa.Table:
    """``rows`` experiments on random cells: AP depends on the architecture plus noise; 5% fail."""
    schema = experiment_schema(space)
    cell_ids = rng.integers(0, space.full_size, rows)
    columns: dict[str, pa.Array] = {}
    rest = cell_ids.copy()
    arch_effect = np.zeros(rows)
    for axis in reversed(space.axes):  # mixed-radix decode, last axis fastest
        rest, index = np.divmod(rest, len(axis.values))
        columns[axis.name] = pa.array(np.asarray(axis.values, dtype=object)[index], type=schema.field(axis.name).type)
        if axis.group == "arch":
            arch_effect += rng.normal(0, 0.05, len(axis.values))[index]
    failed = rng.random(rows) < 0.05
    val_ap = np.clip(0.7 + arch_effect + rng.normal(0, 0.02, rows), 0, 1)
    start = int(datetime(2025, 1, 1, tzinfo=timezone.utc).timestamp() * 1e6)
    finished = start + (offset + np.arange(rows, dtype=np.int64)) * 2_000_000  # one every 2 s
    columns.update({
        "experiment_id": pa.array([f"bench-{offset + i:012x}" for i in range(rows)]),
        "campaign": pa.array([campaign] * rows),
        "dataset": pa.array(["synth-day"] * rows),
        "space": pa.array([space.name] * rows),
        "cell_id": pa.array(cell_ids),
        "arch_group": pa.compute.binary_join_element_wise(columns["backbone"], columns["encoder"], "/"),
        "proposer": pa.array(np.array(["random", "tpe", "evolution"], dtype=object)[rng.integers(0, 3, rows)]),
        "status": pa.array(np.where(failed, "failed", "ok").astype(object)),
        "val_ap": pa.array(np.where(failed, np.nan, val_ap), from_pandas=True),
        "test_ap": pa.array(np.where(failed, np.nan, val_ap - 0.01), from_pandas=True),
        "seed": pa.array(rng.integers(0, 2 ** 31, rows)),
        "replicate": pa.array(np.zeros(rows, dtype=np.int32)),
        "train_seconds": pa.array(rng.gamma(2.0, 5.0, rows)),
        "code_version": pa.array(["bench+000000000000"] * rows),
        "finished_at": pa.array(finished, type=pa.timestamp("us", tz="UTC")),
    })
    return pa.table({name: columns[name] for name in schema.names if name in columns})


def timed(fn, repeat: int) -> tuple[float, float]:
    """(median, best) wall seconds over ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def measure(store: Store, repeat: int) -> dict:
    return {
        "leaderboard_s": timed(lambda: store.leaderboard(k=10), repeat),
        "leaderboard_min3_s": timed(lambda: store.leaderboard(k=10, min_replicates=3), repeat),
        "group_by_backbone_encoder_s": timed(lambda: store.query(GROUP_BY), repeat),
        "point_query_s": timed(lambda: store.query(POINT), repeat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--appends", type=int, default=200, help="small files appended after compaction")
    args = parser.parse_args()

    space = Space.load()
    rng = np.random.default_rng(0)
    info: dict = {}
    states: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="crashsearch-bench-") as tmp:
        store = Store(Home(Path(tmp)))
        start = time.perf_counter()
        per_file = -(-args.rows // args.files)
        for offset in range(0, args.rows, per_file):
            rows = min(per_file, args.rows - offset)
            store.append_table("bench", synthetic_table(space, rows, offset, rng, "bench"), space)
        info["write_s"] = round(time.perf_counter() - start, 2)
        info["log_mb"] = round(sum(p.stat().st_size for p in store.log_files()) / 2 ** 20, 1)
        assert int(store.query("SELECT count(*) AS n FROM experiments")["n"][0]) == args.rows
        states[f"uncompacted ({args.files} files)"] = measure(store, args.repeat)

        start = time.perf_counter()
        merged, rows = store.compact("bench")
        info["compact_s"] = round(time.perf_counter() - start, 2)
        assert (merged, rows) == (args.files, args.rows)
        states["compacted (1 file)"] = measure(store, args.repeat)

        start = time.perf_counter()
        cells = space.sample(__import__("random").Random(0), args.appends * 10)
        for batch in range(args.appends):
            new = [{"experiment_id": f"live-{batch}-{i}", "cell_id": cells[batch * 10 + i].id, "status": "ok",
                    "val_ap": float(rng.random())} for i in range(9)]
            new.append({"experiment_id": f"bench-{batch:012x}", "cell_id": 0, "status": "ok", "val_ap": 1.0})  # a re-append
            store.append("bench", new, space)
        info["append_ms_per_file"] = round(1000 * (time.perf_counter() - start) / max(args.appends, 1), 1)
        live_rows = int(store.query("SELECT count(*) AS n FROM experiments")["n"][0])
        assert live_rows == args.rows + 9 * args.appends, live_rows
        states[f"live (1 file + {args.appends} appended)"] = measure(store, args.repeat)
        board = store.leaderboard(k=3)

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    print(f"{args.rows:,} experiments; {machine}; {datetime.now(timezone.utc):%Y-%m-%d}")
    print("  " + ", ".join(f"{k} {v}" for k, v in info.items()))
    for state, results in states.items():
        print(f"  {state}")
        for key, (median, best) in results.items():
            print(f"    {key:30s} median {median:.3f} s   best {best:.3f} s")
    print(board[["rank", "mean_val_ap", "n", "arch_group"]].to_string(index=False))
    print(json.dumps({"info": info, "states": states}))


if __name__ == "__main__":
    main()
