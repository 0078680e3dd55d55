"""`crashsearch benchmark`: compare search policies on a recorded history, without a GPU.

Loads a campaign's rows from the store (its own history, or an imported log), runs the policies
with ``tasks.benchmark.run_benchmark`` and writes ``benchmark.json``, ``benchmark.md``,
``best_at_n.png`` and ``runs.csv`` (every experiment of every run) to ``--out`` (default
``<home>/benchmarks/<campaign>-<UTC timestamp>/``). See ``analysis.policy_benchmark`` for the
JSON shape. An object-store home (``s3://...``) is read through the storage seam (the rows, the
campaign's kept space); the outputs, files a person opens, go to its local scratch folder
(``Home.root``), as ``analyze``'s report does.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from crashsearch.analysis import policy_benchmark as pb
from crashsearch.analysis.history import parse_baseline
from crashsearch.lab._io import atomic_write
from crashsearch.lab.errors import UserError
from crashsearch.lab.settings import Home, check_output_path, resolve_home
from crashsearch.lab.campaign_space import campaign_space
from crashsearch.lab.space import Space
from crashsearch.lab.store import Store
from crashsearch.tasks.benchmark import BenchmarkRuns, run_benchmark


def load_history(home: Home, campaign: str, space: Space) -> pd.DataFrame:
    """The campaign's rows. Raises ValueError naming the known campaigns when it has none, or when
    its rows were recorded in another space than ``space`` (pass that space's YAML with --space)."""
    store = Store(home)
    rows = store.experiments(campaign)
    if rows.empty:
        raise store.missing_campaign(campaign, listed=lambda c: not parse_baseline(c))  # control arms left out
    names = set(rows["space"].dropna().astype(str)) if "space" in rows.columns else set()
    if names and names != {space.name}:
        raise UserError(f"campaign {campaign!r} was recorded in space {', '.join(sorted(names))}, not {space.name!r}: "
                         f"pass that space's YAML with --space")
    return rows


def benchmark(campaign: str, home: str | Path | Home | None = None, policies: str | list[str] = "random,tpe,evolution",
              budget: int = 100, repeats: int = 10, objective: str = "surrogate", seed: int = 0,
              out: str | Path | None = None, space: str | Path | None = None, workers: int | None = None,
              round_size: int = 12, max_usd: float = 25.0, policy_kwargs: dict | None = None, log=print) -> dict:
    """Benchmark ``policies`` on a campaign's history and write the outputs.

    Returns {"out", "json", "md", "figure", "doc", "runs"}. Raises ValueError / SurrogateError /
    SpaceError with one line for a user's mistake.
    """
    h = home if isinstance(home, Home) else resolve_home(home)
    if out:  # before any work: a refused --out costs nothing
        check_output_path(h, out)
        if Path(out).exists() and not Path(out).is_dir():
            raise UserError(f"--out {out}: is a file; the benchmark writes a folder of files")
    sp, _ = campaign_space(h, campaign, space)  # no --space: the campaign's own (an import keeps it)
    names = policies.split(",") if isinstance(policies, str) else list(policies)
    history = load_history(h, campaign, sp)
    res = run_benchmark(history, sp, names, budget, repeats, objective=objective, seed=seed, round_size=round_size,
                        workers=workers, policy_kwargs=policy_kwargs, max_usd=max_usd, log=log)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = Path(out) if out else h.root / "benchmarks" / f"{campaign}-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_outputs(res, out_dir, title=f"campaign {campaign}", history=history, seed=seed)


def write_outputs(res: BenchmarkRuns, out_dir: Path, title: str, history: pd.DataFrame, seed: int = 0) -> dict:
    """benchmark.json, benchmark.md, best_at_n.png and runs.csv of a finished benchmark, in ``out_dir``."""
    runs: dict[str, list[np.ndarray]] = {}
    judged: dict[str, list[np.ndarray]] = {}
    spend: dict[str, list] = {}
    for r in res.runs:
        runs.setdefault(r.policy, []).append(r.values)
        judged.setdefault(r.policy, []).append(r.heldout)
        s = spend.setdefault(r.policy, [0, 0.0])
        s[0] += r.tokens
        s[1] += r.cost_usd
    fidelity = res.surrogate.fidelity if res.surrogate is not None else None
    doc = pb.summary(runs, res.budget, res.repeats, res.objective, fidelity, {k: tuple(v) for k, v in spend.items()}, seed,
                     judged)
    verdict = pb.verdict_line(runs, 50, seed, judged)
    figure = pb.plot(runs, res.budget, f"AP at N, {title} ({res.objective}, {res.repeats} repeats)",
                     verdict, out_dir / "best_at_n.png", seed, judged)
    info = _info(res, title, history)
    atomic_write(out_dir / "benchmark.json", lambda f: f.write(json.dumps(doc, indent=2).encode()))
    atomic_write(out_dir / "benchmark.md", lambda f: f.write(pb.markdown(doc, verdict, info, figure.name).encode()))
    table = pd.DataFrame([{"policy": r.policy, "repeat": r.repeat, "seed": r.seed, "n": i + 1, "cell_id": int(c),
                           "val_ap": v, "heldout_ap": h}
                          for r in res.runs
                          for i, (c, v, h) in enumerate(zip(r.cell_ids, r.values,
                                                            r.heldout if r.heldout is not None else [np.nan] * len(r.values)))],
                         columns=["policy", "repeat", "seed", "n", "cell_id", "val_ap", "heldout_ap"])
    atomic_write(out_dir / "runs.csv", lambda f: f.write(table.to_csv(index=False).encode()))
    return {"out": str(out_dir), "json": str(out_dir / "benchmark.json"), "md": str(out_dir / "benchmark.md"),
            "figure": str(figure), "doc": doc, "verdict": verdict, "info": info, "runs": res}


def _info(res: BenchmarkRuns, title: str, history: pd.DataFrame) -> dict:
    sp = res.space
    restricted = [f"{a.name} {len(a.choices)} of {len(a.values)}" for a in sp.axes if len(a.choices) < len(a.values)]
    info = {"title": title, "scope": f"the full history ({len(history):,} rows)",
            "space": f"{sp.name}, {sp.size:,} cells" + (f" (restricted to the values with results: {', '.join(restricted)})"
                                                         if restricted else "")}
    if res.surrogate is not None:
        s = res.surrogate
        info["surrogate"] = (f"scikit-learn {s.kind} on {s.n_rows:,} ok rows ({s.n_cells:,} cells), "
                             f"{s.fidelity['folds']}-fold by cell")
        info["noise"] = (s.noise["reason"] or f"Seed noise: replicate residuals of {s.noise['cells']:,} cells "
                                                f"(sd {s.noise['sd']:.4f}), drawn with replacement.")
    notes = [f"{p}: skipped ({why})" for p, why in res.skipped.items()]
    for policy in dict.fromkeys(r.policy for r in res.runs):
        own = [r for r in res.runs if r.policy == policy]
        short = [r for r in own if len(r.values) < res.budget]
        if short:
            notes.append(f"{policy}: {len(short)} of {len(own)} repeats stopped before the budget "
                         f"({'; '.join(sorted({r.stopped for r in short}))}); best-at-N uses the repeats that reached N")
        if res.objective == "table":
            misses = sum(int(np.isnan(r.values).sum()) for r in own)
            notes.append(f"{policy}: {misses:,} of {sum(len(r.values) for r in own):,} experiments were misses or had no AP")
    info["notes"] = notes
    agg = {}
    for r in res.runs:
        a = agg.setdefault(r.policy, {"policy": 0.0, "objective": 0.0, "bookkeeping": 0.0, "cpu": 0.0})
        for k in a:
            a[k] += r.seconds.get(k, 0.0)
    info["timing"] = [f"wall: {res.seconds['total']:.1f}s in all; fitting the objective {res.seconds['fit']:.1f}s; "
                      f"the runs {res.seconds['runs']:.1f}s on {res.workers} worker process(es)"]
    info["timing"] += [f"{p}: policy {a['policy']:.2f}s, objective {a['objective']:.2f}s, bookkeeping {a['bookkeeping']:.2f}s "
                       f"(wall seconds summed over repeats; {a['cpu']:.1f} CPU seconds)" for p, a in agg.items()]
    return info

