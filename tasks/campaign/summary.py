"""What a campaign run did: ``CampaignSummary`` and its text (the CLI prints it, summary.txt holds it);
``build_summary`` gathers it from a run's parts."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from crashsearch.lab.leaderboard import format_interval
from crashsearch.tasks.campaign.allot import allot

if TYPE_CHECKING:  # the engine builds the summary from its context; here it is only a type
    from crashsearch.tasks.campaign.context import RunContext


@dataclass
class CampaignSummary:
    """What a campaign run did; ``format()`` is the text the CLI prints."""

    campaign: str
    dataset: str
    home: str  # the home's location: its folder, or the URL of an object-store home
    recorded: int  # experiments in the log for this campaign (all runs so far)
    new: int  # experiments this run added
    budget: int
    # "budget", "allowance" (the --extend goal), "hours", "exhausted", "failed" (systematic failure,
    # tasks.failfast) or "interrupted"
    stopped: str
    wall_seconds: float
    train_seconds: float
    leaderboard: pd.DataFrame
    per_policy: dict[str, dict[str, Any]]
    dedup: dict[str, dict[str, int]]
    failures: int
    code_bugs: list[str] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)
    weights: dict[str, str] = field(default_factory=dict)
    stop_line: str = ""  # why a failed campaign stopped, one line
    mode: str = "turns"  # the propose mode
    pipeline: dict[str, Any] = field(default_factory=dict)  # busy fraction, staleness, ... (pipeline mode)
    notes: list[str] = field(default_factory=list)  # warnings: a tiny validation split, a policy short of its share
    min_runs: int = 1  # the leaderboard lists only cells with at least this many runs (others left out)
    extend: int | None = None  # the run's --extend allowance
    kept: tuple[int, int] = (0, 0)  # kept head files and their bytes (tasks/keep.py)

    @property
    def best_ap(self) -> float | None:
        return None if self.leaderboard.empty else float(self.leaderboard.iloc[0]["mean_ap"])

    def format(self) -> str:
        stopped = f"the --extend {self.extend} allowance" if self.stopped == "allowance" else self.stopped
        lines = [f"campaign {self.campaign} on {self.dataset}: {self.new} new experiments "
                 f"({self.recorded}/{self.budget} recorded, stopped on {stopped}) in {self.wall_seconds:.1f}s "
                 f"({self.train_seconds:.1f}s training, {self.failures} failed)"]
        random_weights = sorted(b for b, w in self.weights.items() if w == "random")
        if random_weights:
            lines.append(f"note: backbones {', '.join(random_weights)} use RANDOM weights (offline); AP reflects that")
        if self.stop_line:
            lines.append(self.stop_line)
        if self.pipeline:
            p = self.pipeline
            lines.append(f"pipeline: trainers busy {p['busy_fraction']:.0%} of the time, mean staleness "
                         f"{p['mean_staleness']:.1f} results, {p['proposal_calls']} proposal calls, "
                         f"{p['tokens_per_experiment']:.0f} LLM tokens per recorded experiment")
            if p.get("starved_fraction", 0.0) >= 0.2:
                now = f"automatic, at most {p['lookahead']}" if p.get("lookahead_auto") else f"now {p['lookahead']}"
                lines.append(f"hint: the trainers waited for proposals {p['starved_fraction']:.0%} of the time after "
                             f"their first batch; a larger --lookahead ({now}) or --max-calls-in-flight keeps them "
                             f"busier, at the price of staler proposals")
        if self.kept[0]:
            lines.append(f"kept weights: {self.kept[0]} heads, {self.kept[1] / 2**20:.2f} MiB under "
                         f"{self.home.rstrip('/')}/campaigns/{self.campaign}/models")
        for line in self.unavailable:
            lines.append(f"unavailable: {line}")
        for line in self.notes:
            lines.append(f"note: {line}")
        lines.append("policy        proposed  dedup-dropped  best val AP  tokens  cost $")
        for name, stats in self.per_policy.items():
            dropped = sum(self.dedup.get(name, {}).values())
            best = stats.get("best_ap")
            lines.append(f"{name:<13} {stats['proposed']:>8}  {dropped:>13}  {best if best is None else round(best, 4)!s:>11}"
                         f"  {stats['tokens']:>6}  {stats['cost_usd']:>6.3f}")
        if not self.leaderboard.empty:
            lines.append("leaderboard (mean validation AP over replicates, 95% interval)" + (
                f"; only cells with at least {self.min_runs} runs are listed, ranked among all cells "
                f"(the missing ranks have fewer runs):" if self.min_runs > 1 else ":"))
            for row in self.leaderboard.itertuples():  # ranks and intervals of lab.leaderboard, as everywhere
                lines.append(f"  {row.rank}. AP {row.mean_ap:.4f} {format_interval(row.ci_lo, row.ci_hi, row.n)} n={row.n}  "
                             f"{row.backbone}/{row.encoder}/{row.size} {row.loss} lr={row.lr} bs={row.batch_size} "
                             f"window={row.window_s}s aug={row.augment}  (cell {row.cell_id})")
        for bug in self.code_bugs:
            lines.append(f"code bug flagged: {bug}  -> fix it, then `crashsearch bugfix --note ...`")
        return "\n".join(lines)


def build_summary(ctx: RunContext, *, campaign: str, dataset: str, home: str, stopped: str, stats: dict,
                  stop_line: str, notes: list[str], weights: dict[str, str], kept: tuple[int, int]) -> CampaignSummary:
    """What the run did, from its parts: ``stats`` are the pipeline's (empty in turns mode), ``notes``
    the run's warnings (the policies short of their share are added here)."""
    ledger, proposers = ctx.ledger, ctx.proposers
    df = ledger.history
    per_policy = _per_policy(df, proposers.policies)
    stats = dict(stats)
    if stats:
        names = {p.name for p in proposers.policies}
        tokens = sum(s["tokens"] for n, s in per_policy.items() if n in names)
        stats["tokens_per_experiment"] = tokens / max(ledger.new, 1)
    seeds = ctx.config.seeds
    board = ledger.view().leaderboard(5)
    min_runs = min(seeds, int(board["n"].max()) if len(board) else 1)
    confirmed = board[board["n"] >= min_runs]
    return CampaignSummary(
        campaign=campaign, dataset=dataset, home=home, recorded=ledger.recorded,
        new=ledger.new, budget=ctx.config.budget, stopped=stopped, wall_seconds=ctx.stopping.elapsed(),
        train_seconds=ledger.train_seconds, leaderboard=confirmed if len(confirmed) else board,
        per_policy=per_policy, dedup=ledger.dedup_totals(),
        failures=int((df["status"] == "failed").sum()) if len(df) else 0, code_bugs=ctx.recorder.code_bugs,
        unavailable=proposers.unavailable, weights=weights, mode=ctx.config.propose_mode, pipeline=stats,
        stop_line=stop_line, notes=notes + short_shares(ctx),
        min_runs=min_runs if len(confirmed) and len(confirmed) < len(board) else 1, extend=ctx.config.extend,
        kept=kept)


