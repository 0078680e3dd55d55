"""A surrogate of a recorded history: any cell of the space in, a plausible validation AP out.

Tabular and surrogate benchmarks (NAS-Bench-301, YAHPO Gym, HPOBench) let a search run against a
model of recorded results instead of training. Here the model is scikit-learn's
``HistGradientBoostingRegressor`` on the cell's axes: string axes as native categorical features,
numeric axes (learning rate, batch size, window) by value, so a tree splits them in order. It fits
10,000 rows in about a second and predicts a whole 108,000-cell space in a fraction of one, and
boosted trees capture the interactions (encoder x size x learning rate) an additive model misses;
``benchmarks/policy_benchmark.py`` compares it with a random forest and an additive ridge model.

- ``fit_surrogate(rows, space)``: fits the model to the ok rows (status ok/healed with a
  validation AP) and measures its fidelity on held-out cells: K-fold by cell, each cell's mean AP
  against the prediction of a model that never saw the cell (R^2 and Spearman rank correlation).
- ``Surrogate.sample(cell_ids, rng)``: the predicted mean plus a seed-noise draw. The noise is
  what the seed replicates show: the residuals of every run of a cell run more than once around
  that cell's mean (scaled by sqrt(n / (n - 1)), so they estimate the noise and not less), drawn
  with replacement. Without replicates there is no noise, and ``noise["reason"]`` says so.

Failures are not modelled: every proposed cell gets an AP. Rows of axis values outside the space
are refused (``SurrogateError``), since the model cannot place them.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from crashsearch.lab.errors import UserError
from crashsearch.lab.space import Space

MIN_OK_ROWS = 30  # fewer usable rows than this: no surrogate (a one-line error)
MIN_CELLS = 10  # distinct cells with an AP, so that held-out cells exist
HOLDOUT_FOLDS = 5
DENSE_LIMIT = 4_000_000  # spaces up to this many cells get one prediction table, larger ones a cache
OK_STATUSES = ("ok", "healed")


class SurrogateError(UserError):
    """The history cannot support a surrogate (too few rows, values outside the space); one line."""


@dataclass
class Surrogate:
    """A fitted surrogate. ``predict``/``sample`` take full-space cell ids (numpy int64)."""

    space: Space
    model: object
    kind: str
    noise: dict  # residuals (array), sd, cells, reason
    fidelity: dict  # holdout_r2, holdout_spearman, folds, cells, rows
    n_rows: int
    n_cells: int
    fit_seconds: float
    _table: np.ndarray | None = field(default=None, repr=False)  # predictions by full cell id (NaN: not filled)
    _cache: dict = field(default_factory=dict, repr=False)

    def predict(self, cell_ids) -> np.ndarray:
        """Predicted mean validation AP of each cell (clipped to [0, 1])."""
        ids = np.asarray(cell_ids, dtype=np.int64)
        if self._table is not None:
            return self._table[ids]
        missing = [int(i) for i in ids if int(i) not in self._cache]
        if missing:
            for i, v in zip(missing, self._predict_ids(np.array(missing, dtype=np.int64))):
                self._cache[i] = float(v)
        return np.array([self._cache[int(i)] for i in ids], dtype=float)

    def sample(self, cell_ids, rng: np.random.Generator) -> np.ndarray:
        """One noisy AP per cell: the predicted mean plus a replicate residual, clipped to [0, 1]."""
        mean = self.predict(cell_ids)
        res = self.noise["residuals"]
        draw = res[rng.integers(0, len(res), len(mean))] if len(res) else 0.0
        return np.clip(mean + draw, 0.0, 1.0)

    def fill_table(self) -> "Surrogate":
        """Predict every allowed cell once (spaces up to DENSE_LIMIT cells), so ``predict`` is a lookup."""
        if self._table is not None or self.space.full_size > DENSE_LIMIT:
            return self
        grids = np.meshgrid(*[np.array([a.values.index(v) for v in a.choices]) for a in self.space.axes], indexing="ij")
        idx = np.stack([g.ravel() for g in grids], axis=1)  # (cells, axes)
        table = np.full(self.space.full_size, np.nan)
        ids = idx @ np.array(self.space._weights, dtype=np.int64)
        table[ids] = self._predict_codes(idx)
        self._table = table
        return self

    # ---- encoding -----------------------------------------------------------------------------
    def _predict_ids(self, ids: np.ndarray) -> np.ndarray:
        return self._predict_codes(decode_ids(self.space, ids))

    def _predict_codes(self, codes: np.ndarray) -> np.ndarray:
        return np.clip(self.model.predict(features(self.space, codes)), 0.0, 1.0)


def decode_ids(space: Space, ids: np.ndarray) -> np.ndarray:
    """(n, axes) value indices of full-space cell ids (mixed radix, first axis most significant)."""
    rest = np.asarray(ids, dtype=np.int64).copy()
    out = np.empty((len(rest), len(space.axes)), dtype=np.int64)
    for j, (weight, _axis) in enumerate(zip(space._weights, space.axes)):
        out[:, j], rest = np.divmod(rest, weight)
    return out


def _numeric(axis) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in axis.values)


def features(space: Space, codes: np.ndarray) -> np.ndarray:
    """Model inputs from value indices: a categorical axis keeps its index, a numeric axis its value."""
    x = codes.astype(float)
    for j, axis in enumerate(space.axes):
        if _numeric(axis):
            x[:, j] = np.asarray(axis.values, dtype=float)[codes[:, j]]
    return x


def row_codes(space: Space, rows: pd.DataFrame) -> np.ndarray:
    """(n, axes) value indices of history rows, from their axis columns (else their cell ids).

    Raises SurrogateError naming the first axis value that is not in ``space``.
    """
    if not all(a.name in rows.columns for a in space.axes):
        ids = pd.to_numeric(rows["cell_id"], errors="coerce")
        if ids.isna().any() or (ids < 0).any() or (ids >= space.full_size).any():
            raise SurrogateError(f"cell ids outside space {space.name!r} (0..{space.full_size - 1}); pass the history's --space")
        return decode_ids(space, ids.to_numpy(np.int64))
    out = np.empty((len(rows), len(space.axes)), dtype=np.int64)
    for j, axis in enumerate(space.axes):
        col = rows[axis.name]
        if _numeric(axis):
            vals = pd.to_numeric(col, errors="coerce").to_numpy(float)
            ref = np.asarray(axis.values, dtype=float)
            hit = np.isclose(vals[:, None], ref[None, :], rtol=1e-9, atol=0.0)
            idx = np.where(hit.any(1), hit.argmax(1), -1)
        else:
            index = {str(v): i for i, v in enumerate(axis.values)}
            idx = col.astype(str).map(index).fillna(-1).to_numpy(np.int64)
        if (idx < 0).any():
            bad = col.to_numpy()[np.flatnonzero(idx < 0)[0]]
            raise SurrogateError(f"axis {axis.name} has value {bad!r}, which space {space.name!r} does not have "
                                 f"(values: {', '.join(map(str, axis.values))}); pass the history's --space")
        out[:, j] = idx
    return out


def ok_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows with a usable validation AP: status ok or healed (when there is a status) and val_ap set."""
    ap = pd.to_numeric(rows["val_ap"], errors="coerce") if "val_ap" in rows.columns else pd.Series(np.nan, index=rows.index)
    keep = ap.notna() & ap.between(0.0, 1.0)
    if "status" in rows.columns:
        keep &= rows["status"].isin(OK_STATUSES)
    return rows[keep].assign(val_ap=ap[keep].astype(float))


