"""Answers about the space, not the sample (issue 19, items 1, 2 and 5).

Promises checked here (tolerances stated so a failure says what was promised):
- the eta² interval is defined for every F in [0, 1e5], df1 in [1, 500], df2 up to 1e6: both ends
  in [0, 1], lo <= hi, and where scipy's noncentral F is finite the ends sit at its 97.5% / 2.5%
  quantiles within 1e-6;
- the noncentral F cdf never returns NaN, falls as the noncentrality grows, and matches scipy's
  within 1e-8 where scipy's is finite;
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from crashsearch.analysis import anova

F_GRID = (0.0, 0.5, 3.0, 50.0, 1324.0, 1e5)
DF1_GRID = (1, 4, 35, 500)
DF2_GRID = (1, 30, 10_000, 1_000_000)


def _scipy_ncf_cdf(F, df1, df2, lam):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.ncf.cdf(F, df1, df2, lam))


# ---- item 1: the eta² interval on the whole grid ----------------------------------------------

@pytest.mark.parametrize("df2", DF2_GRID)
@pytest.mark.parametrize("df1", DF1_GRID)
@pytest.mark.parametrize("F", F_GRID)
def test_eta2_interval_is_defined_on_the_whole_grid(F, df1, df2):
    (lo, hi), method = anova.eta2_interval(F, df1, df2, detail=True)
    assert 0.0 <= lo <= hi <= 1.0, (lo, hi)
    assert method.startswith(("noncentral-F inversion", "normal approximation"))
    n = df1 + df2 + 1
    for end, q in ((lo, 0.975), (hi, 0.025)):
        if 0.0 < end < 1.0:
            lam = end / (1.0 - end) * n
            ref = _scipy_ncf_cdf(F, df1, df2, lam)
            if math.isfinite(ref) and lam <= anova.NCF_EXACT_MAX_LAMBDA:
                assert ref == pytest.approx(q, abs=1e-6)
            # our own cdf is the definition the interval inverts, on either method
            assert anova.ncf_cdf(F, df1, df2, lam) == pytest.approx(q, abs=1e-4)


@pytest.mark.parametrize("F, df1, df2", [(1324.0, 4, 10_464), (1000.0, 1, 1_000_000), (10.0, 100, 100_000),
                                         (1e5, 500, 1_000_000), (3.0, 500, 1)])
def test_ncf_cdf_is_finite_monotone_and_matches_scipy_where_scipy_is_finite(F, df1, df2):
    centre = F * df1
    lams = np.concatenate([[0.0], np.geomspace(1e-3, 10 * centre + 100, 60)])
    values = np.array([anova.ncf_cdf(F, df1, df2, lam) for lam in lams])
    assert np.isfinite(values).all() and ((values >= 0) & (values <= 1)).all()
    assert (np.diff(values) <= 1e-9).all()  # falls with the noncentrality
    for lam, v in zip(lams, values):
        ref = _scipy_ncf_cdf(F, df1, df2, lam)
        if math.isfinite(ref) and lam <= anova.NCF_EXACT_MAX_LAMBDA:
            assert v == pytest.approx(ref, abs=1e-8)


def test_one_way_on_five_backbones_with_a_large_F_has_an_interval():
    # the crash of issue 19: 10,469 runs over 5 backbones, F about 250; scipy's ncf.cdf gave NaN and brentq stopped
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 5, 10_469)
    values = 0.6 + 0.011 * groups + rng.normal(0, 0.05, len(groups))
    frame = {"campaign": "c", "proposer": "random", "arch_group": [f"b{g}/e" for g in groups],
             "backbone": [f"b{g}" for g in groups], "cell_id": np.arange(len(groups)), "status": "ok", "val_ap": values}
    r = anova.one_way(pd.DataFrame(frame), "backbone")
    assert 200 < r["F"] < 300 and r["reason"] is None
    lo, hi = r["eta2_ci"]
    assert 0.05 < lo < r["eta2"] < hi < 0.15
    assert r["eta2_ci_method"] == anova.ETA2_CI_EXACT
    # at the interval's ends F sits at the 97.5% / 2.5% quantiles of the noncentral F
    n = r["df_between"] + r["df_within"] + 1
    for end, q in ((lo, 0.975), (hi, 0.025)):
        assert anova.ncf_cdf(r["F"], 4, r["df_within"], end / (1 - end) * n) == pytest.approx(q, abs=1e-6)
