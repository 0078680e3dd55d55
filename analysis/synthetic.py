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

    out = _history_frame(space, df, proposer, val_ap, failed, rng, campaign, dataset, start, noise_sd)

    var_arch = float(np.var(g_eff))
    var_within = sum(float(np.var(v)) for v in level_eff.values()) + noise_sd**2
    out.attrs["truth"] = {
        "arch_effects": effects,
        "eta2_arch": var_arch / (var_arch + var_within),
        "arch_sd": arch_sd, "hp_sd": hp_sd, "noise_sd": noise_sd,
    }
    return out


class PlantedSpaceModel:
    """A planted mean AP over every cell whose functional-ANOVA shares are known in closed form.

    ``mean = base + arch[arch axes] + lr[lr] + encoder x lr interaction + sum of other axes' level
    effects``: the arch table adds a backbone effect (sd arch_sd), an encoder effect (0.7 arch_sd),
    a size effect (0.25 arch_sd), a backbone x encoder interaction (0.3 arch_sd) and a little of
    every arch combination (0.1 arch_sd); the learning rate has one peak (sd of its effect lr_sd),
    the encoder x lr table is centred over both axes (a pure interaction), every other axis gets
    N(0, hp_sd) level effects; each run adds N(0, noise_sd) seed noise. The terms are orthogonal
    under the uniform distribution of cells, so ``truth`` is exact: each term's variance over the
    total (noise included).
    """

    def __init__(self, space: Space | None = None, seed: int = 0, base: float = 0.70, arch_sd: float = 0.05,
                 lr_sd: float = 0.04, interaction_sd: float = 0.01, hp_sd: float = 0.008, noise_sd: float = 0.015):
        self.space = space or Space.load()
        rng = np.random.default_rng(seed)
        self.base, self.noise_sd = base, noise_sd
        self.arch_axes = [a.name for a in self.space.axes if a.group == "arch"]
        shape = [len(self.space.axis(a).choices) for a in self.arch_axes]
        scale = {"backbone": 1.0, "encoder": 0.7, "size": 0.25}
        self.arch = rng.normal(0.0, 0.1 * arch_sd, shape)
        for j, name in enumerate(self.arch_axes):
            view = [1] * len(shape)
            view[j] = shape[j]
            self.arch = self.arch + rng.normal(0.0, scale.get(name, 0.25) * arch_sd, shape[j]).reshape(view)
        if {"backbone", "encoder"} <= set(self.arch_axes):
            b, e = self.arch_axes.index("backbone"), self.arch_axes.index("encoder")
            view = [1] * len(shape)
            view[b], view[e] = shape[b], shape[e]
            self.arch = self.arch + rng.normal(0.0, 0.3 * arch_sd, (shape[b], shape[e])).reshape(view)
        self.arch -= self.arch.mean()
        lr = self.space.axis("lr").choices
        peak = rng.integers(1, len(lr) - 1)
        bump = -((np.arange(len(lr)) - peak) ** 2).astype(float)
        bump -= bump.mean()
        self.lr = bump * lr_sd / bump.std()
        enc = self.space.axis("encoder").choices
        inter = rng.normal(0.0, interaction_sd, (len(enc), len(lr)))
        self.inter = inter - inter.mean(0) - inter.mean(1)[:, None] + inter.mean()
        self.levels = {}
        for a in self.space.axes:
            if a.group != "arch" and a.name != "lr":
                eff = rng.normal(0.0, hp_sd, len(a.choices))
                self.levels[a.name] = eff - eff.mean()

    def mean(self, idx: dict[str, np.ndarray]) -> np.ndarray:
        """Mean AP of cells given as {axis: index into the axis's choices}."""
        value = self.base + self.arch[tuple(idx[a] for a in self.arch_axes)] + self.lr[idx["lr"]]
        value = value + self.inter[idx["encoder"], idx["lr"]]
        for name, eff in self.levels.items():
            value = value + eff[idx[name]]
        return value

    @property
    def truth(self) -> dict:
        """Exact shares of one run's AP variance over the uniform distribution of cells.

        {"architecture" (every arch axis), "arch_group" (backbone and encoder), each axis, "encoder x lr",
        "seed noise": share; "total_var"}.
        """
        names = self.arch_axes
        arch_of = {"architecture": tuple(range(len(names)))}
        if {"backbone", "encoder"} <= set(names):
            arch_of["arch_group"] = (names.index("backbone"), names.index("encoder"))
        arch_of.update({n: (i,) for i, n in enumerate(names)})
        var = {k: float(np.var(self.arch.mean(axis=tuple(j for j in range(len(names)) if j not in keep))))
               for k, keep in arch_of.items()}
        var["lr"] = float(np.var(self.lr))
        var["encoder x lr"] = float(np.mean(self.inter ** 2))
        var.update({n: float(np.var(e)) for n, e in self.levels.items()})
        var["seed noise"] = self.noise_sd ** 2
        total = var["architecture"] + var["lr"] + var["encoder x lr"] + var["seed noise"] + sum(
            float(np.var(e)) for e in self.levels.values())
        return {**{k: v / total for k, v in var.items()}, "total_var": total}


