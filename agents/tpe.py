"""TPE search: Optuna's Tree-structured Parzen Estimator over the discrete space (Bergstra et al. 2011).

Each axis is one Optuna CategoricalDistribution over its allowed values. Every ``propose`` builds a
fresh in-memory study from the view, so the model is a function of the history alone (a resumed
campaign rebuilds it exactly): each cell with a validation AP becomes one COMPLETE trial (its mean
AP, maximised), each in-flight cell a RUNNING trial that the constant liar treats as a poor result,
so one batch spreads out. Failed cells are left out of the model (a healed retry shows up as an ok
row); they are still never proposed again. The sampler's seed comes from the policy's own
generator, which is all the state there is.

Rebuilding is kept cheap by ``_fast_study`` (no deep copies, no re-derived search space, choice
indices kept per trial), which proposes exactly what a plain ``optuna.create_study`` would
(tests/test_planted.py checks it; benchmarks/tpe_speed.py measures it).

Optuna is imported on the first ``propose``, not when the module loads.
"""
from __future__ import annotations

from typing import Any

from crashsearch.agents.base import HistoryView, Proposal
from crashsearch.agents.random_search import SeededPolicy
from crashsearch.lab.errors import UserError
from crashsearch.lab.space import InvalidCell, Space


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _fast_study(optuna, sampler, distributions: dict, n_results: int):
    """A maximising in-memory study that spends no time on work whose answer is known here.

    Same proposals as ``optuna.create_study``: two costs of rebuilding a study each round go.
    ``add_trials`` deep-copies every trial (a fifth of a long run): the storage here copies each
    trial's dicts, sharing the immutable distributions. The sampler re-derives the search space by
    intersecting every trial's distributions; every result here has all of ``distributions``, so
    the answer is theirs, sorted by name as Optuna sorts it ({} before the first result). Each ask
    turns every trial's params into choice indices again (a quarter of a long run): a trial's
    params never change once all are set, so its indices are kept by trial number.
    """
    import copy

    import numpy as np

    class _Trial(optuna.trial.FrozenTrial):
        def __deepcopy__(self, memo):
            out = copy.copy(self)
            for attr in ("_params", "_distributions", "_user_attrs", "_system_attrs", "intermediate_values"):
                setattr(out, attr, dict(getattr(self, attr)))
            out._values = None if self._values is None else list(self._values)
            out.__class__ = optuna.trial.FrozenTrial
            return out

    class _Storage(optuna.storages.InMemoryStorage):
        def create_new_trial(self, study_id, template_trial=None):
            if template_trial is not None and type(template_trial) is optuna.trial.FrozenTrial:
                template_trial = copy.copy(template_trial)
                template_trial.__class__ = _Trial
            return super().create_new_trial(study_id, template_trial)

    space = {} if n_results == 0 else {k: distributions[k] for k in sorted(distributions) if not distributions[k].single()}
    sampler.infer_relative_search_space = lambda study, trial: dict(space)
    indices: dict[tuple, tuple] = {}

    def internal_repr(trials, search_space, study):  # TPESampler._get_internal_repr, memoised
        names = tuple(search_space)
        values: dict[str, list] = {name: [] for name in names}
        for trial in trials:
            row = indices.get((trial.number, names))
            if row is None:
                params = sampler._get_params(trial, study)
                if not search_space.keys() <= params.keys():
                    continue
                row = indices[(trial.number, names)] = tuple(d.to_internal_repr(params[k]) for k, d in search_space.items())
            for name, v in zip(names, row):
                values[name].append(v)
        return {k: np.asarray(v) for k, v in values.items()}

    sampler._get_internal_repr = internal_repr
    return optuna.create_study(direction="maximize", sampler=sampler, storage=_Storage())