def make_model(kind: str, space: Space, n_rows: int, seed: int = 0):
    """An unfitted scikit-learn regressor: "hgb" (the default), "forest" or "ridge" (additive, one-hot)."""
    categorical = [not _numeric(a) for a in space.axes]
    if kind == "hgb":
        from sklearn.ensemble import HistGradientBoostingRegressor

        # 150 rounds at rate 0.2: the held-out fidelity of 300 at 0.1 (within 0.005 R^2) in half the time
        return HistGradientBoostingRegressor(max_iter=150, learning_rate=0.2, max_leaf_nodes=31,
                                             min_samples_leaf=max(3, min(20, n_rows // 25)),
                                             categorical_features=np.array(categorical), early_stopping=False,
                                             random_state=seed)
    if kind == "forest":
        from sklearn.ensemble import RandomForestRegressor

        return RandomForestRegressor(n_estimators=200, min_samples_leaf=2, max_features=0.6, n_jobs=1, random_state=seed)
    if kind == "ridge":
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import OneHotEncoder

        return make_pipeline(OneHotEncoder(handle_unknown="ignore"), Ridge(alpha=1.0))
    raise UserError(f"unknown surrogate model {kind!r}; models: hgb, forest, ridge")


def replicate_noise(codes: np.ndarray, ap: np.ndarray) -> dict:
    """Residuals of runs around their cell's mean, for cells run more than once (see the module)."""
    frame = pd.DataFrame({"cell": [c.tobytes() for c in codes], "ap": ap})
    g = frame.groupby("cell")["ap"]
    n = g.transform("size").to_numpy()
    resid = (frame["ap"] - g.transform("mean")).to_numpy()
    keep = n >= 2
    out = {"residuals": resid[keep] * np.sqrt(n[keep] / (n[keep] - 1.0)), "cells": int(g.size().ge(2).sum()),
           "sd": math.nan, "reason": None}
    if not keep.any():
        out["residuals"] = np.zeros(0)
        out["reason"] = "no cell was run more than once: the surrogate adds no seed noise"
    else:
        out["sd"] = float(np.sqrt(np.mean(out["residuals"] ** 2)))
    return out


def fit_surrogate(rows: pd.DataFrame, space: Space, kind: str = "hgb", folds: int = HOLDOUT_FOLDS, seed: int = 0,
                  fill: bool = True) -> Surrogate:
    """Fit a surrogate to a history's ok rows and measure it on held-out cells.

    Returns a Surrogate (``fidelity``: holdout_r2, holdout_spearman over cells' mean AP, K-fold by
    cell). Raises SurrogateError with one line when there are fewer than MIN_OK_ROWS ok rows or
    MIN_CELLS distinct cells, or a row's axis value is not in ``space``.
    """
    from scipy.stats import spearmanr

    t0 = time.perf_counter()
    ok = ok_rows(rows)
    if len(ok) < MIN_OK_ROWS:
        raise SurrogateError(f"{len(ok)} ok rows with a validation AP (of {len(rows)}); a surrogate needs at least "
                             f"{MIN_OK_ROWS}: run more experiments or use --objective table")
    codes = row_codes(space, ok)
    y = ok["val_ap"].to_numpy(float)
    cell = codes @ np.array(space._weights, dtype=np.int64)
    cells = np.unique(cell)
    if len(cells) < MIN_CELLS:
        raise SurrogateError(f"{len(cells)} distinct cells with a validation AP; a surrogate needs at least {MIN_CELLS}")
    x = features(space, codes)

    # held-out fidelity: every cell's mean AP against a model fitted without that cell
    k = min(folds, len(cells))
    fold_of = dict(zip(cells.tolist(), np.random.default_rng(seed).permutation(len(cells)) % k))
    fold = np.array([fold_of[c] for c in cell.tolist()])
    pred = np.empty(len(y))
    for f in range(k):
        test = fold == f
        model = make_model(kind, space, int((~test).sum()), seed).fit(x[~test], y[~test])
        pred[test] = model.predict(x[test])
    per_cell = pd.DataFrame({"cell": cell, "y": y, "pred": pred}).groupby("cell").mean()
    ss_res = float(((per_cell["y"] - per_cell["pred"]) ** 2).sum())
    ss_tot = float(((per_cell["y"] - per_cell["y"].mean()) ** 2).sum())
    rho = spearmanr(per_cell["y"], per_cell["pred"]).statistic if per_cell["y"].nunique() > 1 else math.nan
    fidelity = {"holdout_r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan,
                "holdout_spearman": float(rho) if rho == rho else math.nan,
                "folds": k, "cells": int(len(cells)), "rows": int(len(y))}

    model = make_model(kind, space, len(y), seed).fit(x, y)
    sur = Surrogate(space=space, model=model, kind=kind, noise=replicate_noise(codes, y), fidelity=fidelity,
                    n_rows=int(len(y)), n_cells=int(len(cells)), fit_seconds=0.0)
    if fill:
        sur.fill_table()
    sur.fit_seconds = time.perf_counter() - t0
    return sur


def observed_space(space: Space, rows: pd.DataFrame) -> Space:
    """``space`` restricted to the values each axis has ok rows for (ids stay the full space's).

    Raises SurrogateError when no row has a validation AP, or a value is not in ``space``.
    """
    ok = ok_rows(rows)
    if ok.empty:
        raise SurrogateError(f"none of the {len(rows)} rows has a validation AP (status ok or healed): nothing to benchmark on")
    codes = row_codes(space, ok)
    allowed = {}
    for j, axis in enumerate(space.axes):
        seen = np.unique(codes[:, j])
        values = [axis.values[i] for i in seen if axis.values[i] in axis.choices]
        if values and len(values) < len(axis.choices):
            allowed[axis.name] = values
    return space.restrict(**allowed) if allowed else space
