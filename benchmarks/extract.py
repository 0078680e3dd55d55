"""Benchmark of feature extraction: decode frames/s, model-alone clips/s and full-pipeline clips/s.

CPU mode (default) measures every backbone at the demo size (48 synthetic videos, 10 s, 160x96,
8 fps, the small random-init configs) and writes the "Extraction" section of benchmarks/README.md.
For each backbone:

- decode: ``tasks.extract.decode_video`` over the videos (only the frames the clip grid needs,
  decoded at the backbone's frame size), with 1 and with ``--workers`` threads; and, for
  reference, decoding every frame of the same videos.
- model alone: ``backbone.embed`` on random clips already in memory (batch ``--batch-size``).
- pipeline: ``tasks.extract.extract_videos`` into a fresh cache partition (decode threads
  ahead of batched embedding, Parquet writes included); the ratio to the model-alone rate is
  how well decoding is hidden behind compute.

GPU mode (``--device cuda``) measures V-JEPA 2 ViT-L at its real size (16 frames, 256x256, bf16
autocast, random weights unless ``--weights`` names real ones) on 720p H.264 videos and writes the
"Extraction on GPU" section. Without ``--dataset`` it makes its own: a synthetic scene rendered
at 320x180, upscaled to 1280x720 and encoded once, then copied ``--videos`` times (decoding cost
is per file, so copies measure the decoder as well as distinct videos would; real dashcam
footage has more texture and decodes somewhat slower).

    .venv/bin/python benchmarks/extract.py                        # CPU, all backbones, updates README
    .venv/bin/python benchmarks/extract.py --backbones pixels,vjepa2_vitl --no-readme
    .venv/bin/python benchmarks/extract.py --device cuda --workers 16   # on a GPU node
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crashsearch.lab.cache import ExtractSpec, Partition  # noqa: E402
from crashsearch.lab.datasets import Dataset, load_dataset  # noqa: E402
from crashsearch.models.backbones import create_backbone, list_backbones  # noqa: E402
from crashsearch.tasks.extract import VideoFailure, _quiet_decord, decode_video, extract_videos  # noqa: E402
from readme import README, write_section  # benchmarks/ is on sys.path when run as a script

HEAVY_ON_CPU = ("r2plus1d_18", "mvit_v2_s")  # about 0.1 s per clip on one core even at 8x64x64


# ---- data ---------------------------------------------------------------------------------


def demo_dataset(folder: Path, videos: int, seed: int = 0) -> Dataset:
    """The demo's synthetic dataset (160x96, 8 fps, 10 s), generated once and reused."""
    from crashsearch.lab.synth import generate

    if (folder / "train.csv").exists():
        ds = load_dataset(folder)
        if len(ds.videos) == videos:
            return ds
    return generate(folder, videos=videos, seed=seed)


def hd_dataset(folder: Path, videos: int, width: int = 1280, height: int = 720, fps: int = 30,
               seconds: float = 10.0) -> Dataset:
    """``videos`` copies of one synthetic 720p H.264 video (half of them labelled positive at 8 s).

    An existing ``train/00000.mp4`` is reused, so the video can be encoded on a machine with PyAV
    and carried to a GPU node without it."""
    if (folder / "train.csv").exists() and len(load_dataset(folder).videos) == videos:
        return load_dataset(folder)
    (folder / "train").mkdir(parents=True, exist_ok=True)
    first = folder / "train" / "00000.mp4"
    if not first.exists():
        encode_hd_video(first, width, height, fps, seconds)
    rows = ["id,time_of_event,time_of_alert,target"]
    for k in range(videos):
        if k:
            shutil.copyfile(first, folder / "train" / f"{k:05d}.mp4")
        rows.append(f"{k},{'8.0,7.0,1' if k % 2 else ',,0'}")
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    return load_dataset(folder)