def adaptive_history(n: int = 6000, model: PlantedSpaceModel | None = None, seed: int = 0, temperature: float = 0.1,
                     best_lr_share: float = 0.9, replicate_share: float = 0.1, uniform: bool = False,
                     policies: tuple[str, ...] = ("claude", "gemini"), campaign: str = "adaptive",
                     dataset: str = "synth-day", start: str = "2025-01-01") -> pd.DataFrame:
    """A history sampled the way agents sample, on a planted model whose shares over the space are exact.

    Agents pick an architecture (every arch axis at once) by a softmax over the architectures' mean
    APs at ``temperature``, run the learning rate that works best for it with probability
    ``best_lr_share`` (else a random one), the other axes at random; a share ``replicate_share`` of
    rows re-run an earlier cell. ``uniform``: every axis at random (a from-scratch random arm;
    proposer "random"). ``attrs["truth"]`` holds ``model.truth``; the model's default is
    ``PlantedSpaceModel()``.
    """
    model = model or PlantedSpaceModel()
    space = model.space
    rng = np.random.default_rng(seed)
    idx: dict[str, np.ndarray] = {}
    if uniform:
        for a in space.axes:
            idx[a.name] = rng.integers(0, len(a.choices), n)
        proposer = np.full(n, "random", dtype=object)
    else:
        logits = model.arch.ravel() / temperature
        p = np.exp(logits - logits.max())
        pick = rng.choice(len(p), n, p=p / p.sum())
        for name, sub in zip(model.arch_axes, np.unravel_index(pick, model.arch.shape)):
            idx[name] = sub
        best_lr = np.argmax(model.lr[None, :] + model.inter, axis=1)[idx["encoder"]]
        idx["lr"] = np.where(rng.random(n) < best_lr_share, best_lr, rng.integers(0, len(model.lr), n))
        for a in space.axes:
            if a.name not in idx:
                idx[a.name] = rng.integers(0, len(a.choices), n)
        proposer = rng.choice(np.array(policies, dtype=object), n)
    is_rep = (rng.random(n) < replicate_share) & (np.arange(n) > 0)
    src = np.where(is_rep, (rng.random(n) * np.arange(n)).astype(int), np.arange(n))
    for i in np.flatnonzero(is_rep):  # a replicate of a replicate re-runs the original cell
        src[i] = src[src[i]]
    idx = {k: v[src] for k, v in idx.items()}
    proposer = np.where(is_rep, "replicate", proposer)
    val_ap = np.clip(model.mean(idx) + rng.normal(0.0, model.noise_sd, n), 0.001, 0.999)
    axes = pd.DataFrame({a.name: np.array(a.choices, dtype=object)[idx[a.name]] for a in space.axes})
    for a in space.axes:  # numeric axes as numbers, like the store's columns
        if all(isinstance(v, (int, float)) for v in a.choices):
            axes[a.name] = pd.to_numeric(axes[a.name])
    out = _history_frame(space, axes, proposer.astype(str), val_ap, np.zeros(n, bool), rng, campaign, dataset, start,
                         model.noise_sd)
    out.attrs["truth"] = model.truth
    return out


def _history_frame(space: Space, axes: pd.DataFrame, proposer: np.ndarray, val_ap: np.ndarray, failed: np.ndarray,
                   rng: np.random.Generator, campaign: str, dataset: str, start: str, noise_sd: float) -> pd.DataFrame:
    """Store-shaped rows (every ``lab.schema`` base column, then one column per axis) of planted APs, in time order."""
    n = len(axes)
    df = axes[[a.name for a in space.axes]].reset_index(drop=True)
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
    return pd.concat([out[BASE_COLUMNS], df], axis=1)


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
