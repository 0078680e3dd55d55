"""``crashsearch synth``: write a synthetic dashcam dataset (lab/synth.py generates it)."""
from __future__ import annotations

import sys
import time
from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--out", default=None, help="dataset folder (default: <home>/datasets/synth-<style>)")
    p.add_argument("--videos", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--style", default="day", choices=["day", "night"])
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0,
                   help="clip length (>= 2); positive events sit at >= 6.8 s, or in the last second of a clip under 7.1 s")


def run(args) -> int:
    """Write the dataset and print what was written. Returns an exit code."""
    from crashsearch.lab.errors import UserError
    from crashsearch.lab.settings import check_output_path
    from crashsearch.lab.synth import generate

    style = getattr(args, "style", "day")
    out = Path(args.out) if getattr(args, "out", None) else Path(args.home_dir.datasets) / f"synth-{style}"
    start = time.perf_counter()
    try:
        check_output_path(args.home_dir, out, allowed=("datasets",))  # not into the log, the cache or a report
        ds = generate(out, videos=args.videos, seed=args.seed, style=style, width=args.width, height=args.height,
                      fps=args.fps, seconds=args.seconds, progress=sys.stderr.isatty())
    except UserError as exc:
        print(f"synth: {exc}", file=sys.stderr)
        return 2
    took = time.perf_counter() - start
    pos = sum(v.label for v in ds.videos)
    print(f"wrote {len(ds.videos)} synthetic {style} videos ({pos} positive, {len(ds.videos) - pos} negative; "
          f"{args.width}x{args.height} @ {args.fps} fps, {args.seconds:g} s, H.264) to {ds.root} in {took:.1f} s")
    print(ds.summary())
    for line in ds.problems:
        print(f"  problem: {line}", file=sys.stderr)
    return 0 if not ds.problems else 1