def _per_policy(df: pd.DataFrame, policies: list) -> dict[str, dict[str, Any]]:
    """Proposed, best AP, tokens and cost per policy (and the replicate, heal and rerun jobs)."""
    per_policy: dict[str, dict[str, Any]] = {}
    for name in [p.name for p in policies] + ["replicate", "heal", "rerun"]:
        mine = df[df["proposer"] == name] if len(df) else df
        if name in ("replicate", "heal", "rerun") and mine.empty:
            continue
        ok = mine[mine["status"].isin(["ok", "healed"])] if len(mine) else mine
        per_policy[name] = {
            "proposed": int(len(mine)),
            "best_ap": float(ok["val_ap"].max()) if len(ok) and ok["val_ap"].notna().any() else None,
            "tokens": int(mine[["tokens_in", "tokens_out"]].fillna(0).to_numpy().sum()) if len(mine) else 0,
            "cost_usd": float(mine["cost_usd"].fillna(0).sum()) if len(mine) else 0.0,
        }
    for policy in policies:  # LLM agents know their true totals (rejected proposals, diagnoses)
        usage = policy.usage()
        if usage and policy.name in per_policy:
            per_policy[policy.name]["tokens"] = int(usage.get("tokens_in", 0) + usage.get("tokens_out", 0))
            per_policy[policy.name]["cost_usd"] = float(usage.get("cost_usd", 0.0))
    return per_policy


def short_shares(ctx: RunContext) -> list[str]:
    """One line per policy that claimed fewer new cells in this run than its even share, and why."""
    proposers = ctx.proposers
    fair = allot(sum(proposers.claimed.values()), [0] * len(proposers.policies))
    lines = []
    dropped = ctx.ledger.deduper.counts()
    for policy, share in zip(proposers.policies, fair):
        got = proposers.claimed[policy.name]
        if got >= share:
            continue
        drops = dropped.get(policy.name, {})
        why = proposers.sat_out.get(policy.name) or (
            f"{sum(drops.values())} of its proposals were dropped ({', '.join(f'{k} {v}' for k, v in drops.items())})"
            if drops else "it returned fewer cells than it was asked for")
        lines.append(f"{policy.name} proposed {got} of its even share {share} of this run's new cells: {why}")
    return lines
