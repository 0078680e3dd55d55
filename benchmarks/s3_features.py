"""Feature loading: ``load_features`` of one partition from a local folder home against an s3:// home
on a local S3 server (moto), cold (an empty local read cache) and warm (its copies on local disk), same run.

Both homes get the same synthetic partition, written through ``Partition.write_rows`` as extraction
writes it: ``--videos`` videos x 23 steps x ``--dim`` float32 embeddings (2,000 x 23 x 1024 is
188 MB of embeddings) in part files of ``--per-part`` videos. Then, alternating between the homes so
that the machine's load falls on all alike, ``--repeat`` times:

* ``local folder``: ``load_features`` from the folder home (part files opened in place);
* ``S3 cold``: the node's object cache emptied first, so every part file is fetched from the bucket
  into it (a GPU node's first load of a partition);
* ``S3 warm``: loaded again, the part files read from the local copies (the listing, whose ETags
  name the copies, and the small meta.json and failures.json reads still go to the server).

The S3 server is moto in server mode on 127.0.0.1 (tests/s3_server.py): the figures are the
client's cost over the S3 API, not a network's; a real bucket adds its bandwidth to the cold load.
``--only local`` measures the folder home alone (to run the same script against older code).

    .venv/bin/python benchmarks/s3_features.py [--videos 2000] [--dim 1024] [--per-part 250] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/s3_server.py

from crashsearch.lab.cache import ExtractSpec, Partition, load_features, utc_now  # noqa: E402
from crashsearch.lab.settings import resolve_home  # noqa: E402

DATASET, BACKBONE, KEY = "bench", "bench_net", "0123456789ab"


def fill(home, videos: int, dim: int, per_part: int) -> None:
    """One complete partition of ``videos`` synthetic rows (23 steps of ``dim`` values each)."""
    spec = ExtractSpec(step_hz=4.0, history_s=5.5, clip_frames=8, frame_size=(224, 224), decode_fps=8.0)
    part = Partition.open(home, DATASET, BACKBONE, KEY)
    rng = np.random.default_rng(0)
    t_rel = np.arange(-(spec.n_steps - 1), 1, dtype=np.float32) / spec.step_hz
    for start in range(0, videos, per_part):
        rows = [{"video_id": f"v{i:06d}", "split": ("train", "val", "test")[i % 3], "label": i % 2,
                 "event_time": 7.0 if i % 2 else None, "ref_time": 7.0, "t_rel": t_rel,
                 "emb": rng.standard_normal((spec.n_steps, dim), dtype=np.float32), "real_s": spec.history_s}
                for i in range(start, min(videos, start + per_part))]
        part.write_rows(rows)
    part.write_meta({"dataset": DATASET, "backbone": BACKBONE, "weights": "random", "spec": spec.to_dict(),
                     "dim": dim, "n_steps": spec.n_steps, "complete": True, "finished_at": utc_now(),
                     "videos_ok": videos, "videos_failed": 0})


def timed_load(home, videos: int) -> float:
    start = time.perf_counter()
    fs = load_features(home, DATASET, BACKBONE)
    took = time.perf_counter() - start
    assert fs.x.shape[0] == videos, fs.x.shape
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--per-part", type=int, default=250)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=("all", "local"), default="all")
    args = parser.parse_args()

    times: dict[str, list[float]] = {"local folder": []}
    server = None
    with tempfile.TemporaryDirectory(prefix="crashsearch-bench-feat-") as tmp:
        os.environ["CRASHSEARCH_SCRATCH"] = str(Path(tmp) / "scratch")
        local = resolve_home(Path(tmp) / "home")
        fill(local, args.videos, args.dim, args.per_part)
        try:
            if args.only == "all":
                from tests.s3_server import S3Server

                from crashsearch.lab.storage import backend_for

                server = S3Server().start()
                os.environ.update(server.env())
                url = f"s3://{server.make_bucket()}/home"
                fill(resolve_home(url), args.videos, args.dim, args.per_part)
                objects = backend_for(url).cache.folder
                times.update({"S3 (moto, 127.0.0.1), cold": [], "S3 (moto, 127.0.0.1), warm": []})
            for _ in range(args.repeat):
                times["local folder"].append(timed_load(local, args.videos))
                if args.only == "all":
                    shutil.rmtree(objects, ignore_errors=True)  # a node that has read nothing yet
                    times["S3 (moto, 127.0.0.1), cold"].append(timed_load(url, args.videos))
                    times["S3 (moto, 127.0.0.1), warm"].append(timed_load(url, args.videos))
        finally:
            if server is not None:
                server.stop()

    mb = args.videos * 23 * args.dim * 4 / 2 ** 20
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    print(f"load_features of {args.videos:,} videos x 23 steps x {args.dim} float32 ({mb:.0f} MB of embeddings, "
          f"{-(-args.videos // args.per_part)} part files); {machine}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print("| home | load_features: median (best) s |")
    print("|---|---:|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} ({min(values):.2f}) |")


if __name__ == "__main__":
    main()
