"""Healing failed experiments: rules first, then an LLM's diagnosis.

Rules: an out-of-memory run is retried with the next smaller batch size; a NaN loss with the
next lower learning rate. Other failures go to an advisor (an LLM policy's ``diagnose``) that
may return a configuration fix (retried like a rule fix) or flag a code bug for a person. A fix
is a new job linked to the failed one (``healed_from``); each lineage is healed at most
``MAX_HEAL_DEPTH`` times so a bad cell cannot eat the budget.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from crashsearch.agents.base import Policy
from crashsearch.lab.lock import reraise_interrupt
from crashsearch.lab.space import Cell, InvalidCell, Space
from crashsearch.tasks.record import Job, new_experiment_id, one_line

MAX_HEAL_DEPTH = 2

# error class -> (axis to change, direction along the axis's value list)
RULES = {"OOMError": ("batch_size", -1), "NaNLossError": ("lr", -1)}


@dataclass
class HealOutcome:
    """What healing decided for one failure: a retry job, a code-bug diagnosis, or nothing."""

    retry: Job | None = None
    note: str = ""  # recorded in the failed row's heal_action
    code_bug: str | None = None


def _step(space: Space, cell: Cell, axis: str, direction: int) -> Cell | None:
    choices = space.axis(axis).choices
    values = sorted(choices)
    index = values.index(cell[axis]) + direction
    if not 0 <= index < len(values):
        return None
    return space.validate({**cell.to_dict(), axis: values[index]})


def rule_fix(job: Job, error_class: str, space: Space) -> HealOutcome:
    """The healing rules alone (deterministic, no network): a retry job or why there is none."""
    if job.heal_depth >= MAX_HEAL_DEPTH:
        return HealOutcome(note=f"not healed: already healed {job.heal_depth} times")
    if error_class not in RULES:
        return HealOutcome(note=f"no healing rule for {error_class}")
    axis, direction = RULES[error_class]
    fixed = _step(space, job.cell, axis, direction)
    if fixed is None:
        return HealOutcome(note=f"not healed: {axis} is already at its lowest value")
    action = f"{axis} {job.cell[axis]}->{fixed[axis]}"
    return HealOutcome(retry=_retry(job, fixed, action), note=f"retry with {action}")


def heal(job: Job, error_class: str, traceback: str, space: Space, advisors: list[Policy] = ()) -> HealOutcome:
    """Decide how to heal a failed job: the rules, else the advisors. Never raises."""
    outcome = rule_fix(job, error_class, space)
    if outcome.retry is not None or error_class in RULES or job.heal_depth >= MAX_HEAL_DEPTH:
        return outcome
    notes = [outcome.note]
    for advisor in advisors:
        try:
            advice = advisor.diagnose(job.cell, error_class, traceback)
        except Exception as exc:  # an advisor is optional help; its failure must not stop the campaign
            reraise_interrupt(exc)
            notes.append(f"{advisor.name} diagnosis failed: {one_line(str(exc), 120)}")
            continue
        if advice is None:
            continue
        if advice.kind == "config_fix" and advice.cell is not None:
            try:
                fixed = space.validate(advice.cell.to_dict())
            except InvalidCell as exc:
                return HealOutcome(note=f"{advisor.name} proposed an invalid fix: {exc.reason}")
            action = f"{advisor.name}: {one_line(advice.diagnosis, 160)}"
            retry = _retry(job, fixed, action)
            retry.tokens_in, retry.tokens_out, retry.cost_usd = advice.tokens_in, advice.tokens_out, advice.cost_usd
            return HealOutcome(retry=retry, note=f"retry with {advisor.name}'s fix")
        if advice.kind == "code_bug":
            diagnosis = one_line(advice.diagnosis, 300)
            return HealOutcome(note=f"code bug ({advisor.name}): {diagnosis}", code_bug=diagnosis)
        notes.append(f"{advisor.name} gave up: {one_line(advice.diagnosis, 160)}")
    return HealOutcome(note="; ".join(notes))


def _retry(job: Job, cell: Cell, action: str) -> Job:
    return replace(job, cell=cell, proposer="heal", healed_from=job.experiment_id, heal_action=action,
                   heal_depth=job.heal_depth + 1, experiment_id=new_experiment_id(),
                   tokens_in=0, tokens_out=0, cost_usd=0.0)
