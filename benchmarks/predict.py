"""Throughput of ``crashsearch predict``: videos per second, decode + backbone + head over whole videos.

Builds a detector the way a user does (synthetic dataset, extraction, a two-experiment campaign,
``champion``), then times ``tasks.predict.predict`` over the dataset's videos (the backbone is
built once, before the clock starts; decoding, embedding every clip of every video and scoring
every step are timed). Writes ``<out>/predict.json`` and prints one table row.

    python benchmarks/predict.py --out /tmp/bench                          # CPU: pixels, demo-size videos
    python benchmarks/predict.py --device cuda --backbone vjepa2_vitl --weights random-full --out /tmp/bench
    python benchmarks/predict.py --quick --out /tmp/bench                  # a smoke run (4 tiny videos)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crashsearch.flows.campaign import run_campaign  # noqa: E402
from crashsearch.lab.settings import resolve_home  # noqa: E402
from crashsearch.lab.synth import generate  # noqa: E402
from crashsearch.tasks.champion import write_champion  # noqa: E402
from crashsearch.tasks.detector import Detector  # noqa: E402
from crashsearch.tasks.extract import extract_dataset  # noqa: E402
from crashsearch.tasks.predict import backbone_for, gather_videos, predict_video  # noqa: E402

SPACE = """
name: bench-predict
groups:
  arch:
    backbone: [{backbone}]
    encoder: [gru]
    size: [small]
  loss:
    loss: [bce]
  train:
    lr: [0.003, 0.01]
    batch_size: [16]
  data:
    window_s: [2.0]
    augment: [none]
fixed: {{epochs: {epochs}, weight_decay: 0.01, class_balance: true, horizons_s: [0.5, 1.0, 1.5]}}
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for predict.json")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", default="pixels")
    p.add_argument("--weights", default="random", help="the backbone's weights (random-full: real size, random init)")
    p.add_argument("--videos", type=int, default=24, help="synthetic videos (the package trains on them, then "
                                                          "predict runs over all of them)")
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--quick", action="store_true", help="4 tiny videos, 2 epochs: proves the script runs")
    args = p.parse_args(argv)
    if args.quick:
        args.videos, args.width, args.height, args.seconds = 12, 64, 48, 8.0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    home = resolve_home(work / "home")
    ds = generate(work / "videos", videos=args.videos, seed=0, width=args.width, height=args.height,
                  seconds=args.seconds)
    extract_dataset(ds, args.backbone, home=home, weights=args.weights, device=args.device, progress=False,
                    log=lambda *_: None)
    space = work / "space.yaml"
    space.write_text(SPACE.format(backbone=args.backbone, epochs=2 if args.quick else 10))
    run_campaign(home, ds.root, "bench", budget=2, seeds=1, policies=["random"], space_path=str(space),
                 device=args.device, log=lambda *_: None)
    write_champion(home, "bench", work / "pkg", log=lambda *_: None)

    detector = Detector.load(work / "pkg")
    backbone = backbone_for(detector, args.device)
    items = gather_videos([ds.root], log=print)
    predict_video(items[0][0], detector, backbone)  # warm-up: first-call costs stay out of the timing
    start = time.perf_counter()
    for item, labelled in items:
        predict_video(item, detector, backbone, labelled)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else \
        f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    result = {"device": device, "backbone": args.backbone, "weights": backbone.weights_id,
              "frame_size": list(backbone.frame_size), "clip_frames": backbone.clip_frames,
              "videos": len(items), "video_seconds": args.seconds, "video_size": [args.width, args.height],
              "step_hz": detector.step_hz, "seconds": round(seconds, 3),
              "videos_per_s": round(len(items) / seconds, 3),
              "video_seconds_per_s": round(len(items) * args.seconds / seconds, 2), "quick": args.quick}
    (out / "predict.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"| {device} | {args.backbone} ({backbone.weights_id}) | {len(items)} x {args.seconds:g} s "
          f"{args.width}x{args.height} | {seconds:.1f} s | {result['videos_per_s']:.2f} videos/s | "
          f"{result['video_seconds_per_s']:.1f} video-s/s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
