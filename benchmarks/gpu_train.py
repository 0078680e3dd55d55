"""GPU throughput of the training engine: experiments per GPU-hour, naive eager loop vs batched.

Random features the size of a real campaign's (1500 videos x 16 steps x 1024 dims, on the
device), 20 epochs, batch 64, window 2 s. For each encoder (default: transformer, gru, retention,
zipformer) it times

- *naive*: the textbook loop, one experiment at a time: an ``nn.Module``, ``torch.optim.AdamW``,
  ``FeatureSet.window`` per step, then ``evaluate_heads`` (``--naive-runs`` experiments);
- *batched*: ``tasks.train.train_batch`` on ``--models`` same-shape cells (varying lr, loss and
  augmentation), trained as one vectorised model;

and reports seconds per experiment and experiments per GPU-hour (the goal: >= 10,000 batched).
Results go to ``<out>/gpu_train.json`` after every encoder, so a run cut short keeps what it
measured, and as a table on stdout.

    python benchmarks/gpu_train.py --device cuda --out /tmp/bench        # the real measurement
    python benchmarks/gpu_train.py --device cpu --quick --out /tmp/bench # proves the script runs
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crashsearch.lab.features import FeatureSet  # noqa: E402
from crashsearch.lab.space import Space  # noqa: E402
from crashsearch.models.losses import binary_focal_loss, loss_for  # noqa: E402
from crashsearch.models.registry import create_head  # noqa: E402
from crashsearch.tasks.errors import TrainingError  # noqa: E402
from crashsearch.tasks.evaluate import evaluate_heads  # noqa: E402
from crashsearch.tasks.train import Recipe, train_batch  # noqa: E402

GOAL_PER_HOUR = 10_000


def random_features(videos: int, steps: int, dim: int, device: str, hz: float = 4.0, seed: int = 0) -> FeatureSet:
    """Gaussian features on ``device`` with 30% positives carrying a weak ramp; 70/15/15 split."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(videos, generator=g) < 0.3).float()
    x = torch.randn(videos, steps, dim, generator=g)
    x[:, :, :8] += 0.3 * y[:, None, None] * torch.linspace(0, 2, steps)[:, None]
    n_train, n_val = int(videos * 0.7), int(videos * 0.15)
    split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * (videos - n_train - n_val))
    return FeatureSet("random", "vjepa2_vitl", x.to(device), y.to(device), split,
                      torch.arange(-steps + 1, 1, device=device) / hz, [str(i) for i in range(videos)], hz)


