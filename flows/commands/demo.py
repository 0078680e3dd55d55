"""``crashsearch demo``: the whole pipeline on a synthetic dataset (flows/demo.py), then where to look."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--videos", type=int, default=None, help="day videos (default 144; night: 4/9 as many)")
    p.add_argument("--budget", type=int, default=60)
    p.add_argument("--tiny", action="store_true", help="a seconds-long run for tests")


def run(args) -> int:
    from prefect import flow

    from crashsearch.flows.demo import DEMO_VIDEOS, demo_flow_fn
    from crashsearch.flows.runtime import quiet_prefect
    from crashsearch.lab.cache import cache_url
    from crashsearch.lab.errors import UserError

    home = args.home_dir
    if home.url:  # it generates videos and runs in one local folder; an s3 home ran in the scratch folder unsaid
        raise UserError(f"the demo runs in a local folder, not on {home.url}: pass --home DIR (then "
                        f"`crashsearch campaign --home {home.url} ...` runs on the bucket)")
    print("crashsearch demo: no GPU, no API keys, no downloads. Backbone weights are RANDOM (offline), "
          "so absolute AP says little about real V-JEPA 2 features.", flush=True)
    with quiet_prefect():
        videos = DEMO_VIDEOS if args.videos is None else args.videos
        result = flow(name="demo", log_prints=True)(demo_flow_fn)(str(home.root), videos, args.budget, args.tiny)
    print(f"\nhome:        {result['home']}")
    print(f"history:     {home.campaigns}/demo-day/log/*.parquet")
    print(f"cache:       {cache_url(home.root)}")  # the home the demo ran on
    print(f"report:      {result['report'].get('report_dir')}/report.md (and report.html)")
    exe = shell_command()
    print(f"query it:    {exe} query \"SELECT encoder, max(val_ap) FROM experiments GROUP BY 1 ORDER BY 2 DESC\" --home {home.root}")
    print(f"leaderboard: {exe} leaderboard --campaign demo-day --home {home.root}")
    activate = Path(exe).parent / "activate"
    if exe != "crashsearch" and activate.exists():
        print(f"(crashsearch is not on your PATH: `source {activate}` lets you type `crashsearch` and `duckdb`)")
    return 0


def shell_command(name: str = "crashsearch") -> str:
    """How to run ``name`` of this installation from a new shell: the bare name when PATH finds
    this one, else its path (relative when under the working folder, as after ``make demo``)."""
    exe = Path(sys.executable).parent / name
    if not exe.exists():
        return f"{sys.executable} -m crashsearch" if name == "crashsearch" else name
    found = shutil.which(name)
    if found and Path(found).resolve() == exe.resolve():
        return name
    relative = os.path.relpath(exe)
    return relative if not relative.startswith("..") else str(exe)
