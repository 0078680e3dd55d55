"""Dedup and healing, the orchestration rules that need no training."""
import random

import pytest

from crashsearch.agents.base import HealAdvice, Policy, Proposal
from crashsearch.lab.space import Space
from crashsearch.tasks.dedup import Deduper
from crashsearch.tasks.heal import MAX_HEAL_DEPTH, heal
from crashsearch.tasks.record import Job, job_seed


@pytest.fixture(scope="module")
def space():
    return Space.load().restrict(backbone=["pixels", "vjepa2_vitl"])


def _proposals(cells, policy="p"):
    return [Proposal(cell=c, rationale="r", policy=policy) for c in cells]


def test_dedup_first_claim_wins_and_counts_per_policy(space):
    cells = space.sample(random.Random(0), 4)
    d = Deduper(space, seen={cells[0].id})  # cells[0] already in the history
    kept_a = d.claim(_proposals([cells[0], cells[1], cells[2], cells[1]], "claude"), "claude")
    kept_b = d.claim(_proposals([cells[2], cells[3]], "gemini"), "gemini")
    assert [p.cell.id for p in kept_a] == [cells[1].id, cells[2].id]
    assert [p.cell.id for p in kept_b] == [cells[3].id]
    assert d.counts() == {"claude": {"duplicate": 2}, "gemini": {"duplicate": 1}}


def test_dedup_rejects_cells_outside_the_sub_space(space):
    outside = Space.load().validate({**space.sample(random.Random(1))[0].to_dict(), "backbone": "r2plus1d_18"})
    d = Deduper(space)
    assert d.claim(_proposals([outside]), "tpe") == []
    (proposal, reason), = d.invalid
    assert "backbone='r2plus1d_18' is outside the current sub-space" in reason


def _job(space, **axes):
    cell = space.validate({**space.cell(space.sample(random.Random(2))[0].id).to_dict(), **axes})
    return Job(cell, job_seed(0, cell.id, 0), proposer="tpe")


def test_oom_heals_with_smaller_batch_nan_with_lower_lr(space):
    job = _job(space, batch_size=64, lr=0.01)
    oom = heal(job, "OOMError", "", space)
    assert oom.retry.cell["batch_size"] == 32 and oom.retry.healed_from == job.experiment_id
    assert oom.retry.proposer == "heal" and oom.retry.heal_action == "batch_size 64->32" and oom.note == "retry with batch_size 64->32"
    nan = heal(job, "NaNLossError", "", space)
    assert nan.retry.cell["lr"] == 0.003 and nan.retry.cell["batch_size"] == 64


def test_heal_stops_at_the_axis_floor_and_the_depth_limit(space):
    assert heal(_job(space, batch_size=16), "OOMError", "", space).retry is None
    job = _job(space, lr=0.01)
    job.heal_depth = MAX_HEAL_DEPTH
    assert heal(job, "NaNLossError", "", space).retry is None


class _Advisor(Policy):
    name = "claude"

    def __init__(self, space, advice):
        super().__init__(space)
        self.advice, self.calls = advice, []

    def propose(self, view, n):
        return []

    def diagnose(self, cell, error_class, traceback):
        self.calls.append((cell.id, error_class, traceback))
        if isinstance(self.advice, Exception):
            raise self.advice
        return self.advice


def test_unknown_failures_go_to_the_llm_advisor(space):
    job = _job(space, encoder="zipformer")
    fix = space.validate({**job.cell.to_dict(), "encoder": "gru"})
    advisor = _Advisor(space, HealAdvice("config_fix", "zipformer needs T>=2", fix))
    out = heal(job, "RuntimeError", "Traceback...", space, [advisor])
    assert out.retry.cell.id == fix.id and advisor.calls[0][1] == "RuntimeError"
    bug = heal(job, "RuntimeError", "tb", space, [_Advisor(space, HealAdvice("code_bug", "off-by-one in pooling"))])
    assert bug.retry is None and bug.code_bug == "off-by-one in pooling"
    broken = heal(job, "RuntimeError", "tb", space, [_Advisor(space, RuntimeError("503"))])
    assert broken.retry is None and "diagnosis failed" in broken.note