class TPEPolicy(SeededPolicy):
    """Multivariate TPE with ask/tell, warm-started from the history; random when it only finds tried cells."""

    name = "tpe"

    def __init__(self, space: Space, seed: int = 0, n_startup_trials: int = 10, n_ei_candidates: int = 24,
                 reasks_per_proposal: int = 4, **kwargs: Any):
        super().__init__(space, seed=seed, **kwargs)
        if n_startup_trials < 0 or n_ei_candidates < 1 or reasks_per_proposal < 0:
            raise UserError(f"TPEPolicy needs n_startup_trials >= 0, n_ei_candidates >= 1, reasks_per_proposal >= 0; "
                             f"got {n_startup_trials}, {n_ei_candidates}, {reasks_per_proposal}")
        self.n_startup_trials = n_startup_trials
        self.n_ei_candidates = n_ei_candidates
        self.reasks_per_proposal = reasks_per_proposal
        self._trials: dict[tuple, Any] = {}  # (cell id, mean AP or None for running) -> FrozenTrial, reused every round

    def propose(self, view: HistoryView, n: int) -> list[Proposal]:
        """Up to n distinct untried cells sampled by TPE; uniform random for what TPE cannot find."""
        if n <= 0:
            return []
        optuna = _optuna()
        distributions = {a.name: optuna.distributions.CategoricalDistribution(list(a.choices)) for a in self.space.axes}
        sampler = optuna.samplers.TPESampler(seed=self._rng.getrandbits(31), n_startup_trials=self.n_startup_trials,
                                             n_ei_candidates=self.n_ei_candidates, multivariate=True,
                                             constant_liar=True)
        trials = self._history_trials(optuna, view, distributions)
        n_results = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        study = _fast_study(optuna, sampler, distributions, n_results)
        study.add_trials(trials)
        if n_results < self.n_startup_trials:
            rationale = f"TPE startup: random until {self.n_startup_trials} results ({n_results} so far)"
        else:
            rationale = f"TPE: best expected improvement of {self.n_ei_candidates} candidates, model of {n_results} results"

        taken = view.tried_ids()
        out: list[Proposal] = []
        for _ in range(n * (1 + self.reasks_per_proposal)):
            if len(out) == n:
                break
            trial = study.ask(distributions)
            cell = self.space.validate(trial.params)
            if cell.id in taken:
                # not a result: FAIL keeps it out of the model; the next ask draws afresh
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            taken.add(cell.id)  # left RUNNING: the constant liar spreads the rest of the batch
            out.append(self._proposal(cell, rationale))
        return out + self._random_fill(taken, n - len(out), "uniform random sample (TPE kept proposing tried cells)")

    def _history_trials(self, optuna, view: HistoryView, distributions: dict) -> list:
        """One COMPLETE trial per cell with results (mean val AP), one RUNNING trial per in-flight cell."""
        trials = []
        ok = view.ok
        if not ok.empty:
            for cell_id, ap in ok.groupby("cell_id")["val_ap"].mean().items():
                trial = self._trial(optuna, distributions, int(cell_id), float(ap))
                if trial is not None:
                    trials.append(trial)
        for cell_id in sorted(view.in_flight):
            trial = self._trial(optuna, distributions, int(cell_id), None)
            if trial is not None:
                trials.append(trial)
        return trials

    def _trial(self, optuna, distributions: dict, cell_id: int, value: float | None):
        """The FrozenTrial of a result (or of an in-flight cell when ``value`` is None); None outside the space.

        Cached: ``add_trials`` copies what it is given, and building a trial (a Cell, then Optuna's
        validation) for every result every round was a third of a long run's time.
        """
        key = (cell_id, value)
        if key not in self._trials:
            cell = self._cell_in_space(cell_id)
            if cell is None:
                return None
            create, state = optuna.trial.create_trial, optuna.trial.TrialState
            self._trials[key] = (create(state=state.RUNNING, params=cell.to_dict(), distributions=distributions)
                                 if value is None else create(params=cell.to_dict(), distributions=distributions, value=value))
        return self._trials[key]

    def _cell_in_space(self, cell_id: Any):
        """The cell of an id if it lies in this (possibly restricted) space, else None."""
        try:
            return self.space.cell(int(cell_id))
        except (InvalidCell, TypeError, ValueError):
            return None