def cells_for(space: Space, encoder: str, size: str, batch: int, n: int) -> list:
    lrs, losses = [0.0001, 0.0003, 0.001, 0.003], ["bce", "focal_1.0", "focal_2.0", "focal_3.0"]
    return [space.validate(dict(backbone="vjepa2_vitl", encoder=encoder, size=size, loss=losses[(i // 4) % 4],
                                lr=lrs[i % 4], batch_size=batch, window_s=2.0,
                                augment="jitter" if (i // 16) % 2 else "none")) for i in range(n)]


def naive_experiment(cell, features: FeatureSet, seed: int, recipe: Recipe) -> dict:
    """One experiment the textbook way; returns its metrics. The baseline the engine must beat."""
    torch.manual_seed(seed)
    dev = features.device
    model = create_head(cell["encoder"], cell["size"], features.dim).to(dev)
    optimiser = torch.optim.AdamW(model.parameters(), lr=float(cell["lr"]), weight_decay=recipe.weight_decay)
    rows = features.indices("train")
    examples = rows.repeat(len(recipe.horizons_s))  # (E,)
    ends = torch.tensor(recipe.horizons_s, device=dev).repeat_interleave(rows.numel())  # (E,)
    labels = features.y[examples]
    pos_weight = float((labels.numel() - labels.sum()) / labels.sum())
    gamma, batch, window_s = loss_for(cell["loss"]), int(cell["batch_size"]), float(cell["window_s"])
    model.train()
    for _ in range(recipe.epochs):
        perm = torch.randperm(examples.numel(), device=dev)
        for start in range(0, perm.numel(), batch):
            idx = perm[start:start + batch]
            loss = binary_focal_loss(model(features.window(examples[idx], ends[idx], window_s)), labels[idx],
                                     gamma, pos_weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    model.eval()
    return evaluate_heads(lambda w: model(w)[None], features, window_s, recipe.horizons_s)[0]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_encoder(encoder: str, features: FeatureSet, space: Space, recipe: Recipe, args) -> dict:
    device = str(features.device)
    cells = cells_for(space, encoder, args.size, args.batch, max(args.models))
    warm = Recipe(epochs=1, weight_decay=recipe.weight_decay, class_balance=True, horizons_s=recipe.horizons_s)
    naive_experiment(cells[0], features, 0, warm)  # warm-up: CUDA context, cuBLAS, first-call costs
    train_batch(cells[:2], features, [0, 1], fixed=vars_of(warm))
    out: dict = {"encoder": encoder, "size": args.size}

    sync(device)
    t0 = time.perf_counter()
    naive_aps = [naive_experiment(cells[i], features, i, recipe)["val_ap"] for i in range(args.naive_runs)]
    sync(device)
    naive_s = (time.perf_counter() - t0) / args.naive_runs
    out.update(naive_s_per_exp=naive_s, naive_per_hour=3600 / naive_s, naive_mean_val_ap=float(np.mean(naive_aps)))

    out["batched"] = []
    for models in args.models:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        t0 = time.perf_counter()
        results = train_batch(cells[:models], features, list(range(models)), fixed=vars_of(recipe),
                              max_models=models)
        sync(device)
        seconds = time.perf_counter() - t0
        ok = [r for r in results if not isinstance(r, TrainingError)]
        errors = sorted({r.error_class for r in results if isinstance(r, TrainingError)})
        out["batched"].append(dict(
            models=models, seconds=seconds, s_per_exp=seconds / models, per_hour=3600 * models / seconds,
            speedup=naive_s / (seconds / models), failed=models - len(ok), errors=errors,
            train_s_per_exp=float(np.mean([r.train_seconds for r in ok])) if ok else None,
            eval_s_per_exp=float(np.mean([r.eval_seconds for r in ok])) if ok else None,
            peak_mem_mb=max((r.peak_mem_mb for r in ok), default=None), params=ok[0].params if ok else None,
            mean_val_ap=float(np.mean([r.metrics["val_ap"] for r in ok])) if ok else None))
    return out


def vars_of(recipe: Recipe) -> dict:
    return {"epochs": recipe.epochs, "weight_decay": recipe.weight_decay, "class_balance": recipe.class_balance,
            "horizons_s": list(recipe.horizons_s)}


def report(rows: list[dict], quick: bool = False) -> str:
    lines = ["| encoder | naive s/exp | naive exp/h | models | batched s/exp | batched exp/h | speed-up | peak MB | goal |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        for b in r["batched"]:
            goal = "n/a (quick)" if quick else "met" if b["per_hour"] >= GOAL_PER_HOUR else "missed"
            lines.append(f"| {r['encoder']} | {r['naive_s_per_exp']:.2f} | {r['naive_per_hour']:,.0f} | {b['models']} | "
                         f"{b['s_per_exp']:.3f} | {b['per_hour']:,.0f} | {b['speedup']:.1f}x | "
                         f"{b['peak_mem_mb'] or float('nan'):,.0f} | {goal} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda or cpu")
    p.add_argument("--out", required=True, help="folder for gpu_train.json")
    p.add_argument("--quick", action="store_true", help="tiny sizes (120 x 16 x 64, 2 epochs, 4 models): a smoke run")
    p.add_argument("--encoders", default="transformer,gru,retention,zipformer")
    p.add_argument("--size", default="small")
    p.add_argument("--videos", type=int, default=1500)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--models", default="64", help="group sizes to time, comma-separated (e.g. 64,128)")
    p.add_argument("--naive-runs", type=int, default=2)
    p.add_argument("--time-limit-s", type=float, default=480, help="skip the remaining encoders after this long")
    args = p.parse_args(argv)
    if args.quick:
        args.videos, args.dim, args.epochs, args.models, args.naive_runs = 120, 64, 2, "4", 1
    args.models = [int(m) for m in args.models.split(",")]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    space = Space.load()
    recipe = Recipe.from_fixed({**space.fixed, "epochs": args.epochs})
    features = random_features(args.videos, args.steps, args.dim, args.device)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    summary = {"device": device_name, "torch": torch.__version__, "quick": args.quick,
               "features": [args.videos, args.steps, args.dim], "epochs": args.epochs, "batch_size": args.batch,
               "window_s": 2.0, "goal_per_hour": GOAL_PER_HOUR, "date": time.strftime("%Y-%m-%d"), "encoders": []}
    for encoder in args.encoders.split(","):
        if time.perf_counter() - started > args.time_limit_s:
            summary.setdefault("skipped", []).append(encoder)
            print(f"{encoder}: skipped (over --time-limit-s {args.time_limit_s:g})", flush=True)
            continue
        row = bench_encoder(encoder, features, space, recipe, args)
        summary["encoders"].append(row)
        (out_dir / "gpu_train.json").write_text(json.dumps(summary, indent=2))
        best = max(row["batched"], key=lambda b: b["per_hour"])
        print(f"{encoder:>12}: naive {row['naive_s_per_exp']:.2f} s/exp ({row['naive_per_hour']:,.0f}/h), batched "
              f"{best['s_per_exp']:.3f} s/exp ({best['per_hour']:,.0f}/h, x{best['models']}), "
              f"speed-up {best['speedup']:.1f}x, failed {best['failed']}", flush=True)
    summary["wall_s"] = time.perf_counter() - started
    (out_dir / "gpu_train.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{device_name}, features {args.videos}x{args.steps}x{args.dim}, {args.epochs} epochs, batch {args.batch}\n")
    print(report(summary["encoders"], args.quick))
    print(f"\nwrote {out_dir / 'gpu_train.json'}")
    failed = sum(b["failed"] for r in summary["encoders"] for b in r["batched"])
    if failed:
        print(f"{failed} batched experiments failed; see 'errors' in the JSON", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
