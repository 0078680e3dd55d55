"""Trainer busy fraction of an LLM-driven campaign: today's loop (strict rounds) vs the asynchronous pipeline.

A local HTTP server (tests/fake_llm_server.py) answers the Anthropic and Gemini wire formats after
a fixed latency L; the real SDK clients of the claude and gemini agents talk to it. Each answer
hands out the next cells of a shuffled pool of the space (so proposals are diverse and never
repeat). The campaign trains fast heads on a synthetic demo dataset's cached pixels features.

For each L, in the same process, the same budget runs twice: ``--propose-mode concurrent`` (today's
loop: both agents asked at once, then the round trains, then they are asked again) and
``pipeline``. Every call into the trainer is timed; the busy fraction is the share of the
campaign's wall time during which at least one batch was training (the union of the intervals),
the same definition for both engines. Also: experiments per hour, mean staleness (results
recorded between a proposal's view and its training), LLM tokens per recorded experiment, and
proposals dropped (returned when the agent's lookahead share had no room left: paid for, not
claimed; the fake server does not hand a dropped cell out again, so a run whose drops eat the
pool ends early, "exhausted").

For each lookahead of ``--lookahead`` (a comma list; ``auto`` is the default, sized from the
measured trainer rate and call latency), the pipeline runs once more.

    .venv/bin/python benchmarks/pipeline.py [--latency 2,8] [--budget 240] [--lookahead auto,24]
    .venv/bin/python benchmarks/pipeline.py --latency 2 --modes pipeline --reply-cells 3   # a server that answers short
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import re
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/fake_llm_server.py

from tests.fake_llm_server import FakeLLMServer, json_reply, slow, tool_reply  # noqa: E402

from crashsearch.flows.campaign import run_campaign  # noqa: E402
from crashsearch.lab.settings import resolve_home  # noqa: E402
from crashsearch.lab.space import Space  # noqa: E402
from crashsearch.lab.synth import generate  # noqa: E402
from crashsearch.tasks.extract import extract_dataset  # noqa: E402
from crashsearch.tasks.train import train_batch  # noqa: E402

# fast heads: the demo recipe (20 epochs) with the two cheapest encoders, small size; 1,800 cells
SPACE = """
name: bench-pipeline
groups:
  arch:
    backbone: [pixels]
    encoder: [meanpool_mlp, gru]
    size: [small]
  loss:
    loss: [bce, focal_1.0, focal_1.5, focal_2.0, focal_2.5, focal_3.0]
  train:
    lr: [0.0001, 0.0003, 0.001, 0.003, 0.01]
    batch_size: [16, 32, 64]
  data:
    window_s: [1.0, 1.5, 2.0, 2.5, 3.0]
    augment: [none, jitter]
