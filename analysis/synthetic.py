"""Synthetic experiment histories with known structure, for tests and benchmarks.

``synthetic_history`` plants an additive model on the default collision space:

    val_ap = base + arch_effect[backbone/encoder] + sum over other axes of level_effect + noise

so the architecture share of variance is known (``truth["eta2_arch"]`` for uniform sampling),
and proposers behave differently: ``random`` samples uniformly, LLM agents (``claude``,
``gemini``) explore early and exploit the best groups later, ``tpe``/``evolution`` in between.
A share of rows are seed replicates of earlier cells (proposer ``replicate``) and a share fail.
The frame has every ``lab.schema`` base column plus one column per axis, like the store's.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from crashsearch.lab.schema import BASE_COLUMNS
from crashsearch.lab.space import Space

# how strongly each proposer exploits the groups it believes best (0: uniform random)
_EXPLOIT = {"random": 0.0, "tpe": 0.5, "evolution": 0.6, "claude": 0.85, "gemini": 0.8}


def arch_effects(space: Space, sd: float = 0.06, seed: int = 0) -> dict[str, float]:
    """A planted effect per architecture group ``backbone/encoder``: N(0, sd), centred."""
    rng = np.random.default_rng(seed)
    groups = [f"{b}/{e}" for b in space.axis("backbone").choices for e in space.axis("encoder").choices]
    values = rng.normal(0.0, sd, len(groups))
    values -= values.mean()
    return dict(zip(groups, values.tolist()))


def synthetic_history(
    n: int = 2000,
    seed: int = 0,
    policies: tuple[str, ...] = ("claude", "gemini", "random"),
    campaign: str = "synthetic",
    dataset: str = "synth-day",
    space: Space | None = None,
    base: float = 0.72,
    arch_sd: float = 0.06,
    hp_sd: float = 0.012,
    noise_sd: float = 0.008,
    effects: dict[str, float] | None = None,
    replicate_share: float = 0.08,
    fail_share: float = 0.02,
    start: str = "2025-01-01",
) -> pd.DataFrame:
    """A history of ``n`` experiments with a planted architecture effect.

    Returns a DataFrame (time order) whose ``attrs["truth"]`` holds the planted ``arch_effects``,
    ``eta2_arch`` (architecture share of variance under uniform sampling) and the sds used.
    """
    space = space or Space.load()
    rng = np.random.default_rng(seed)
    effects = effects or arch_effects(space, arch_sd, seed=seed + 1000)
    groups = np.array(list(effects))
    g_eff = np.array([effects[g] for g in groups])
    axes = [a for a in space.axes if a.name not in ("backbone", "encoder")]
    level_eff = {a.name: rng.normal(0.0, hp_sd, len(a.choices)) for a in axes}
    for v in level_eff.values():
        v -= v.mean()

    proposer = rng.choice(np.array(policies), n)
    exploit = np.array([_EXPLOIT.get(p, 0.5) for p in proposer])
    # LLM-like policies exploit more as the campaign goes on
    progress = np.arange(n) / max(n - 1, 1)
    p_exploit = exploit * np.clip(0.2 + progress, 0, 1)
    exploiting = rng.random(n) < p_exploit
    top = np.argsort(-g_eff)[: max(2, len(groups) // 8)]
    g_idx = np.where(exploiting, rng.choice(top, n), rng.integers(0, len(groups), n))
    cols: dict[str, np.ndarray] = {}
    bb, enc = np.array([g.split("/", 1) for g in groups]).T
    cols["backbone"], cols["encoder"] = bb[g_idx], enc[g_idx]
    value = base + g_eff[g_idx]
    for a in axes:
        best = int(np.argmax(level_eff[a.name]))
        idx = np.where(exploiting & (rng.random(n) < 0.6), best, rng.integers(0, len(a.choices), n))
        cols[a.name] = np.array(a.choices)[idx]
        value = value + level_eff[a.name][idx]

    df = pd.DataFrame(cols)
    # seed replicates: re-run an earlier row's cell with a new seed
    is_rep = (rng.random(n) < replicate_share) & (np.arange(n) > 0)
    src = (rng.random(n) * np.arange(n)).astype(int)
    for i in np.flatnonzero(is_rep):  # a replicate of a replicate re-runs the original cell
        src[i] = src[src[i]] if is_rep[src[i]] else src[i]
    for name in [a.name for a in space.axes]:
        df.loc[is_rep, name] = df[name].to_numpy()[src[is_rep]]
    value = np.where(is_rep, value[src], value)
    proposer = np.where(is_rep, "replicate", proposer)
    val_ap = np.clip(value + rng.normal(0.0, noise_sd, n), 0.01, 0.999)
    failed = rng.random(n) < fail_share
    val_ap[failed] = np.nan

    df = df[[a.name for a in space.axes]]
    ids = _cell_ids(space, df)
    llm = np.isin(proposer, ["claude", "gemini"])
    t0 = pd.Timestamp(start, tz="UTC")
    train_s = rng.lognormal(np.log(30.0), 0.4, n)
    base_cols = {
        "experiment_id": [f"{campaign}-{i:07d}" for i in range(n)],
        "campaign": campaign,
        "dataset": dataset,
        "space": space.name,
        "cell_id": np.array(ids, dtype=np.int64),
        "arch_group": df["backbone"].astype(str) + "/" + df["encoder"].astype(str),
        "proposer": proposer,
        "model": np.where(llm, np.where(proposer == "claude", "claude-sonnet", "gemini-pro"), ""),
        "rationale": "",
        "round": (np.arange(n) // 12).astype(np.int32),
        "status": np.where(failed, "failed", "ok"),
        "val_ap": val_ap,
        "val_ap_h05": np.clip(val_ap - 0.02, 0, 1),  # scores stay in [0, 1]: the store refuses others
        "val_ap_h10": val_ap,
        "val_ap_h15": np.clip(val_ap + 0.02, 0, 1),
        "val_auc": np.clip(val_ap + 0.1, 0, 1),
        "test_ap": np.where(failed, np.nan, np.clip(val_ap + rng.normal(0.0, noise_sd, n), 0, 1)),
        "test_auc": np.nan,
        "seed": rng.integers(0, 2**31, n),
        "replicate": 0,
        "healed_from": None,
        "heal_action": None,
        "train_seconds": train_s,
        "eval_seconds": 1.0,
        "params": 100_000,
        "peak_mem_mb": 100.0,
        "device": "cuda",
        "worker": "synthetic",
        "code_version": "v1",
        "error_class": np.where(failed, "OOMError", None),
        "error_message": np.where(failed, "CUDA out of memory", None),
        "started_at": t0 + pd.to_timedelta(np.arange(n) * 60.0, unit="s"),
        "finished_at": t0 + pd.to_timedelta(np.arange(n) * 60.0 + 59.0, unit="s"),
        "tokens_in": np.where(llm, 3000, 0),
        "tokens_out": np.where(llm, 400, 0),
        "cost_usd": np.where(llm, 0.015, 0.0),
    }
    out = pd.DataFrame(base_cols)
    out["replicate"] = out.groupby("cell_id").cumcount().astype(np.int32)
    out = pd.concat([out[BASE_COLUMNS], df], axis=1)

    var_arch = float(np.var(g_eff))
    var_within = sum(float(np.var(v)) for v in level_eff.values()) + noise_sd**2
    out.attrs["truth"] = {
        "arch_effects": effects,
        "eta2_arch": var_arch / (var_arch + var_within),
        "arch_sd": arch_sd, "hp_sd": hp_sd, "noise_sd": noise_sd,
    }
    return out


def _cell_ids(space: Space, df: pd.DataFrame) -> np.ndarray:
    """Canonical mixed-radix ids, vectorised (same as ``space.cell_id`` row by row)."""
    ids = np.zeros(len(df), dtype=np.int64)
    for axis in space.axes:
        index = {v: i for i, v in enumerate(axis.values)}
        ids = ids * len(axis.values) + df[axis.name].map(index).to_numpy(dtype=np.int64)
    return ids


def power_law_history(n: int, a: float, b: float, c: float, noise_sd: float = 0.002, seed: int = 0, near_share: float = 0.5,
                      proposer: str = "claude", campaign: str = "powerlaw") -> pd.DataFrame:
    """A minimal history whose running-best AP follows ``a - b N^-c``.

    A share ``near_share`` of rows land just below the planted curve (half-normal gap with sd ``noise_sd``), the
    rest well below it, so the cumulative best tracks the curve within about ``noise_sd``.
    """
    rng = np.random.default_rng(seed)
    N = np.arange(1, n + 1)
    curve = a - b * N ** (-c)
    near = curve - np.abs(rng.normal(0.0, noise_sd, n))
    far = curve - np.abs(rng.normal(0.05, 0.03, n))
    val = np.where(rng.random(n) < near_share, near, far)
    t0 = pd.Timestamp("2025-01-01", tz="UTC")
    return pd.DataFrame({
        "experiment_id": [f"{campaign}-{i:07d}" for i in range(n)], "campaign": campaign,
        "dataset": "synth", "cell_id": np.arange(n), "arch_group": "vjepa2_vitl/zipformer",
        "proposer": proposer, "status": "ok", "val_ap": val, "train_seconds": 36.0,
        "finished_at": t0 + pd.to_timedelta(N * 60.0, unit="s"),
    })


# ---- planted objective: a known function of the cell, for testing search policies without training ----

class PlantedObjective:
    """``val_ap = base + group effect + sum of per-axis level effects + fixed per-cell noise``, clipped to (0, 1).

    The architecture group (backbone/encoder) carries the largest effect; numeric axes (lr, batch
    size, window) have one peak with a smooth fall-off, so a neighbour of a good cell is good;
    other axes have random level effects. The noise is drawn once per cell id, so the objective
    is a fixed function of the cell. ``best`` is its maximum over the (possibly restricted) space.
    """

    def __init__(self, space: Space | None = None, seed: int = 0, base: float = 0.70, arch_sd: float = 0.06,
                 hp_sd: float = 0.02, noise_sd: float = 0.004):
        self.space = space or Space.load()
        rng = np.random.default_rng(seed)
        names = self.space.axis_names
        self.group_effects = arch_effects(self.space, arch_sd, seed=seed + 1000) \
            if {"backbone", "encoder"} <= set(names) else {}
        self.base, self.noise_sd, self.seed = base, noise_sd, seed
        self.level_effects: dict[str, dict] = {}
        for axis in self.space.axes:
            if axis.name in ("backbone", "encoder") and self.group_effects:
                continue
            k = len(axis.values)
            if k > 2 and all(isinstance(v, (int, float)) for v in axis.values):
                peak = rng.integers(0, k)
                eff = -hp_sd * 0.6 * (np.arange(k) - peak) ** 2
            else:
                eff = rng.normal(0.0, hp_sd, k)
            self.level_effects[axis.name] = dict(zip(axis.values, (eff - eff.mean()).tolist()))

    def _noise(self, ids: np.ndarray) -> np.ndarray:
        # a counter-based draw: the same cell id always gets the same noise, without a table of every cell
        mixed = (ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(self.seed * 7919 + 1)) >> np.uint64(11)
        u = (mixed.astype(np.float64) + 0.5) / float(2 ** 53)
        from scipy.special import ndtri

        return self.noise_sd * ndtri(u)

    def values(self, cells: pd.DataFrame) -> np.ndarray:
        """The objective of each row of a frame with one column per axis (and ``cell_id``)."""
        value = np.full(len(cells), self.base)
        if self.group_effects:
            groups = cells["backbone"].astype(str) + "/" + cells["encoder"].astype(str)
            value = value + groups.map(self.group_effects).to_numpy(float)
        for name, eff in self.level_effects.items():
            value = value + cells[name].map(eff).to_numpy(float)
        ids = cells["cell_id"].to_numpy() if "cell_id" in cells else _cell_ids(self.space, cells)
        return np.clip(value + self._noise(np.asarray(ids)), 0.001, 0.999)

    def __call__(self, cell) -> float:
        """The objective of one Cell (or a mapping of axis values)."""
        values = cell.to_dict() if hasattr(cell, "to_dict") else dict(cell)
        frame = pd.DataFrame([values])
        frame["cell_id"] = self.space.cell_id(values)
        return float(self.values(frame)[0])

    def table(self) -> pd.DataFrame:
        """Every allowed cell as one ``ok`` history row (experiment_id, cell_id, proposer, status, val_ap, axes).

        Built once and cached; ``analysis.baselines.replay`` searches it as a lookup table.
        """
        if getattr(self, "_table", None) is None:
            grids = np.meshgrid(*[np.arange(len(a.choices)) for a in self.space.axes], indexing="ij")
            cols = {a.name: np.array(a.choices, dtype=object)[g.ravel()] for a, g in zip(self.space.axes, grids)}
            frame = pd.DataFrame(cols)
            for a in self.space.axes:  # numeric axes as numbers, like the store's columns
                if all(isinstance(v, (int, float)) for v in a.choices):
                    frame[a.name] = pd.to_numeric(frame[a.name])
            frame.insert(0, "cell_id", _cell_ids(self.space, frame))
            frame.insert(0, "experiment_id", "planted-" + frame["cell_id"].astype(str))
            frame["proposer"], frame["status"] = "planted", "ok"
            frame["val_ap"] = self.values(frame)
            self._table = frame
        return self._table

    @property
    def best(self) -> float:
        return float(self.table()["val_ap"].max())


def planted_search(policy, objective: PlantedObjective, budget: int = 100, round_size: int = 12) -> np.ndarray:
    """Run ``policy`` (a Policy of ``objective.space``) on the planted objective; returns the val_ap sequence.

    A thin use of ``analysis.baselines.replay`` with the objective's full table, so a search on
    planted structure goes through the same propose/observe loop as a replay of a real history.
    """
    from crashsearch.analysis.baselines import replay

    result = replay(policy, objective.space, objective.table(), budget=budget, round_size=round_size)
    return result.history["val_ap"].to_numpy(float)
