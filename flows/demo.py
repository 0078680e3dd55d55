"""`crashsearch demo`: the whole pipeline on a laptop, no GPU, API keys or downloads.

synthetic dashcam videos (day, plus a night task for transfer) -> features with two backbones
(pixels and a random-init V-JEPA 2) -> a campaign with evolution, TPE and random (and Claude or
Gemini when their keys are set) -> leaderboard -> analysis report. Everything lands under the
home directory; the last lines say where and how to query it.

Sizes (measured in benchmarks/README.md, "Demo"): differences in the report must mean something,
so the validation and test splits are large enough for seed noise to stay a small share of the AP
variance (60/20/20 instead of 70/15/15, 112 day and 64 night videos: about 22 and 13 validation
videos), while the training split stays large enough for a temporal head to learn the closing
speed; the clips are 7.5 s, the shortest that gives every window its full history, and the night
campaign (transfer) runs a third of the day budget, to keep the run near 5 minutes on 2 cores.
The synthetic task's cue is the closing speed (lab/synth.py), so temporal heads can beat mean
pooling on the pixels features; nothing in the demo fixes which one wins.
"""
from __future__ import annotations

import os
import sys
import time

from crashsearch.lab.settings import Home

DEMO_BACKBONES = ("pixels", "vjepa2_vitl")
DEMO_SECONDS = 7.5  # MIN_EVENT_S + END_MARGIN_S rounded up: full history, fewest frames
DEMO_SPLIT = (0.6, 0.2, 0.2)  # train, val, test: larger val and test than the reader's default


def demo_flow_fn(home: str, videos: int = 112, budget: int = 60, tiny: bool = False) -> dict:
    """Prefect flow body of the demo; returns paths and headline numbers."""
    from crashsearch.flows.analyze import analyze_flow
    from crashsearch.flows.campaign import campaign_flow_fn
    from crashsearch.flows.extract import extract_flow
    from crashsearch.lab.settings import resolve_home
    from crashsearch.lab.synth import generate

    h = resolve_home(home)
    size = dict(videos=12, width=64, height=48) if tiny else dict(videos=videos)
    budget = min(budget, 10) if tiny else budget
    night_videos = max(12, size["videos"] * 4 // 7)
    t0 = time.monotonic()
    common = dict(seconds=DEMO_SECONDS, split_fractions=DEMO_SPLIT)
    day = generate(h.datasets / "synth-day", seed=0, style="day", **size, **common)
    night = generate(h.datasets / "synth-night", seed=1, style="night", **{**size, "videos": night_videos}, **common)
    _say(f"[1/4] synthetic datasets: {len(day.videos)} day and {len(night.videos)} night videos (H.264) "
         f"in {h.datasets} ({time.monotonic() - t0:.0f}s)")

    for ds in (day, night):
        for backbone in DEMO_BACKBONES:
            extract_flow(str(ds.root), backbone, home=str(h.root), weights="auto", device="auto")
    _say(f"[2/4] features for backbones {', '.join(DEMO_BACKBONES)} cached in {h.cache} ({time.monotonic() - t0:.0f}s)")

    policies = ["evolution", "tpe", "random"]
    if os.environ.get("ANTHROPIC_API_KEY"):
        policies.append("claude")
    if os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY"):
        policies.append("gemini")
    round_size = 4 if tiny else 12
    # strict turns, not the pipeline: the same report on every run (the measured figures hold);
    # the pipeline's order depends on thread timing (one run: noise share 24% at 47 experiments)
    run_args = dict(seeds=2 if tiny else 3, round_size=round_size, progress=not tiny, propose_mode="turns")
    main = campaign_flow_fn(str(day.root), "demo-day", str(h.root), ",".join(policies), budget, **run_args)
    transfer = campaign_flow_fn(str(night.root), "demo-night", str(h.root), ",".join(policies), max(8, budget // 3),
                                **run_args)
    _say(f"[3/4] campaigns: demo-day {main['recorded']} experiments (best val AP {_fmt(main['best_ap'])}), "
         f"demo-night {transfer['recorded']} (best {_fmt(transfer['best_ap'])}) ({time.monotonic() - t0:.0f}s)")
    print((h.campaign("demo-day") / "summary.txt").read_text())

    report = analyze_flow("demo-day", home=str(h.root))
    _say(f"[4/4] report: {report.get('report_dir')} ({time.monotonic() - t0:.0f}s)")
    return {"home": str(h.root), "campaign": main, "transfer": transfer, "report": report}


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _say(line: str) -> None:
    print(line, flush=True)


def main(args) -> int:
    from prefect import flow

    from crashsearch.flows.runtime import quiet_prefect

    home: Home = args.home_dir
    print("crashsearch demo: no GPU, no API keys, no downloads. Backbone weights are RANDOM (offline), "
          "so absolute AP says little about real V-JEPA 2 features.", flush=True)
    with quiet_prefect():
        result = flow(name="demo", log_prints=True)(demo_flow_fn)(str(home.root), args.videos, args.budget, args.tiny)
    print(f"\nhome:        {result['home']}")
    print(f"history:     {home.campaigns}/demo-day/log/*.parquet")
    print(f"cache:       {home.cache}")
    print(f"report:      {result['report'].get('report_dir')}/report.md (and report.html)")
    print(f"query it:    crashsearch query \"SELECT encoder, max(val_ap) FROM experiments GROUP BY 1 ORDER BY 2 DESC\" --home {home.root}")
    print(f"leaderboard: crashsearch leaderboard --campaign demo-day --home {home.root}")
    return 0
