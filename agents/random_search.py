"""Uniform random search: the reference policy, and the fallback every other policy uses.

Like Optuna's RandomSampler it is tiny and seeded. This module also holds what the offline
policies share: ``SeededPolicy`` (a policy that owns a ``random.Random`` and saves it in its
JSON state) and ``draw_untried`` (a uniform cell that is not taken yet).
"""
from __future__ import annotations

import itertools
import random
from typing import Any

from crashsearch.agents.base import HistoryView, Policy, Proposal
from crashsearch.lab.space import Cell, Space

# Below this many allowed cells a nearly exhausted space is enumerated instead of rejection-sampled,
# so a small (restricted) space is searched to the last untried cell.
ENUMERATE_LIMIT = 20_000
REJECTION_ATTEMPTS = 64


def draw_untried(space: Space, rng: random.Random, taken: set[int], attempts: int = REJECTION_ATTEMPTS) -> Cell | None:
    """A uniformly random allowed cell whose id is not in ``taken``; None if every cell is taken.

    Tries ``attempts`` uniform draws first; for a space of at most ENUMERATE_LIMIT cells it then
    enumerates the untried cells, for a larger one it gives up (returns None).
    """
    for _ in range(attempts):
        cell = space.sample(rng)[0]
        if cell.id not in taken:
            return cell
    if space.size > ENUMERATE_LIMIT:
        return None
    free = [values for values in itertools.product(*(a.choices for a in space.axes))
            if space.cell_id(dict(zip(space.axis_names, values))) not in taken]
    if not free:
        return None
    return space.validate(dict(zip(space.axis_names, rng.choice(free))))


class SeededPolicy(Policy):
    """A policy driven by one ``random.Random``; its state is that generator, as JSON.

    The generator is seeded from the policy name and the seed, so two policies of a campaign
    given the same seed do not propose the same random cells.
    """

    def __init__(self, space: Space, seed: int = 0, **kwargs: Any):
        super().__init__(space, seed=seed, **kwargs)
        self._rng = random.Random(f"{self.name}:{seed}")

    def get_state(self) -> dict:
        """``{"policy", "seed", "rng"}`` plus what subclasses add; every value JSON-serialisable."""
        version, internal, gauss = self._rng.getstate()
        return {"policy": self.name, "seed": self.seed, "rng": [version, list(internal), gauss]}

    def set_state(self, state: dict) -> None:
        """Restore ``get_state()``. Raises ValueError naming what is wrong with ``state``."""
        if not isinstance(state, dict) or "rng" not in state:
            raise ValueError(f"state for policy {self.name!r} must be a dict with key 'rng', got {str(state)[:80]!r}")
        if state.get("policy", self.name) != self.name:
            raise ValueError(f"state of policy {state.get('policy')!r} cannot restore policy {self.name!r}")
        try:
            version, internal, gauss = state["rng"]
            self._rng.setstate((int(version), tuple(int(x) for x in internal), gauss))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"state['rng'] of policy {self.name!r} is not a saved random state ({exc})") from None
        self.seed = state.get("seed", self.seed)

    def _random_fill(self, taken: set[int], n: int, rationale: str) -> list[Proposal]:
        """Up to n uniform untried cells (``taken`` is updated in place); fewer if the space runs out."""
        out = []
        for _ in range(n):
            cell = draw_untried(self.space, self._rng, taken)
            if cell is None:
                break
            taken.add(cell.id)
            out.append(self._proposal(cell, rationale))
        return out


class RandomPolicy(SeededPolicy):
    """Uniform random search over the (possibly restricted) space, skipping tried and in-flight cells."""

    name = "random"

    def propose(self, view: HistoryView, n: int) -> list[Proposal]:
        """Up to n distinct untried cells drawn uniformly; fewer only when the space is exhausted."""
        return self._random_fill(view.tried_ids(), max(0, n), "uniform random sample")
