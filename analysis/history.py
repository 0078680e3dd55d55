"""Shared preparation of an experiment history for the statistics in analysis/.

Every statistic in this package is a pure function of a pandas DataFrame with the columns of
``lab.schema`` (plus one column per axis). Histories come from the store, from an imported
external log or from a generator, so columns may be missing: ``prepare`` fills what can be
derived and leaves the rest NaN, and the statistics say why when they cannot be computed.

The *arm* of a row is who gets credit for it in per-policy comparisons:
- rows of a control-arm campaign (id ``<parent>-baseline-<policy>[-s<k>]``) belong to that policy;
- rows proposed by the orchestrator itself (``replicate``, ``rerun``, ``heal``) belong to the
  policy that first proposed the same cell in the same campaign (a replicate re-runs someone's
  find); a ``heal`` row (a changed cell) belongs to the proposer of the failed run it heals;
- every other row belongs to its ``proposer``.
A *run* is one independent sequence of an arm: the pair (campaign, arm).
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

OK_STATUSES = ("ok", "healed")
SYSTEM_PROPOSERS = ("replicate", "rerun", "heal", "import", "")
LLM_POLICIES = ("claude", "gemini")
CONTROL_POLICIES = ("random", "tpe")
ARCH_AXES = ("backbone", "encoder", "size")
BASELINE_RE = re.compile(r"^(?P<parent>.+)-baseline-(?P<policy>[A-Za-z0-9_]+?)(?:-s(?P<rep>\d+))?$")


def baseline_campaign_id(parent: str, policy: str, rep: int = 0) -> str:
    """The id of a control-arm campaign: ``<parent>-baseline-<policy>``, ``-s<k>`` for repeat k >= 1."""
    return f"{parent}-baseline-{policy}" + (f"-s{rep}" if rep else "")


def parse_baseline(campaign: str) -> tuple[str, str] | None:
    """(parent campaign, policy) for a control-arm campaign id, else None."""
    m = BASELINE_RE.match(str(campaign))
    return (m["parent"], m["policy"]) if m else None


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """A copy in time order with the derived columns the statistics use.

    Adds ``arch_group`` (if missing), ``ok`` (bool: a usable validation AP), ``arm``, ``run``
    and ``order`` (0.. in time order). Sorts stably by ``finished_at`` when present, so rows
    without a timestamp keep their given order. Raises ValueError naming a missing required
    column (``val_ap``).
    """
    if "val_ap" not in df.columns:
        raise ValueError(f"history has no 'val_ap' column; columns: {list(df.columns)[:12]}")
    out = df.copy()
    if "finished_at" in out.columns and out["finished_at"].notna().any():
        out = out.sort_values("finished_at", kind="stable", na_position="last")
    out = out.reset_index(drop=True)
    out["order"] = np.arange(len(out))
    for col, default in (("campaign", "campaign"), ("proposer", "unknown"), ("status", "ok"), ("dataset", "")):
        if col not in out.columns:
            out[col] = default
        out[col] = out[col].fillna(default).astype(str)
    out["val_ap"] = pd.to_numeric(out["val_ap"], errors="coerce").astype(float)
    if "arch_group" not in out.columns or out["arch_group"].isna().all():
        if "backbone" in out.columns and "encoder" in out.columns:
            out["arch_group"] = out["backbone"].astype(str) + "/" + out["encoder"].astype(str)
        else:
            out["arch_group"] = "unknown"
    out["arch_group"] = out["arch_group"].astype(str)
    if (len(out) and ("backbone" not in out.columns or "encoder" not in out.columns)
            and out["arch_group"].str.contains("/").all()):
        parts = out["arch_group"].str.split("/", n=1, expand=True)
        out["backbone"], out["encoder"] = parts[0], parts[1]
    if "cell_id" not in out.columns:
        # an external log without ids: each distinct combination of the axis values it has is a cell
        keys = ["arch_group"] + [c for c in axis_columns(out) if c not in ("backbone", "encoder")]
        out["cell_id"] = out.groupby(keys, sort=False, dropna=False).ngroup()
    out["ok"] = out["status"].isin(OK_STATUSES) & out["val_ap"].notna()
    out["arm"] = _arms(out)
    out["run"] = out["campaign"] + "::" + out["arm"]
    return out


def _arms(df: pd.DataFrame) -> pd.Series:
    arm = df["proposer"].copy()
    if "healed_from" in df.columns and "experiment_id" in df.columns and df["healed_from"].notna().any():
        by_id = pd.Series(arm.to_numpy(), index=df["experiment_id"].astype(str))
        by_id = by_id[~by_id.index.duplicated()]
        source = df["healed_from"].where(df["healed_from"].notna() & (df["healed_from"].astype(str) != ""))
        for _ in range(3):  # a heal of a heal: follow the chain to the original proposal
            found = source.dropna().astype(str).map(by_id)
            arm.loc[found.index] = np.where(found.isna(), arm.loc[found.index], found)
            if not arm.loc[found.index].isin(SYSTEM_PROPOSERS).any():
                break
            by_id = pd.Series(arm.to_numpy(), index=df["experiment_id"].astype(str))
            by_id = by_id[~by_id.index.duplicated()]
    system = arm.isin(SYSTEM_PROPOSERS)
    if system.any():
        # credit a replicate or heal to whoever first proposed that cell in that campaign
        firsts = df[~system].drop_duplicates(["campaign", "cell_id"]).set_index(["campaign", "cell_id"])["proposer"]
        key = pd.MultiIndex.from_arrays([df.loc[system, "campaign"], df.loc[system, "cell_id"]])
        found = firsts.reindex(key).to_numpy()
        arm.loc[system] = np.where(pd.isna(found), arm[system].to_numpy(), found)
    policy_of = {c: parsed[1] for c in df["campaign"].unique() if (parsed := parse_baseline(c))}
    base = df["campaign"].map(policy_of)
    return base.where(base.notna(), arm).astype(str)


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with a usable validation AP (status ok or healed); ``df`` must be prepared."""
    return df[df["ok"]]


def is_llm(arm: str) -> bool:
    """True for an LLM agent's arm name (claude, gemini, or a name containing them)."""
    return any(name in str(arm).lower() for name in LLM_POLICIES)


def running_best(values: np.ndarray) -> np.ndarray:
    """Cumulative max that skips NaN (failed runs): NaN until the first real value."""
    filled = np.where(np.isnan(values), -np.inf, values)
    best = np.maximum.accumulate(filled) if len(filled) else filled
    return np.where(np.isinf(best), np.nan, best)


def axis_columns(df: pd.DataFrame, space=None) -> list[str]:
    """Axis columns present in ``df``: the space's axes if given, else the default collision axes."""
    if space is not None:
        names = list(space.axis_names)
    else:
        names = ["backbone", "encoder", "size", "loss", "lr", "batch_size", "window_s", "augment"]
    return [n for n in names if n in df.columns]
