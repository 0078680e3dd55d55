"""`crashsearch demo`: the whole pipeline on a laptop, no GPU, API keys or downloads.

synthetic dashcam videos (day, plus a night task for transfer) -> features with two backbones
(pixels and a random-init V-JEPA 2) -> a campaign with evolution, TPE and random (and Claude or
Gemini when their keys are set) -> leaderboard -> analysis report. Everything lands under the
home directory; the last lines say where and how to query it.

Sizes (measured in benchmarks/README.md, "Demo"): differences in the report must mean something.
144 day and 64 night videos of 7.5 s (the shortest that gives every window its full history),
split 50/25/25: 36 validation videos, so the split a verdict rests on is not a handful (at 60/20/20
of 112, about 22, one split's luck decided the comparison below), and 72 training videos, enough
for a temporal head to learn the closing speed. The night campaign (transfer) runs a third of the
day budget, to keep the run under 5 minutes on 2 cores.

The synthetic task's cue is the closing speed (lab/synth.py). After the day campaign the demo
trains its leading temporal cell on the pixels features and the same cell with mean pooling,
ABLATION_RUNS runs each (``encoder_ablation``), and the report compares them like for like with
N and intervals (analysis.temporal); nothing in the demo fixes which one wins.
"""
from __future__ import annotations

import os
import time

DEMO_BACKBONES = ("pixels", "vjepa2_vitl")
DEMO_SECONDS = 7.5  # MIN_EVENT_S + END_MARGIN_S rounded up: full history, fewest frames
DEMO_VIDEOS = 144  # day videos; the night set has 4/9 as many (64)
DEMO_SPLIT = (0.5, 0.25, 0.25)  # train, val, test: larger val and test than the reader's default
ABLATION_RUNS = 4  # runs of the leading temporal cell and of its mean-pooling twin (analysis.temporal.MIN_RUNS+)