fixed: {epochs: 20, weight_decay: 0.01, class_balance: true, horizons_s: [0.5, 1.0, 1.5]}
"""


def _responder(api: str, pool: list, lock: threading.Lock, latency: float, most: int | None = None):
    """Answer a propose request with the next n cells of the shared pool, after ``latency`` seconds;
    with ``most``, never more than ``most`` cells whatever was asked (a server that answers short)."""

    def reply(request):
        text = request.text
        wanted = re.search(r"Propose (\d+) replacement", text) or re.search(r"propose exactly (\d+) new", text)
        n = int(wanted.group(1)) if wanted else 4
        n = min(n, most) if most else n
        with lock:
            cells = [pool.pop() for _ in range(min(n, len(pool)))]
        obj = {"proposals": [dict(c.to_dict(), rationale=f"{api} pick") for c in cells]}
        if api == "anthropic":
            return slow(tool_reply("propose_experiments", obj, input_tokens=2000, output_tokens=40 * len(cells) + 50), latency)
        obj = {"proposals": [{k: (v if k == "rationale" else str(v)) for k, v in p.items()} for p in obj["proposals"]]}
        return slow(json_reply(obj, prompt_tokens=2000, output_tokens=40 * len(cells) + 50), latency)

    return reply


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def run_one(home, dataset, space_path: str, mode: str, latency: float, budget: int, args, tag: str,
            lookahead: int | None = None) -> dict:
    server = FakeLLMServer().start()
    os.environ.update(ANTHROPIC_BASE_URL=server.base_url, GOOGLE_GEMINI_BASE_URL=server.base_url,
                      ANTHROPIC_API_KEY="sk-ant-bench", GEMINI_API_KEY="gm-bench")
    space = Space.load(space_path)
    pool = [space.cell(i) for i in range(space.full_size)]
    random.Random(0).shuffle(pool)
    lock = threading.Lock()
    server.respond_with("anthropic", _responder("anthropic", pool, lock, latency, args.reply_cells))
    server.respond_with("gemini", _responder("gemini", pool, lock, latency, args.reply_cells))
    intervals: list[tuple[float, float]] = []

    def timed_train(cells, features, seeds, fixed, device):
        t0 = time.monotonic()
        try:  # --features: the campaign's cells train on random features of a real campaign's size
            return train_batch(cells, args.big if args.big is not None else features, seeds, fixed, device)
        finally:
            intervals.append((t0, time.monotonic()))

    fast = dict(timeout_s=60.0, retry_base_s=0.001, retry_max_s=0.01)
    t0 = time.monotonic()
    try:
        summary = run_campaign(home, dataset.root, f"bench-{tag}", policies=["claude", "gemini"], budget=budget,
                               seeds=1, round_size=args.round_size, device=args.device, space_path=space_path,
                               policy_kwargs={"claude": fast, "gemini": fast}, propose_mode=mode,
                               lookahead=lookahead, **({} if args.calls is None else {"max_calls_in_flight": args.calls}),
                               trainers_per_device=args.trainers, group_wait_s=args.group_wait,
                               train_fn=timed_train, log=lambda m: None)
    finally:
        server.stop()
    wall = time.monotonic() - t0
    busy = _union(intervals)
    first = min(a for a, _ in intervals)
    tokens = sum(s["tokens"] for n, s in summary.per_policy.items() if n in ("claude", "gemini"))
    return {"mode": "today's loop" if mode == "concurrent" else "pipeline", "latency": latency, "n": summary.new,
            "wall": wall, "train": sum(b - a for a, b in intervals), "busy": busy / wall,
            "busy_after_fill": _union(intervals) / (t0 + wall - first), "exp_per_hour": summary.new / wall * 3600,
            "staleness": summary.pipeline.get("mean_staleness", 0.0) if summary.pipeline else 0.0,
            "tokens_per_exp": tokens / max(summary.new, 1), "calls": len(server.requests),
            "dropped": summary.pipeline.get("over_lookahead", 0) if summary.pipeline else 0,
            "most_calls": (summary.pipeline or {}).get("max_calls_in_flight", ""),
            "lookahead": "" if not summary.pipeline else (f"auto (max {summary.pipeline['lookahead']})"
                                                          if summary.pipeline["lookahead_auto"] else str(lookahead))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", default="2,8", help="comma list of LLM latencies in seconds")
    parser.add_argument("--budget", type=int, default=240, help="experiments per campaign")
    parser.add_argument("--round-size", type=int, default=12, help="today's loop: experiments per round")
    parser.add_argument("--lookahead", default="auto", help="pipeline: comma list of lookaheads; auto: sized by the engine")
    parser.add_argument("--calls", type=int, default=None,
                        help="pipeline: --max-calls-in-flight per agent (default: the engine's own default)")
    parser.add_argument("--reply-cells", type=int, default=None,
                        help="the server's replies carry at most this many cells, whatever was asked (default: all)")
    parser.add_argument("--trainers", type=int, default=2, help="pipeline: groups training at once")
    parser.add_argument("--group-wait", type=float, default=0.5)
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--modes", default="concurrent,pipeline")
    parser.add_argument("--features", default=None, metavar="NxSxD",
                        help="train on random features of this size on --device (e.g. 1500x16x1024, a real "
                             "campaign's V-JEPA 2 features) instead of the synthetic dataset's pixels features")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    args.big, space_text = None, SPACE
    if args.features:
        from benchmarks.gpu_train import random_features

        n, steps, dim = (int(v) for v in args.features.lower().split("x"))
        args.big = random_features(n, steps, dim, args.device)
        args.big.backbone = "pixels"  # the space's backbone: the cells train on these features instead
        # 16 steps at 4 Hz hold a window of 2 s ending 1.5 s before the event, not the longer ones
        space_text = SPACE.replace("[1.0, 1.5, 2.0, 2.5, 3.0]", "[1.0, 1.5, 2.0]")

    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    home = resolve_home(tmp / "home")
    dataset = generate(home.datasets / "synth-day", videos=args.videos, seed=0)
    extract_dataset(dataset, "pixels", home=home, progress=False, log=lambda *_: None)
    space_path = str(tmp / "space.yaml")
    Path(space_path).write_text(space_text)
    train_batch([Space.load(space_path).cell(0)], __import__("crashsearch.lab.cache", fromlist=["x"]).load_features(
        home, dataset.name, "pixels"), [0])  # warm-up: imports and first-call costs stay out of the timings

    print(f"{date.today()} {platform.machine()} {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
          f"device {args.device}, features {args.features or 'pixels of the synthetic dataset'}; budget {args.budget}, round size {args.round_size}, lookahead {args.lookahead}, "
          f"max calls in flight per agent {args.calls or 'default'}, "
          f"replies carry {f'at most {args.reply_cells} cells' if args.reply_cells else 'what was asked'}, {args.trainers} trainers, group wait {args.group_wait}s")
    print("| L (s) | engine | lookahead | experiments | wall s | training s | busy | busy after first batch | exp/hour | "
          "mean staleness | tokens/exp | LLM calls | most calls of one agent at once | proposals dropped |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lookaheads = [None if x.strip() == "auto" else int(x) for x in args.lookahead.split(",")]
    for latency in [float(x) for x in args.latency.split(",")]:
        for mode in args.modes.split(","):
            for lookahead in lookaheads if mode == "pipeline" else [None]:
                tag = f"{mode}-{latency:g}-{lookahead or 'auto'}"
                r = run_one(home, dataset, space_path, mode, latency, args.budget, args, tag, lookahead)
                print(f"| {latency:g} | {r['mode']} | {r['lookahead']} | {r['n']} | {r['wall']:.1f} | {r['train']:.1f} | {r['busy']:.0%} | "
                      f"{r['busy_after_fill']:.0%} | {r['exp_per_hour']:,.0f} | {r['staleness']:.1f} | "
                      f"{r['tokens_per_exp']:,.0f} | {r['calls']} | {r['most_calls']} | {r['dropped']} |", flush=True)


if __name__ == "__main__":
    main()