def encode_hd_video(first: Path, width: int, height: int, fps: int, seconds: float) -> None:
    """A synthetic scene rendered at a quarter of the size, upscaled and encoded as H.264."""
    import av

    from crashsearch.lab.synth import render_video

    small, _ = render_video(0, 0, 1, "day", width // 4, height // 4, fps, seconds)  # (T, h, w, 3)
    with av.open(str(first), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23", "g": str(fps)}  # 1 s GOP, like dashcams
        for frame in small:
            big = np.ascontiguousarray(frame.repeat(4, axis=0).repeat(4, axis=1))
            for packet in stream.encode(av.VideoFrame.from_ndarray(big, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# ---- measurements -------------------------------------------------------------------------


def decode_rate(ds: Dataset, spec: ExtractSpec, workers: int) -> dict:
    """Decoding what the clip grid needs with ``workers`` threads: videos/s, source frames/s (the
    span from the first to the last frame used, which the decoder walks through) and frames used per video."""
    from concurrent.futures import ThreadPoolExecutor

    _quiet_decord()

    def one(item):
        try:
            video = decode_video(item, spec)
            return video.span_frames, len(video.frames)
        except VideoFailure:
            return 0, 0

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = list(pool.map(one, ds.videos))
    took = time.perf_counter() - start
    n = max(1, len(done))
    return {"videos_s": len(done) / took, "frames_s": sum(d[0] for d in done) / took,
            "used_per_video": sum(d[1] for d in done) / n, "span_per_video": sum(d[0] for d in done) / n}


def full_decode_rate(ds: Dataset, spec: ExtractSpec, workers: int) -> dict:
    """Decoding every frame of every video at the spec's size instead (what we avoid): videos/s, frames/s."""
    from concurrent.futures import ThreadPoolExecutor

    import decord

    def one(item):
        reader = decord.VideoReader(str(item.path), width=spec.frame_size[1], height=spec.frame_size[0], num_threads=1)
        return len(reader.get_batch(list(range(len(reader)))).asnumpy())

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        frames = sum(pool.map(one, ds.videos))
    took = time.perf_counter() - start
    return {"videos_s": len(ds.videos) / took, "frames_s": frames / took, "frames_per_video": frames / max(1, len(ds.videos))}


def model_rate(backbone, batch_size: int, seconds: float) -> float:
    """clips/s of ``backbone.embed`` alone on random uint8 clips (already on the device for CUDA)."""
    shape = (batch_size, backbone.clip_frames, *backbone.frame_size, 3)
    clips = torch.randint(0, 256, shape, dtype=torch.uint8, device=backbone.device)
    cuda = backbone.device.type == "cuda"
    backbone.embed(clips)  # warm-up: kernels, autotuning, allocator
    if cuda:
        torch.cuda.synchronize()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds or n < 2 * batch_size:
        backbone.embed(clips)  # returns on the CPU: the timing includes the sync
        n += batch_size
    return n / (time.perf_counter() - start)


def pipeline_rate(ds: Dataset, backbone, spec: ExtractSpec, workers: int, batch_size: int) -> dict:
    """Run the real extraction into a throw-away partition; returns its stats."""
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        part = Partition.open(tmp, ds.name, backbone.name, "bench")
        stats = extract_videos(ds.videos, backbone, spec, part, workers=workers, batch_size=batch_size, progress=False)
    return stats.to_dict()


def bench_backbone(name: str, ds: Dataset, args, device: str) -> dict:
    t0 = time.perf_counter()
    backbone = create_backbone(name, weights=args.weights, device=device)
    build_s = time.perf_counter() - t0
    spec = ExtractSpec.for_backbone(backbone)
    cap = args.pipeline_videos or (8 if (name in HEAVY_ON_CPU and device == "cpu") else len(ds.videos))
    sub = Dataset(ds.name, ds.root, ds.layout, ds.videos[:cap])
    batch = args.batch_size or (64 if device == "cuda" else 32)

    # on the CPU, give the model what the pipeline gives it: the cores the decoders leave
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 1) - args.workers)))
    try:
        model = model_rate(backbone, batch, args.model_seconds)
    finally:
        torch.set_num_threads(threads)
    dsub = Dataset(ds.name, ds.root, ds.layout, sub.videos[:args.decode_videos or len(sub.videos)])
    dec1 = decode_rate(dsub, spec, 1)
    decw = decode_rate(dsub, spec, args.workers)
    full = full_decode_rate(dsub, spec, args.workers)
    pipe = pipeline_rate(sub, backbone, spec, args.workers, batch)
    steady = pipe["clips"] / max(1e-9, pipe["seconds"] - pipe["fill_seconds"])
    row = {"backbone": name, "weights": backbone.weights_id, "clip": f"{backbone.clip_frames}x{spec.frame_size[0]}x{spec.frame_size[1]}",
           "dim": backbone.dim, "videos": len(sub.videos), "decode_1": dec1, "decode_w": decw, "full": full,
           "feeds": decw["videos_s"] * spec.n_steps, "model": model, "pipeline": pipe["clips_per_s"],
           "pipeline_s": pipe["seconds"], "clips": pipe["clips"], "build_s": build_s,
           "fill_s": pipe["fill_seconds"], "steady": steady}
    print(f"{name:12s} decode {dec1['frames_s']:7.0f} / {decw['frames_s']:7.0f} frames/s (1 / {args.workers} threads), "
          f"{decw['videos_s']:.1f} videos/s vs {full['videos_s']:.1f} decoding all frames; "
          f"model {model:8.1f} clips/s, pipeline {pipe['clips_per_s']:8.1f} clips/s "
          f"({pipe['clips']} clips in {pipe['seconds']:.1f} s; {steady:.1f} clips/s after the {pipe['fill_seconds']:.1f} s fill)",
          flush=True)
    return row


