"""Benchmark history.duckdb (glob views, lab/catalog.py) against the store's views, same data, same process.

The store lists the log files in Python, reads the base file alone and deduplicates only the
recent rows; history.duckdb's views find the bases and replaced files in SQL at query time and
read the files through a glob, twice (bases, recent). This measures what that costs on the
synthetic 1M-experiment log of benchmarks/store.py, compacted and live (200 appended files):
a count, the group-by and the point query, each through ``Store.query`` (a fresh in-memory
connection per call, as the CLI does) and through a fresh read-only connection to
history.duckdb per call (as ``duckdb -readonly`` does), and the ratio of the two.

    .venv/bin/python benchmarks/catalog.py [--rows 1000000] [--repeat 5] [--appends 200] [--write-readme]
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np

from crashsearch.lab import catalog
from crashsearch.lab.settings import Home
from crashsearch.lab.space import Space
from crashsearch.lab.store import Store
from readme import README, write_section  # benchmarks/ is on sys.path when run as a script
from store import GROUP_BY, POINT, synthetic_table, timed

QUERIES = {"count": "SELECT count(*) FROM experiments", "group-by backbone x encoder": GROUP_BY,
           "point query (one cell)": POINT}


def measure(store: Store, path: Path, repeat: int) -> dict[str, tuple]:
    def through_catalog(sql: str):
        con = duckdb.connect(str(path), read_only=True)
        try:
            return con.execute(sql).df()
        finally:
            con.close()

    out = {}
    for name, sql in QUERIES.items():
        a, b = store.query(sql), through_catalog(sql)
        assert a.shape == b.shape and (a.iloc[:, -1].tolist() == b.iloc[:, -1].tolist() or name != "count"), (a, b)
        out[name] = (timed(lambda: store.query(sql), repeat), timed(lambda: through_catalog(sql), repeat))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--appends", type=int, default=200)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()

    space = Space.load()
    rng = np.random.default_rng(0)
    states = {}
    with tempfile.TemporaryDirectory(prefix="crashsearch-bench-") as tmp:
        home = Home(Path(tmp))
        store = Store(home)
        store.append_table("bench", synthetic_table(space, args.rows, 0, rng, "bench"), space)
        store.compact("bench")
        start = time.perf_counter()
        path = catalog.build(home)
        build_s = time.perf_counter() - start
        states["compacted (1 file)"] = measure(store, path, args.repeat)
        cells = space.sample(random.Random(0), args.appends * 10)
        for batch in range(args.appends):
            rows = [{"experiment_id": f"live-{batch}-{i}", "cell_id": cells[batch * 10 + i].id, "status": "ok",
                     "val_ap": float(rng.random())} for i in range(10)]
            store.append("bench", rows, space)
        files = len(store.log_files("bench"))
        states[f"live (base + {args.appends} appends, {files} files)"] = measure(store, path, args.repeat)

    machine = (f"{platform.machine()} {os.cpu_count()}-core CPU, load average {os.getloadavg()[0]:.1f}, "
               f"DuckDB {duckdb.__version__}")
    lines = [f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on the {machine}; `benchmarks/catalog.py` "
             f"({args.rows:,} experiments, median of {args.repeat}).",
             "",
             "The same log read two ways in one process: through `Store.query` (Python lists the files, the "
             "base file is read alone) and through a fresh read-only connection to `history.duckdb` (glob views: "
             "bases and replaced files found in SQL at query time). Building the file took "
             f"{build_s * 1000:.0f} ms.",
             "",
             "| state | query | store (s) | history.duckdb (s) | ratio |",
             "|---|---|---:|---:|---:|"]
    for state, results in states.items():
        for name, ((store_s, _), (cat_s, _)) in results.items():
            lines.append(f"| {state} | {name} | {store_s:.3f} | {cat_s:.3f} | {cat_s / store_s:.2f} |")
    lines += ["", "Read the ratios: both columns ran in one process on the same files, one right after the other, so machine load "
              "affects them alike; the absolute seconds are only as good as the load average above allows. A count "
              "costs history.duckdb most (the store answers it from the base file's footer; the glob views read the "
              "file names of every row to split bases from recent rows); queries that read columns anyway cost about "
              "the same."]
    body = "\n".join(lines)
    print(body)
    if args.write_readme:
        write_section(README, "history.duckdb", body)


if __name__ == "__main__":
    main()