def demo_flow_fn(home: str, videos: int = DEMO_VIDEOS, budget: int = 60, tiny: bool = False) -> dict:
    """Prefect flow body of the demo; returns paths and headline numbers."""
    from crashsearch.flows.analyze import analyze_flow
    from crashsearch.flows.campaign import campaign_flow_fn
    from crashsearch.flows.extract import extract_flow
    from crashsearch.lab.cache import cache_url
    from crashsearch.lab.settings import resolve_home
    from crashsearch.lab.synth import generate

    h = resolve_home(home)
    size = dict(videos=12, width=64, height=48) if tiny else dict(videos=videos)
    budget = min(budget, 10) if tiny else budget
    night_videos = max(12, size["videos"] * 4 // 9)
    t0 = time.monotonic()
    common = dict(seconds=DEMO_SECONDS, split_fractions=DEMO_SPLIT)
    day = generate(h.datasets / "synth-day", seed=0, style="day", **size, **common)
    night = generate(h.datasets / "synth-night", seed=1, style="night", **{**size, "videos": night_videos}, **common)
    _say(f"[1/4] synthetic datasets: {len(day.videos)} day and {len(night.videos)} night videos (H.264) "
         f"in {h.datasets} ({time.monotonic() - t0:.0f}s)")

    for ds in (day, night):
        for backbone in DEMO_BACKBONES:
            extract_flow(str(ds.root), backbone, home=str(h.root), weights="auto", device="auto")
    _say(f"[2/4] features for backbones {', '.join(DEMO_BACKBONES)} cached in {cache_url(h.root)} ({time.monotonic() - t0:.0f}s)")

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
    ablation = encoder_ablation(h.root, "demo-day", day, runs=3 if tiny else ABLATION_RUNS)
    transfer = campaign_flow_fn(str(night.root), "demo-night", str(h.root), ",".join(policies), max(8, budget // 3),
                                **run_args)
    _say(f"[3/4] campaigns: demo-day {main['recorded']} experiments, demo-night {transfer['recorded']}; "
         + (f"ablation: cell {ablation['cell_id']} and its mean-pooling twin {ablation['twin_cell_id']}, "
            f"{ablation['runs']} runs each ({ablation['trained']} trained now, the rest ran in the campaign)"
            if ablation else "no temporal run on pixels to ablate")
         + f" ({time.monotonic() - t0:.0f}s)")
    print((h.campaign("demo-day") / "summary.txt").read_text())

    report = analyze_flow("demo-day", home=str(h.root))
    _say(f"[4/4] report: {report.get('report_dir')} ({time.monotonic() - t0:.0f}s)")
    for line in report_figures(report.get("numbers_path")):
        _say(line)
    return {"home": str(h.root), "campaign": main, "transfer": transfer, "report": report}


def encoder_ablation(home, campaign: str, dataset, backbone: str = "pixels", runs: int = ABLATION_RUNS,
                     seed: int = 0) -> dict | None:
    """Train the campaign's leading temporal cell on ``backbone`` and its twin with mean pooling
    (every other axis equal) until each has ``runs`` runs, recorded in the campaign as proposer
    "ablation", so the report can compare them like for like (analysis.temporal.paired).

    A search replicates its leaders, not the baseline it left behind; this is the control that
    says whether the order of the steps matters, whichever way it comes out. Returns
    {cell_id, twin_cell_id, trained} or None when the campaign has no temporal run on ``backbone``
    or its space (read from the campaign) has no mean pooling.
    """
    from crashsearch.lab.cache import load_features
    from crashsearch.lab.leaderboard import leaderboard
    from crashsearch.lab.settings import resolve_home
    from crashsearch.lab.space import InvalidCell, Space
    from crashsearch.lab.store import Store
    from crashsearch.lab.versions import code_version
    from crashsearch.tasks.execute import BatchContext, run_batch
    from crashsearch.tasks.record import Job, job_seed

    home = resolve_home(home)
    store = Store(home)
    df = store.experiments(campaign)
    temporal = df[(df["backbone"] == backbone) & (df["encoder"] != "meanpool_mlp")]
    earlier = temporal[temporal["proposer"] == "ablation"]
    board = leaderboard(earlier if len(earlier) else temporal, k=1)  # a re-run completes the same pair
    if board.empty:
        return None
    info = next((c for c in store.campaigns() if c["id"] == campaign), {})
    space = Space.load(info.get("space_path"))  # cell ids mean cells of the campaign's own space
    leader = space.cell(int(board["cell_id"].iloc[0]))
    try:
        twin = space.validate({**leader.to_dict(), "encoder": "meanpool_mlp"})
    except InvalidCell:  # a space without mean pooling has no twin to compare with
        return None
    rows = df.groupby("cell_id").size()  # every recorded row: a new replicate never reuses a seed
    done = df[df["status"].isin(("ok", "healed"))].groupby("cell_id").size()
    jobs = []
    for cell in (leader, twin):
        first, missing = int(rows.get(cell.id, 0)), max(0, runs - int(done.get(cell.id, 0)))
        jobs += [Job(cell, job_seed(seed, cell.id, r), r, proposer="ablation") for r in range(first, first + missing)]
    if jobs:
        features = load_features(home, dataset.name, backbone, dataset=dataset)
        run_batch(jobs, features, BatchContext(campaign, dataset.name, space, code_version(), "cpu"), store)
    return {"cell_id": leader.id, "twin_cell_id": twin.id, "trained": len(jobs), "runs": runs}


def report_figures(numbers_path) -> list[str]:
    """The demo's closing figures, read from the report's numbers.json so they are the report's own,
    each with its definition: the best single run and the leading cell (full history, the ablation's
    runs included) and each dataset's best single run as in the transfer table."""
    import json
    from pathlib import Path

    if not numbers_path or not Path(numbers_path).exists():
        return []
    nb = json.loads(Path(numbers_path).read_text())
    h, lines = nb["headline"], []
    if h.get("best_val_ap") is not None:
        lines.append(f"      demo-day best single run: validation AP {h['best_val_ap']:.4f} (one run, full history "
                     f"incl. the ablation)")
    lead = h.get("leader")
    if lead:
        lines.append(f"      demo-day leading cell {lead['cell_id']}: mean validation AP {lead['val_ap']:.4f} over "
                     f"{lead['runs']} run(s)" + (f", {lead['tied'] - 1} other cell(s) within its interval" if lead["tied"] > 1 else ""))
    for d in (nb.get("transfer") or {}).get("datasets") or []:
        if d.get("best_ap") is not None:
            lines.append(f"      {d['dataset']}: best single run, validation AP {d['best_ap']:.4f} (the report's transfer table)")
    return lines


def _say(line: str) -> None:
    print(line, flush=True)