# ---- report -------------------------------------------------------------------------------


def machine(device: str) -> str:
    cpu = f"{platform.machine()} {os.cpu_count()}-core CPU"
    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)} with a {cpu}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu} shared with other jobs (load average {load:.1f} at the end)"


def table(rows: list[dict], args, device: str, data: str, demo_s: float | None = None,
          cli_s: dict[str, float] | None = None, demo_videos: int = 0) -> str:
    today = dt.date.today().isoformat()
    lines = [
        f"Measured {today} on {machine(device)}, torch {torch.__version__}; `benchmarks/extract.py"
        f"{' --device cuda' if device == 'cuda' else ''}`.",
        "",
        f"Data: {data}. Clip grid: 23 clip ends at 4 Hz covering 5.5 s before the reference time, clip frames "
        f"sampled at 8 fps. *Decode*: the frames the grid needs, decoded at the backbone's frame size "
        f"(frames/s counts the source frames from the first to the last one used, which the decoder walks "
        f"through), with 1 and {args.workers} decoder threads; *all frames*: decoding every frame instead "
        f"({args.workers} threads); *decode feeds*: clips/s the {args.workers} decoder threads could supply. "
        f"*Model alone*: `embed` on clips already in memory. *Pipeline*: `extract_videos` end to end "
        f"(decode threads ahead of batched embedding, Parquet writes); *after fill*: the same run without "
        f"the seconds before the first batch reached the model (the decoders filling the pipeline, a fixed cost "
        f"that a long extraction amortises).",
        "",
        "| backbone | weights | clip (F x H x W) | dim | videos | frames used / walked / all per video "
        f"| decode frames/s (1 thr) | decode frames/s ({args.workers} thr) | videos/s: grid / all frames "
        "| decode feeds clips/s | model alone clips/s | pipeline clips/s | pipeline / model | fill s "
        "| after fill clips/s | after fill / model |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        d1, dw, full = r["decode_1"], r["decode_w"], r["full"]
        lines.append(f"| {r['backbone']} | {r['weights']} | {r['clip']} | {r['dim']} | {r['videos']} | "
                     f"{dw['used_per_video']:.0f} / {dw['span_per_video']:.0f} / {full['frames_per_video']:.0f} | "
                     f"{d1['frames_s']:,.0f} | {dw['frames_s']:,.0f} | {dw['videos_s']:,.1f} / {full['videos_s']:,.1f} | "
                     f"{r['feeds']:,.0f} | {r['model']:,.1f} | {r['pipeline']:,.1f} | {r['pipeline'] / r['model']:.0%} | "
                     f"{r['fill_s']:.1f} | {r['steady']:,.1f} | {r['steady'] / r['model']:.0%} |")
    if demo_s is not None:
        lines += ["", f"**Demo extraction** ({demo_videos} videos, backbones pixels and vjepa2_vitl, random weights): "
                      f"{demo_s:.1f} s for both through `extract_dataset` in a warm process (backbone construction "
                      f"and Parquet writes included)."]
    if cli_s:
        total = sum(cli_s.values())
        each = ", ".join(f"{k} {v:.1f} s" for k, v in cli_s.items())
        lines += [f"Cold `crashsearch extract`, one fresh process per backbone: {each} ({total:.1f} s in all); "
                  f"nearly all of it is imports and Prefect's temporary server starting, the extraction itself "
                  f"is the few seconds above."]
    if device == "cpu":
        lines += ["", "The CPU figures are noisy: the 2 cores were shared with other jobs, and on 2 cores the "
                      "decoder threads and the model compete for the same cores (extraction gives the model "
                      "the cores the decoders leave: here 1 torch thread). r2plus1d_18 and mvit_v2_s ran on 8 "
                      "videos only. GPU figures: `--device cuda`, section \"Extraction on GPU\"."]
    return "\n".join(lines)


def demo_extraction_seconds(ds: Dataset) -> float:
    """Wall time of the demo's extraction: pixels then vjepa2_vitl (random), into a fresh home."""
    from crashsearch.tasks.extract import extract_dataset

    with tempfile.TemporaryDirectory(prefix="bench-demo-") as home:
        start = time.perf_counter()
        for name in ("pixels", "vjepa2_vitl"):
            extract_dataset(ds, name, home=home, weights="random", device="cpu", progress=False, log=lambda m: None)
        return time.perf_counter() - start


def cold_cli_seconds(ds: Dataset) -> dict[str, float]:
    """Wall time of ``crashsearch extract`` in a fresh process per backbone (imports, Prefect's
    temporary server, backbone construction and extraction), into a fresh home."""
    import subprocess

    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        env = {**os.environ, "PREFECT_HOME": str(Path(tmp) / "prefect"), "PREFECT_LOGGING_LEVEL": "WARNING"}
        for name in ("pixels", "vjepa2_vitl"):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "crashsearch.flows.cli", "extract", "--home", str(Path(tmp) / "home"),
                            "--dataset", str(ds.root), "--backbone", name, "--weights", "random"],
                           cwd=ROOT, env=env, check=True, capture_output=True)
            out[name] = time.perf_counter() - start
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--backbones", default=None, help="comma list (default: all on cpu, vjepa2_vitl on cuda)")
    p.add_argument("--weights", default=None, help="default: random (cpu), random-full (cuda)")
    p.add_argument("--dataset", default=None, help="an existing dataset folder instead of a generated one")
    p.add_argument("--videos", type=int, default=None, help="videos to generate (default 48 cpu, 64 cuda)")
    p.add_argument("--pipeline-videos", type=int, default=None,
                   help="videos per backbone (default: all; 8 for r2plus1d_18 and mvit_v2_s on cpu)")
    p.add_argument("--workers", type=int, default=None, help="decoder threads (default 2 cpu, all cores cuda)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--decode-videos", type=int, default=None,
                   help="videos for the decode-rate measurements (default: the pipeline's)")
    p.add_argument("--model-seconds", type=float, default=3.0, help="timing budget of the model-alone loop")
    p.add_argument("--work-dir", default=None, help="where generated videos are kept (default: a temp folder)")
    p.add_argument("--no-readme", action="store_true", help="print only; do not update benchmarks/README.md")
    p.add_argument("--no-cli", action="store_true", help="skip timing the cold `crashsearch extract` runs")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here", file=sys.stderr)
        return 2
    args.weights = args.weights or ("random-full" if cuda else "random")
    args.workers = args.workers or ((os.cpu_count() or 2) if cuda else 2)
    names = args.backbones.split(",") if args.backbones else (["vjepa2_vitl"] if cuda else list_backbones())
    unknown = [n for n in names if n not in list_backbones()]
    if unknown:
        print(f"unknown backbone(s) {unknown}; registered: {', '.join(list_backbones())}", file=sys.stderr)
        return 2

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-extract-data-"))
    t0 = time.perf_counter()
    if args.dataset:
        ds = load_dataset(args.dataset)
        data = f"{len(ds.videos)} videos of {ds.name}"
    elif cuda:
        ds = hd_dataset(work / "hd720", args.videos or 64)
        data = f"{len(ds.videos)} copies of one synthetic 10 s 1280x720 30 fps H.264 video (1 s GOP)"
    else:
        ds = demo_dataset(work / "demo", args.videos or 48)
        data = f"the demo dataset: {len(ds.videos)} synthetic 10 s videos, 160x96, 8 fps, H.264"
    print(f"data ready in {time.perf_counter() - t0:.1f} s: {data}", flush=True)

    rows = [bench_backbone(n, ds, args, args.device) for n in names]
    demo_s = cli_s = None
    if not (cuda or args.dataset):
        demo_s = demo_extraction_seconds(ds)
        print(f"demo extraction (pixels + vjepa2_vitl, {len(ds.videos)} videos): {demo_s:.1f} s")
        if not args.no_cli:
            cli_s = cold_cli_seconds(ds)
            print(f"cold `crashsearch extract`: {cli_s}")
    body = table(rows, args, args.device, data, demo_s, cli_s, len(ds.videos))
    print("\n" + body)
    if not args.no_readme:
        title = "Extraction on GPU" if cuda else "Extraction"
        write_section(README, title, body)
        print(f"\nwrote the {title} section of {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
