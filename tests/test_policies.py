"""The offline proposal policies (random, tpe, evolution) and the policy registry.

One parametrized contract list runs every offline policy through the same checks, as Optuna's
sampler tests do: valid, distinct, untried cells (also of a restricted sub-space), same seed same
proposals, JSON state that restores the exact next proposals, empty and ~100-row histories, a
nearly exhausted space. Then behaviour tests per policy and the registry.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys

import pandas as pd
import pytest

from crashsearch import agents
from crashsearch.agents import OFFLINE_POLICIES, create_policy, list_policies, policy_options, register_policy
from crashsearch.agents.base import VIEW_COLUMNS, HistoryView, PolicyUnavailable
from crashsearch.lab.space import Cell, Space

GOOD = {"backbone": "vjepa2_vitl", "encoder": "zipformer"}  # the planted region: 1/40 of the cells


@pytest.fixture(scope="module")
def space() -> Space:
    return Space.load()


def planted_ap(cell: Cell) -> float:
    """A synthetic objective: additive bonuses for the planted backbone and encoder, a little noise."""
    noise = random.Random(cell.id).random()
    return (0.5 + 0.15 * (cell["backbone"] == GOOD["backbone"]) + 0.15 * (cell["encoder"] == GOOD["encoder"])
            + 0.02 * cell.focal_gamma / 3 + 0.03 * noise)


def make_view(space: Space, rows: list[tuple[Cell, str, float | None]], in_flight=()) -> HistoryView:
    """A HistoryView from (cell, status, val_ap) rows, with VIEW_COLUMNS plus one column per axis."""
    records = [{"experiment_id": f"exp-{i}", "cell_id": cell.id, "status": status, "val_ap": ap,
                "val_auc": None if ap is None else ap - 0.05, "proposer": "test", "rationale": "",
                "error_class": "NaNLossError" if status == "failed" else None,
                "error_message": "loss is nan" if status == "failed" else None,
                "finished_at": pd.Timestamp("2025-01-01", tz="UTC") + pd.Timedelta(minutes=i), **cell.to_dict()}
               for i, (cell, status, ap) in enumerate(rows)]
    frame = pd.DataFrame(records, columns=VIEW_COLUMNS + space.axis_names)
    return HistoryView(space, frame, in_flight=frozenset(in_flight))


def history_rows(space: Space, n: int, seed: int = 0) -> list[tuple[Cell, str, float | None]]:
    """n cells of ``space``: mostly ok, every tenth failed (no AP), some healed, a few replicated."""
    rows = []
    for i, cell in enumerate(space.sample(random.Random(seed), n)):
        if i % 10 == 3:
            rows.append((cell, "failed", None))
        elif i % 10 == 7:
            rows.append((cell, "healed", planted_ap(cell)))
        else:
            rows.append((cell, "ok", planted_ap(cell)))
        if i % 25 == 0:
            rows.append((cell, "ok", planted_ap(cell) + 0.01))  # a replicate
    return rows


def history(space: Space, n: int, seed: int = 0) -> HistoryView:
    """A view of ``history_rows`` plus 3 cells in flight."""
    in_flight = [c.id for c in space.sample(random.Random(seed + 1000), 3)]
    return make_view(space, history_rows(space, n, seed), in_flight)


def ids(proposals) -> list[int]:
    return [p.cell.id for p in proposals]


# ---- the contract, every offline policy ------------------------------------------------------
@pytest.mark.parametrize("name", OFFLINE_POLICIES)
@pytest.mark.parametrize("n_rows", [0, 100])
def test_proposals_are_valid_distinct_and_untried(space, name, n_rows):
    view = history(space, n_rows) if n_rows else HistoryView.empty(space)
    policy = create_policy(name, space, seed=3)
    proposals = policy.propose(view, 12)
    assert len(proposals) == 12
    assert len(set(ids(proposals))) == 12
    assert not set(ids(proposals)) & view.tried_ids()
    for p in proposals:
        assert space.validate(p.cell.to_dict()).id == p.cell.id
        assert p.policy == name and p.rationale
    assert policy.propose(view, 0) == []


@pytest.mark.parametrize("name", OFFLINE_POLICIES)
def test_restricted_subspace_is_respected(space, name):
    sub = space.restrict(backbone=["pixels", "r2plus1d_18"], encoder=["gru", "tcn", "zipformer"], lr=[0.001, 0.003])
    # history from both the sub-space and the full space: leaders outside the restriction exist
    view = make_view(space, history_rows(space, 60, seed=1) + history_rows(sub, 60, seed=2),
                     in_flight=[c.id for c in sub.sample(random.Random(3), 5)])
    proposals = create_policy(name, sub, seed=0).propose(view, 10)
    assert len(set(ids(proposals))) == 10
    assert not set(ids(proposals)) & view.tried_ids()
    for p in proposals:
        assert sub.contains(p.cell) and sub.validate(p.cell.to_dict()).id == p.cell.id


@pytest.mark.parametrize("name", OFFLINE_POLICIES)
def test_same_seed_same_proposals(space, name):
    view = history(space, 100)
    first = ids(create_policy(name, space, seed=7).propose(view, 10))
    assert ids(create_policy(name, space, seed=7).propose(view, 10)) == first
    assert ids(create_policy(name, space, seed=8).propose(view, 10)) != first


@pytest.mark.parametrize("name", OFFLINE_POLICIES)
def test_state_round_trips_through_json(space, name):
    view = history(space, 100)
    original = create_policy(name, space, seed=5)
    original.propose(view, 6)  # move the state away from the seed's
    saved = json.loads(json.dumps(original.get_state()))
    restored = create_policy(name, space, seed=12345)
    restored.set_state(saved)
    later = history(space, 110, seed=4)
    assert ids(restored.propose(later, 8)) == ids(original.propose(later, 8))
    assert ids(restored.propose(later, 8)) == ids(original.propose(later, 8))


@pytest.mark.parametrize("name", OFFLINE_POLICIES)
def test_set_state_rejects_a_foreign_state(space, name):
    policy = create_policy(name, space)
    other = "tpe" if name != "tpe" else "random"
    with pytest.raises(ValueError, match=f"state of policy '{other}' cannot restore policy '{name}'"):
        policy.set_state(create_policy(other, space).get_state())
    with pytest.raises(ValueError, match="must be a dict with key 'rng'"):
        policy.set_state({"seed": 1})


@pytest.mark.parametrize("name", OFFLINE_POLICIES)
def test_nearly_exhausted_space_yields_only_the_untried_cells(space, name):
    tiny = Space.from_dict({"name": "tiny", "groups": {"arch": {"encoder": ["gru", "tcn", "mamba"]},
                                                         "train": {"lr": [0.001, 0.01]}, "data": {"augment": ["none", "jitter"]}}})
    cells = [tiny.cell(i) for i in range(tiny.size)]
    view = make_view(tiny, [(c, "ok", 0.5 + 0.01 * c.id) for c in cells[:9]], in_flight=[cells[9].id])
    proposals = create_policy(name, tiny, seed=0).propose(view, 5)
    assert sorted(ids(proposals)) == [10, 11]


@pytest.mark.parametrize("name", OFFLINE_POLICIES)
def test_a_short_campaign_never_repeats_a_cell(space, name):
    policy, rows = create_policy(name, space, seed=1), []
    for _ in range(6):
        proposals = policy.propose(make_view(space, rows), 8)
        results = [{"cell_id": p.cell.id, **p.cell.to_dict(), "status": "ok", "val_ap": planted_ap(p.cell)} for p in proposals]
        policy.observe(results)
        rows += [(p.cell, "ok", planted_ap(p.cell)) for p in proposals]
    assert len(rows) == 48 and len({c.id for c, _, _ in rows}) == 48


# ---- behaviour of each policy ---------------------------------------------------------------
def test_evolution_mutations_are_neighbours_of_leaders(space):
    view = history(space, 100)
    leaders = {int(i): space.cell(int(i)) for i in view.leaderboard(k=10)["cell_id"]}
    policy = create_policy("evolution", space, seed=2, immigrant_rate=0.0, crossover_rate=0.0)
    proposals = policy.propose(view, 20)
    assert len(proposals) == 20
    n_axes = set()
    for p in proposals:
        assert p.rationale.startswith("mutate leader "), p.rationale
        parent = leaders[int(p.rationale.split()[2])]
        differ = [a for a in space.axis_names if parent[a] != p.cell[a]]
        assert len(differ) in (1, 2), (parent, p.cell)
        for axis in differ:
            assert f"{axis} {parent[axis]}->{p.cell[axis]}" in p.rationale
        n_axes.add(len(differ))
    assert n_axes == {1, 2}


def test_evolution_crossover_takes_whole_groups_from_two_leaders(space):
    view = history(space, 100)
    leaders = {int(i): space.cell(int(i)) for i in view.leaderboard(k=10)["cell_id"]}
    proposals = create_policy("evolution", space, seed=4, immigrant_rate=0.0, crossover_rate=1.0).propose(view, 10)
    crosses = [p for p in proposals if p.rationale.startswith("cross ")]
    assert len(crosses) >= 8
    for p in crosses:
        a, b = (leaders[int(t.rstrip(":"))] for t in p.rationale.split()[1:4:2])
        for axis in space.axes:
            assert p.cell[axis.name] in (a[axis.name], b[axis.name])
        for group in ("arch", "loss", "train", "data"):
            names = [ax.name for ax in space.group_axes(group)]
            assert all(p.cell[x] == a[x] for x in names) or all(p.cell[x] == b[x] for x in names)


def test_evolution_is_random_until_enough_results_then_mixes_moves(space):
    policy = create_policy("evolution", space, seed=0, min_results=10)
    early = policy.propose(history(space, 6), 5)
    assert all(p.rationale.startswith("random: ") for p in early)
    rationales = [p.rationale.split()[0] for p in policy.propose(history(space, 100), 60)]
    assert {"mutate", "cross", "random"} <= set(rationales)
    assert 0.08 <= rationales.count("random") / 60 <= 0.35  # immigrant_rate 0.2


def _campaign_hits(space: Space, name: str, seed: int, warm: int = 60, measure: int = 24, batch: int = 6) -> int:
    """Run a sequential campaign on the planted objective; count planted-region proposals after ``warm``."""
    policy, rows, hits = create_policy(name, space, seed=seed), [], 0
    while len(rows) < warm + measure:
        for p in policy.propose(make_view(space, rows), batch):
            if len(rows) >= warm:
                hits += all(p.cell[k] == v for k, v in GOOD.items())
            rows.append((p.cell, "ok", planted_ap(p.cell)))
    return hits


def test_tpe_concentrates_on_a_planted_region_more_than_random(space):
    # Random search lands in the region 1/40 of the time (0.6 of 24 expected); over seeds 0-9
    # TPE made 9-15 of 24 after 60 observations (measured 2026-11-26, 2-core dev box), so 6
    # leaves a wide margin.
    tpe, rand = _campaign_hits(space, "tpe", seed=0), _campaign_hits(space, "random", seed=0)
    assert tpe >= 6 and tpe >= rand + 4, (tpe, rand)


def test_tpe_rationale_says_startup_then_model(space):
    policy = create_policy("tpe", space, seed=0, n_startup_trials=10)
    assert policy.propose(HistoryView.empty(space), 1)[0].rationale.startswith("TPE startup")
    assert "model of" in policy.propose(history(space, 40), 1)[0].rationale


def test_policy_constructors_reject_bad_settings(space):
    with pytest.raises(ValueError, match="immigrant_rate=1.5"):
        create_policy("evolution", space, immigrant_rate=1.5)
    with pytest.raises(ValueError, match="n_startup_trials >= 0"):
        create_policy("tpe", space, n_startup_trials=-1)
    with pytest.raises(ValueError, match="policy 'tpe' has no option n_startup; its options: n_startup_trials, "):
        create_policy("tpe", space, n_startup=5)  # a typo is an error, never silently ignored
    assert "role" in policy_options("claude") and "immigrant_rate" in policy_options("evolution")
    assert policy_options("random") == []


# ---- the registry ---------------------------------------------------------------------------
def test_registry_lists_every_policy_and_rejects_unknown_names(space):
    assert list_policies() == ["random", "tpe", "evolution", "claude", "gemini"]
    with pytest.raises(ValueError, match=r"unknown policy 'nope'; valid policies: random, tpe, evolution, claude, gemini"):
        create_policy("nope", space)
    assert create_policy(" TPE ", space).name == "tpe"


def test_a_policy_that_cannot_be_imported_is_unavailable(space, monkeypatch):
    monkeypatch.setitem(agents._REGISTRY, "ghost", "crashsearch.agents.no_such_module:GhostPolicy")
    with pytest.raises(PolicyUnavailable, match="policy 'ghost' cannot be imported"):
        create_policy("ghost", space)
    with pytest.raises(ValueError, match="must look like"):
        register_policy("ghost", "crashsearch.agents.no_such_module")


def test_offline_policies_do_not_load_llm_sdks_and_random_does_not_load_optuna():
    code = ("import sys; from agents import create_policy; from lab.space import Space; "
            "create_policy('random', Space.load()); create_policy('evolution', Space.load()); "
            "create_policy('tpe', Space.load()); "
            "print(sorted(m for m in ('optuna', 'anthropic', 'google.genai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
