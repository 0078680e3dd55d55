"""Dedup: each cell is run once per campaign lineage, whoever proposes it.

A proposal is dropped when its cell was already recorded, is in flight, or was claimed earlier
in the same round (first claim wins: when two agents want the same cell, the second is asked
for a replacement). Replicates of leaders are not proposals and do not pass through here.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from crashsearch.agents.base import Proposal
from crashsearch.lab.space import InvalidCell, Space


@dataclass
class Deduper:
    """Claims cell ids for a campaign; counts what it dropped per policy and why."""

    space: Space
    seen: set[int] = field(default_factory=set)  # recorded or in flight
    dropped: Counter = field(default_factory=Counter)  # (policy, reason) -> count
    invalid: list[tuple[Proposal, str]] = field(default_factory=list)

    def claim(self, proposals: list[Proposal], policy: str) -> list[Proposal]:
        """Keep the proposals whose cells are valid here and unclaimed, and claim them.

        Invalid ones (e.g. a backbone without cached features) are collected in ``invalid``
        with the space's one-line reason; duplicates are counted in ``dropped``.
        """
        kept = []
        for proposal in proposals:
            try:
                cell = self.space.validate(proposal.cell.to_dict())
            except InvalidCell as exc:
                self.invalid.append((proposal, exc.reason))
                self.dropped[(policy, "invalid")] += 1
                continue
            if cell.id in self.seen:
                self.dropped[(policy, "duplicate")] += 1
                continue
            self.seen.add(cell.id)
            proposal.cell = cell
            kept.append(proposal)
        return kept

    def counts(self) -> dict[str, dict[str, int]]:
        """{policy: {reason: count}} of everything dropped so far."""
        out: dict[str, dict[str, int]] = {}
        for (policy, reason), count in self.dropped.items():
            out.setdefault(policy, {})[reason] = count
        return out
