"""``crashsearch benchmark``: compare search policies on a recorded history (flows/benchmark.py); prints the verdict."""
from __future__ import annotations

import sys


def add_arguments(p) -> None:
    p.add_argument("--campaign", required=True, help="the history: a campaign's own rows or an imported log")
    p.add_argument("--policies", default="random,tpe,evolution", help="comma list; claude and gemini run when their keys are set")
    p.add_argument("--budget", type=int, default=100, help="experiments per run")
    p.add_argument("--repeats", type=int, default=10, help="runs per policy, each with its own seed")
    p.add_argument("--objective", choices=["surrogate", "table"], default="surrogate",
                   help="surrogate: a model fitted to the ok rows answers any cell; table: recorded cells only, misses count")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default: <home>/benchmarks/<campaign>-<timestamp>; for "
                                                "an s3:// home, in its local scratch folder)")
    p.add_argument("--space", default=None, help="the history's space YAML (default: the one the campaign's run or "
                                                 "import kept, else the collision space)")
    p.add_argument("--workers", type=int, default=None, help="processes for the offline policies (default: 2 or the cores)")
    p.add_argument("--round-size", type=int, default=12, help="proposals asked per round, as in a campaign")
    p.add_argument("--max-usd", type=float, default=25.0, help="each LLM agent's dollar budget over all its repeats")


def run(args) -> int:
    """One line on stderr and exit code 2 for a user's mistake."""
    from crashsearch.analysis import policy_benchmark as pb
    from crashsearch.flows.benchmark import benchmark
    from crashsearch.lab.errors import UserError

    try:
        result = benchmark(args.campaign, args.home_dir, policies=args.policies, budget=args.budget,
                           repeats=args.repeats, objective=args.objective, seed=args.seed, out=args.out,
                           space=args.space, workers=args.workers, round_size=args.round_size, max_usd=args.max_usd,
                           log=lambda m: print(m, file=sys.stderr))
    except UserError as exc:  # SurrogateError and SpaceError included
        print(f"crashsearch benchmark: {exc}", file=sys.stderr)
        return 2
    print(result["verdict"])
    for name, p in result["doc"]["policies"].items():
        last = p["best_at"][str(result["doc"]["budget"])]
        shown = ("no AP (all misses, or not reached)" if last["mean"] is None else f"{last['mean']:.4f} " +
                 (f"[{last['lo']:.4f}, {last['hi']:.4f}]" if last["lo"] is not None else "(no interval: one repeat with an AP)"))
        print(f"{name}: best at N={result['doc']['budget']}: {shown}")
    if pb.low_fidelity(result["doc"]):
        print(f"warning: the surrogate's held-out R^2 is {result['doc']['surrogate']['holdout_r2']}, below "
              f"{pb.LOW_FIDELITY_R2}: these curves say little about the real space (see benchmark.md)", file=sys.stderr)
    print(f"wrote {result['md']}")
    return 0
