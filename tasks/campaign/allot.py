"""How a run divides its room: even shares of the policies, and the room kept for replicates.

Shares. A run offers its new cells to the named policies evenly: whenever there is room to fill
(a round in turns mode, a proposal call in the pipeline), each experiment of it goes to the
policy offered the fewest so far in this run, ties to the earlier policy in ``--policies`` order
(``allot``). Over a run the budget is thus split evenly, remainder by order, from the first call
on, whatever the budget: 8 experiments for evolution,tpe,random are offered 3, 3 and 2. What a
policy was offered and did not fill (duplicates, invalid cells, a call that sat out) stays in the
room, and the next offers give it to the policies offered least.

Replicates (``--seeds N``). New cells leave room for the replicates the current top
``LEADERS_TO_CONFIRM`` cells still lack (N runs each; a leader not known yet counts as lacking
N - 1), at most half of what the run may record (``replicate_cap``). So a run ends with its
leaders replicated even when its budget is smaller than one round of proposals.
"""
from __future__ import annotations

LEADERS_TO_CONFIRM = 3  # top cells that get replicate runs before they are reported


def allot(free: int, offered: list[int]) -> list[int]:
    """Split ``free`` experiments among parts already ``offered`` so many: each to the part offered
    the fewest, ties to the earlier part. Returns the part of each (summing to ``free``)."""
    n = len(offered)
    if free <= 0 or n == 0:
        return [0] * n
    # the highest level every part can be raised to with ``free`` (binary search: budgets can be large)
    lo, hi = min(offered), max(offered) + free
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(max(0, mid - o) for o in offered) <= free:
            lo = mid
        else:
            hi = mid - 1
    give = [max(0, lo - o) for o in offered]
    rest = free - sum(give)  # fewer than the parts at the level: one more each, earlier parts first
    for i in range(n):
        if rest == 0:
            break
        if offered[i] + give[i] == lo:
            give[i] += 1
            rest -= 1
    return give


def replicate_cap(seeds: int, room: int) -> int:
    """The most experiments new cells leave for replicates in a run that may record ``room``."""
    return 0 if seeds <= 1 else min(LEADERS_TO_CONFIRM * (seeds - 1), room // 2)


def replicates_owed(runs: list[int], seeds: int) -> int:
    """Replicate runs the leaders still lack: ``runs`` are the top cells' run counts (best first);
    a leader not known yet (fewer than LEADERS_TO_CONFIRM cells) lacks ``seeds - 1``."""
    if seeds <= 1:
        return 0
    runs = list(runs)[:LEADERS_TO_CONFIRM]
    return sum(max(0, seeds - n) for n in runs) + (LEADERS_TO_CONFIRM - len(runs)) * (seeds - 1)
