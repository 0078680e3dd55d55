"""Evolutionary search: mutate and recombine the leaders, plus random immigrants.

Each proposal is one of three moves, drawn independently:
- random immigrant (``immigrant_rate``): a uniform untried cell, so the search never stops exploring;
- crossover (``crossover_rate``): two leaders' children, taking each axis group (arch, loss, train,
  data) whole from one parent, because an architecture (backbone + encoder + size) works as a unit;
- mutation (the rest): a leader with one axis changed (or two, ``two_axis_rate``); a numeric axis
  (learning rate, batch size, window) mostly steps to an adjacent value, which is a local move.
Parents are drawn rank-weighted from the ``elite`` best cells of ``view.leaderboard`` (the best has
weight elite, the last weight 1). Until ``min_results`` cells have a validation AP every proposal
is random. The rationale says which move made the cell, e.g. "mutate leader 1234 (AP 0.912): lr 0.001->0.003".
"""
from __future__ import annotations

from typing import Any

from crashsearch.agents.base import HistoryView, Proposal
from crashsearch.agents.random_search import SeededPolicy
from crashsearch.lab.errors import UserError
from crashsearch.lab.space import GROUPS, Cell, InvalidCell, Space

ATTEMPTS_PER_MOVE = 24


class EvolutionPolicy(SeededPolicy):
    """Mutation and crossover of the leaderboard's best cells, with random immigrants."""

    name = "evolution"

    def __init__(self, space: Space, seed: int = 0, min_results: int = 10, elite: int = 10,
                 immigrant_rate: float = 0.2, crossover_rate: float = 0.3, two_axis_rate: float = 0.3,
                 adjacent_rate: float = 0.7, **kwargs: Any):
        super().__init__(space, seed=seed, **kwargs)
        for key, rate in [("immigrant_rate", immigrant_rate), ("crossover_rate", crossover_rate),
                          ("two_axis_rate", two_axis_rate), ("adjacent_rate", adjacent_rate)]:
            if not 0.0 <= rate <= 1.0:
                raise UserError(f"EvolutionPolicy {key}={rate} must lie in [0, 1]")
        if immigrant_rate + crossover_rate > 1.0:
            raise UserError(f"EvolutionPolicy immigrant_rate + crossover_rate = {immigrant_rate + crossover_rate} exceeds 1")
        if min_results < 1 or elite < 1:
            raise UserError(f"EvolutionPolicy needs min_results >= 1 and elite >= 1, got {min_results}, {elite}")
        self.min_results, self.elite = min_results, elite
        self.immigrant_rate, self.crossover_rate = immigrant_rate, crossover_rate
        self.two_axis_rate, self.adjacent_rate = two_axis_rate, adjacent_rate

    def propose(self, view: HistoryView, n: int) -> list[Proposal]:
        """Up to n distinct untried cells made by mutation, crossover or immigration (see the module)."""
        if n <= 0:
            return []
        taken = view.tried_ids()
        ranked = self._ranked(view)
        if len(ranked) < self.min_results:
            return self._random_fill(taken, n, f"random: {len(ranked)} of {self.min_results} results needed to evolve")
        leaders = ranked[: self.elite]
        weights = [len(leaders) - i for i in range(len(leaders))]
        out: list[Proposal] = []
        for _ in range(n):
            roll = self._rng.random()
            made = None
            if roll < self.immigrant_rate:
                out += self._random_fill(taken, 1, "random immigrant")
                continue
            if roll < self.immigrant_rate + self.crossover_rate and len(leaders) >= 2:
                made = self._crossover(leaders, weights, taken)
            if made is None:
                made = self._mutation(leaders, weights, taken)
            if made is None:
                out += self._random_fill(taken, 1, "random immigrant (every nearby move of the leaders is tried)")
                continue
            cell, rationale = made
            taken.add(cell.id)
            out.append(self._proposal(cell, rationale))
        return out

    # ---- moves -------------------------------------------------------------------------
    def _ranked(self, view: HistoryView) -> list[tuple[Cell, float]]:
        """Cells with results inside this (possibly restricted) space, best mean AP first.

        Only the first max(elite, min_results) are built: nothing reads further, and building a
        Cell for every result made each round cost O(history) (most of a 1,000-experiment run).
        """
        board = view.leaderboard(k=max(1, len(view.ok)))
        wanted = max(self.elite, self.min_results)
        ranked = []
        for cell_id, ap in zip(board["cell_id"], board["mean_ap"]):
            try:
                ranked.append((self.space.cell(int(cell_id)), float(ap)))
            except InvalidCell:
                continue  # outside the restriction
            if len(ranked) == wanted:
                break
        return ranked

    def _mutation(self, leaders, weights, taken: set[int]) -> tuple[Cell, str] | None:
        axes = [a for a in self.space.axes if len(a.choices) > 1]
        if not axes:
            return None
        for _ in range(ATTEMPTS_PER_MOVE):
            parent, ap = self._rng.choices(leaders, weights)[0]
            k = 2 if len(axes) > 1 and self._rng.random() < self.two_axis_rate else 1
            values, changes = parent.to_dict(), []
            for axis in self._rng.sample(axes, k):
                new = self._mutate_value(axis, values[axis.name])
                changes.append(f"{axis.name} {values[axis.name]}->{new}")
                values[axis.name] = new
            cell = self.space.validate(values)
            if cell.id not in taken:
                return cell, f"mutate leader {parent.id} (AP {ap:.3f}): " + ", ".join(changes)
        return None

    def _mutate_value(self, axis, current: Any) -> Any:
        choices = list(axis.choices)
        numeric = all(isinstance(v, (int, float)) for v in choices)
        if numeric and current in choices and self._rng.random() < self.adjacent_rate:
            i = choices.index(current)
            return self._rng.choice([choices[j] for j in (i - 1, i + 1) if 0 <= j < len(choices)])
        return self._rng.choice([v for v in choices if v != current])

    def _crossover(self, leaders, weights, taken: set[int]) -> tuple[Cell, str] | None:
        groups = [g for g in GROUPS if self.space.group_axes(g)]
        for _ in range(ATTEMPTS_PER_MOVE):
            (a, _), (b, _) = self._rng.choices(leaders, weights, k=2)
            if a.id == b.id:
                continue
            from_a = [g for g in groups if self._rng.random() < 0.5]
            values = {axis.name: (a if axis.group in from_a else b)[axis.name] for axis in self.space.axes}
            cell = self.space.validate(values)
            if cell.id not in taken and cell.id not in (a.id, b.id):
                from_b = [g for g in groups if g not in from_a]
                return cell, f"cross {a.id} x {b.id}: {'+'.join(from_a)} from {a.id}, {'+'.join(from_b)} from {b.id}"
        return None
