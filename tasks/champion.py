"""The champion: a campaign's chosen cell packaged as a collision detector (tasks/detector.py's layout).

``write_champion(home, campaign, out, cell_id=None)``:

1. picks the cell: the campaign's leader by mean validation AP (lab.leaderboard), over the rows
   after the latest bug fix when the campaign has one ("post-bugfix" scope), else every row
   ("full"); or the cell given;
2. takes the head of its best-validated run among the kept weights (tasks/keep.py); a cell with
   none is retrained from that run's recorded settings and seed, and must reproduce its recorded
   validation AP within REPRODUCE_TOLERANCE, or nothing is written;
3. scores the head with the project's evaluation (tasks.evaluate) on the campaign's features;
4. chooses the alert threshold on the validation split (THRESHOLD_RULE);
5. exports the head to ONNX and checks it against torch with onnxruntime (within ONNX_TOLERANCE)
   when onnxruntime is installed; an encoder that does not export keeps the state dict only;
6. writes model.json, head.safetensors, head.onnx and the model card (card.md, card.json).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from crashsearch.lab.errors import UserError
from crashsearch.lab._io import atomic_write, publish, temp_beside
from crashsearch.lab.campaign_space import campaign_space
from crashsearch.lab.console import echo
from crashsearch.lab.features import FeatureSet
from crashsearch.lab.leaderboard import OK_STATUSES, interval, leaderboard
from crashsearch.lab.logfiles import campaign_key, read_object
from crashsearch.lab.settings import Home
from crashsearch.lab.space import Space
from crashsearch.lab.store import Store
from crashsearch.lab.versions import bugfix_events, code_version, post_bugfix
from crashsearch.tasks.detector import (MODEL_JSON, ONNX_FILE, PACKAGE_FORMAT, STATE_FILE, load_head,
                                        risk_over_time)
from crashsearch.tasks.evaluate import _curve, evaluate_heads
from crashsearch.tasks.keep import kept_heads

REPRODUCE_TOLERANCE = 1e-4  # |val AP retrained - recorded|: float rounding of a different group, not a new model
ONNX_TOLERANCE = 1e-5  # max |logit onnxruntime - logit torch| on the test windows
MIN_PRECISION = 0.9
THRESHOLD_RULE = (f"the highest recall at precision >= {MIN_PRECISION} on the validation split, else the F1 "
                  f"optimum, placed halfway between the lowest validation score it alerts on and the next lower "
                  f"one (the same validation counts); a video's score is its highest risk at least the shortest "
                  f"horizon before its event (negatives: before the clip end)")


def write_champion(home: Home, campaign: str, out: str | Path, cell_id: int | None = None,
                   log: Callable[[str], None] = echo) -> dict[str, Any]:
    """Write the package of a campaign's leader (or ``cell_id``) to ``out``; return the card (card.json).

    Raises ValueError in one line: unknown campaign, a cell with no ok run, features missing, a
    retrained cell that does not reproduce its recorded validation AP.
    """
    from crashsearch.lab.cache import load_features
    from crashsearch.lab.datasets import load_dataset

    store = Store(home)
    store.require_campaign(campaign)
    # through the store's backend: an object-store home has them on the bucket, not in this machine's scratch
    info = read_object(store.backend, campaign_key(campaign, "campaign.json")) or {}
    rows, scope = _scoped_rows(home, store, campaign)
    board = leaderboard(rows, k=None)
    if board.empty:
        raise UserError(f"campaign {campaign!r} has no successful experiment ({scope} scope) to package")
    if cell_id is None:
        cell_id = int(board.iloc[0]["cell_id"])
    elif int(cell_id) not in set(board["cell_id"].astype(int)):
        raise UserError(f"cell {cell_id} has no successful run in campaign {campaign!r} ({scope} scope)")
    ranked = board.set_index("cell_id").loc[int(cell_id)]
    runs = rows[(rows["cell_id"] == int(cell_id)) & rows["status"].isin(OK_STATUSES)]
    runs = runs.sort_values(["val_ap", "experiment_id"], ascending=[False, True])
    space, _ = campaign_space(home, campaign)  # its kept copy: the file it named may be on another machine
    cell = space.cell(int(cell_id))
    dataset = load_dataset(info.get("dataset_path") or rows.iloc[0]["dataset"])
    features = load_features(home, dataset.name, cell["backbone"], dataset=dataset)
    recorded_weights = (info.get("weights") or {}).get(cell["backbone"])
    if recorded_weights is not None and recorded_weights != features.weights:
        raise UserError(f"the campaign trained on {cell['backbone']} features of weights {recorded_weights!r}, "
                         f"the cache now holds {features.weights!r}: the package would be another model")

    run, state, origin = _head_state(home, campaign, runs, cell, features, space, log)
    head = load_head(cell["encoder"], cell["size"], features.dim, state)
    window_s = float(cell["window_s"])
    horizons = tuple(float(h) for h in space.fixed.get("horizons_s", (0.5, 1.0, 1.5)))
    metrics = evaluate_heads(_score_fn(head), features, window_s, horizons)[0]
    threshold, at = choose_threshold(*validation_scores(head, features, features.steps(window_s), min(horizons)))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_state(out / STATE_FILE, head)
    onnx = export_onnx(head, features, window_s, out / ONNX_FILE, min(horizons))
    model = {
        "format": PACKAGE_FORMAT, "campaign": campaign, "cell_id": int(cell_id), "cell": cell.to_dict(),
        "encoder": cell["encoder"], "size": cell["size"], "in_dim": features.dim, "window_s": window_s,
        "window_steps": features.steps(window_s), "threshold": threshold, "threshold_rule": THRESHOLD_RULE,
        "features": {"backbone": features.backbone, "weights": features.weights, "step_hz": features.step_hz,
                     **{k: features.meta.get("spec", {}).get(k) for k in ("clip_frames", "frame_size", "decode_fps",
                                                                          "history_s", "min_history_s")},
                     "horizons_s": list(horizons)},
        "onnx": onnx,
    }
    _write_json(out / MODEL_JSON, model)
    card = _card(campaign, scope, info, dataset, features, cell, ranked, runs, run, metrics, model, at, origin)
    _write_json(out / "card.json", card)
    text = card_markdown(card)
    atomic_write(out / "card.md", lambda f: f.write(text.encode()))
    return card


# ---- choosing and getting the head --------------------------------------------------------


def leader_cell(home: Home, campaign: str) -> int | None:
    """The campaign's leading cell id in the champion's scope (None: no successful run yet)."""
    rows, _ = _scoped_rows(home, Store(home), campaign)
    board = leaderboard(rows, k=1)
    return None if board.empty else int(board.iloc[0]["cell_id"])


def _scoped_rows(home: Home, store: Store, campaign: str) -> tuple[pd.DataFrame, str]:
    """The campaign's rows after its latest bug fix ("post-bugfix"), or all of them ("full")."""
    rows = store.experiments(campaign)
    events = bugfix_events(home, campaign)
    if events:
        after = post_bugfix(rows, events)
        if len(after):
            return after, "post-bugfix"
    return rows, "full"


def _head_state(home: Home, campaign: str, runs: pd.DataFrame, cell, features: FeatureSet, space: Space,
                log: Callable[[str], None]) -> tuple[pd.Series, dict[str, torch.Tensor], str]:
    """(the run, its head's state dict, "kept" or "retrained"): the best-validated kept run of the
    cell, else its best-validated run retrained from its recorded seed."""
    kept = {k.experiment_id: k for k in kept_heads(home, campaign) if k.cell_id == cell.id}
    for _, run in runs.iterrows():
        if run["experiment_id"] in kept:
            return run, kept[run["experiment_id"]].state(), "kept"
    from crashsearch.tasks.train import TrainResult, train_batch

    run = runs.iloc[0]
    # where the run trained, when this machine has it: another device's float rounding is not the run's
    device = "cuda" if str(run.get("device") or "").startswith("cuda") and torch.cuda.is_available() else "cpu"
    result = train_batch([cell], features, [int(run["seed"])], fixed=space.fixed, device=device)[0]
    if not isinstance(result, TrainResult):
        raise ValueError(f"retraining cell {cell.id} (seed {int(run['seed'])}) failed: {result}")
    got, want = result.metrics["val_ap"], float(run["val_ap"])
    log(f"cell {cell.id} has no kept weights: retrained from its recorded settings and seed {int(run['seed'])} "
        f"(val AP {got:.6f}, recorded {want:.6f})")
    if not abs(got - want) <= REPRODUCE_TOLERANCE:
        raise ValueError(f"retraining cell {cell.id} with seed {int(run['seed'])} gave val AP {got:.6f}, the history "
                         f"recorded {want:.6f} (code version {run['code_version']}, now {code_version()}): "
                         f"not the same model, nothing written")
    return run, result.state, "retrained"


def _score_fn(head: torch.nn.Module):
    return lambda x, mask=None: head(x) if mask is None else head(x, mask)


# ---- the threshold ------------------------------------------------------------------------


def validation_scores(head: torch.nn.Module, features: FeatureSet, window_steps: int,
                      min_horizon_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels) of the validation videos: each video's highest risk at least ``min_horizon_s``
    before its reference time (the event, or the clip end of a negative), as predict would alert."""
    rows = features.indices("val").cpu().tolist()
    last = features.x.shape[1] - 1 - round(min_horizon_s * features.step_hz)
    x = features.x.cpu()
    scores = []
    for i in rows:
        first = int(features.first_real[i])
        risk = risk_over_time(head, x[i, :last + 1], first, window_steps)
        scores.append(float(np.nanmax(risk)) if np.isfinite(risk).any() else 0.0)
    return np.asarray(scores), features.y.cpu().numpy()[rows]


def choose_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, float]]:
    """The threshold of THRESHOLD_RULE and its validation precision, recall, F1 and rule used."""
    if len(scores) == 0 or labels.sum() == 0:
        return 0.5, {"rule": "default 0.5 (no positive validation video)", "precision": math.nan,
                     "recall": math.nan, "f1": math.nan}
    tps, fps, n_pos = _curve(scores, labels)
    thresholds = np.unique(scores)[::-1]  # the distinct scores, descending: _curve's order
    precision, recall = tps / (tps + fps), tps / n_pos
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    ok = precision >= MIN_PRECISION
    if ok.any():
        best = np.flatnonzero(ok & (recall == recall[ok].max()))[0]  # the largest threshold with that recall
        rule = f"highest recall at precision >= {MIN_PRECISION}"
    else:
        best = int(np.argmax(f1))
        rule = f"F1 optimum (no threshold reaches precision {MIN_PRECISION})"
    # halfway down to the next lower score: the same validation counts, less tied to the last positive's score
    value = (thresholds[best] + thresholds[best + 1]) / 2 if best + 1 < len(thresholds) else thresholds[best]
    return float(value), {"rule": rule, "precision": float(precision[best]),
                                     "recall": float(recall[best]), "f1": float(f1[best])}


# ---- ONNX ---------------------------------------------------------------------------------


def export_onnx(head: torch.nn.Module, features: FeatureSet, window_s: float, path: Path,
                horizon: float = 0.5) -> dict[str, Any]:
    """Export the head to ``path`` and check it on the test windows ending ``horizon`` seconds before the
    event (short clips' padding masked); returns what the card says of it:
    {"exported", "reason" (if not), "checked", "max_abs_diff", "tolerance"}."""
    rows = features.indices("test")[:256]
    x = features.window(rows, horizon, window_s).cpu().float()  # (B, T, D)
    mask = features.window_mask(rows, horizon, window_s)
    mask = torch.ones(x.shape[:2], dtype=torch.bool) if mask is None else mask.cpu()
    try:
        _export(head, x, mask, path)
    except Exception as exc:  # noqa: BLE001 - an encoder the exporter cannot take keeps its state dict
        path.unlink(missing_ok=True)
        return {"exported": False, "reason": " ".join(f"{type(exc).__name__}: {exc}".split())[:300]}
    try:
        import onnxruntime as ort
    except ImportError:
        return {"exported": True, "checked": False, "reason": "onnxruntime is not installed: not checked"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x.numpy(), "mask": mask.numpy()})[0]
    with torch.no_grad():
        want = head(x, mask).numpy()
    diff = float(np.max(np.abs(got - want))) if len(want) else 0.0
    return {"exported": True, "checked": True, "max_abs_diff": diff, "tolerance": ONNX_TOLERANCE,
            "within_tolerance": diff <= ONNX_TOLERANCE, "windows": int(len(want))}


def _export(head: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), warnings.catch_warnings():  # the exporter narrates on stdout
        warnings.simplefilter("ignore")
        program = torch.onnx.export(head, (x, mask), dynamo=True, input_names=["x", "mask"], output_names=["logits"],
                                    dynamic_shapes={"x": {0: batch}, "mask": {0: batch}})
        tmp = temp_beside(path)
        program.save(str(tmp))
    publish(tmp, path)  # the atomic write's last step (lab/_io.py): the exporter writes by path


# ---- files --------------------------------------------------------------------------------


def _write_state(path: Path, head: torch.nn.Module) -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in head.state_dict().items()}
    data = save(tensors, metadata={"format": PACKAGE_FORMAT})
    atomic_write(path, lambda f: f.write(data))


def _write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, default=_plain) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)


# ---- a package on an object store (the nightly champion of an s3:// home) -------------------

CARD_JSON = "card.json"
PACKAGE_FILES = (MODEL_JSON, STATE_FILE, ONNX_FILE, "card.md", CARD_JSON)  # a package's files (card last); nothing else is touched
FETCH_TRIES = 3


def publish_package(folder: Path, backend: Any, prefix: str) -> None:
    """Put the package in ``folder`` under ``prefix`` of a backend ("": its root), with no rename: its card.json
    is deleted first and put last, so a card.json there means the files beside it are its package (a
    reader checks that it did not change while it read them: ``fetch_package``). A crash half-way
    leaves no card: the next nightly writes the package again."""
    at = f"{prefix.strip('/')}/" if prefix.strip("/") else ""  # "": the backend's root is the package
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != CARD_JSON)
    backend.delete(at + CARD_JSON)
    for name in names:
        backend.put(at + name, (folder / name).read_bytes())
    for name in set(PACKAGE_FILES) - set(names) - {CARD_JSON}:  # the old package's ONNX the new one could not export
        backend.delete(at + name)
    backend.put(at + CARD_JSON, (folder / CARD_JSON).read_bytes())


def fetch_package(url: str) -> Path:
    """The package published at ``url`` (``s3://bucket/home/campaigns/<id>/champion``) as a local folder:
    a copy in the scratch folder, one per card, so a package read once is not read again. Raises
    UserError (one line) when no package is there, or it changed during each of FETCH_TRIES reads."""
    import hashlib
    import shutil
    import uuid

    from crashsearch.lab.storage import backend_for
    from crashsearch.lab.storage_s3 import scratch_base

    backend = backend_for(url.rstrip("/"))
    for _ in range(FETCH_TRIES):
        try:
            card = backend.read(CARD_JSON)
        except FileNotFoundError:
            raise UserError(f"{url} holds no model package (no {CARD_JSON}: none was published, or one is being "
                            f"written; try again)") from None
        local = scratch_base() / "packages" / hashlib.sha256(url.encode() + card).hexdigest()[:16]
        if (local / CARD_JSON).is_file():
            return local
        files = {}
        for name in PACKAGE_FILES[:-1]:  # by name, no listing: the URL may be a bucket's root
            try:
                files[name] = backend.read(name)
            except FileNotFoundError:  # head.onnx of an encoder that does not export
                pass
        try:
            same = backend.read(CARD_JSON) == card  # unchanged: the files read are this card's package
        except FileNotFoundError:  # a new package is being published
            same = False
        if not same:
            continue
        temp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}")
        temp.mkdir(parents=True)
        for name, data in {**files, CARD_JSON: card}.items():
            (temp / name).write_bytes(data)
        try:
            temp.rename(local)  # whole or not at all; a concurrent fetch may have put the same copy first
        except OSError:
            shutil.rmtree(temp, ignore_errors=True)
        return local
    raise UserError(f"the package at {url} changed while it was read, {FETCH_TRIES} times; try again")


# ---- the card -----------------------------------------------------------------------------


def _mean_interval(values: pd.Series) -> dict[str, Any]:
    v = pd.to_numeric(values, errors="coerce").dropna().astype(float)
    n = len(v)
    if n == 0:
        return {"mean": None, "n": 0, "ci_lo": None, "ci_hi": None}
    lo, hi = interval(v.mean(), v.std() if n > 1 else np.nan, n)
    return {"mean": float(v.mean()), "n": n, "ci_lo": None if np.isnan(lo) else float(lo),
            "ci_hi": None if np.isnan(hi) else float(hi)}


def _card(campaign, scope, info, dataset, features, cell, ranked, runs, run, metrics, model, at, origin) -> dict:
    counts = {s: {"videos": int((features.split == s).sum()),
                  "positives": int(features.y.cpu().numpy()[features.split == s].sum())} for s in ("train", "val", "test")}
    return {
        "campaign": campaign, "scope": scope, "cell_id": int(cell.id), "cell": cell.to_dict(),
        "rank": int(ranked["rank"]), "replicates": {"val_ap": _mean_interval(runs["val_ap"]),
                                                    "test_ap": _mean_interval(runs["test_ap"]),
                                                    "test_auc": _mean_interval(runs["test_auc"])},
        "package_run": {"experiment_id": run["experiment_id"], "seed": int(run["seed"]),
                        "code_version": run["code_version"], "origin": origin,
                        "recorded": {k: _float(run.get(k)) for k in ("val_ap", "test_ap", "test_auc")},
                        "evaluated": {k: _float(metrics.get(k)) for k in ("val_ap", "test_ap", "test_auc")}},
        "threshold": {"value": model["threshold"], "rule": THRESHOLD_RULE, "chosen_by": at["rule"],
                      "val_precision": at["precision"], "val_recall": at["recall"], "val_f1": at["f1"]},
        "data": {"dataset": dataset.name, "path": str(dataset.root), "splits": counts},
        "backbone": {"name": features.backbone, "weights": features.weights,
                     "random": features.weights == "random"},
        "features": model["features"], "onnx": model["onnx"],
        "code_version": {"run": run["code_version"], "package": code_version()},
    }


def _float(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _fmt(stats: dict) -> str:
    if stats["mean"] is None:
        return "- (N = 0)"
    ci = (f"95% interval [{stats['ci_lo']:.4f}, {stats['ci_hi']:.4f}]" if stats["ci_lo"] is not None
          else "no interval (one run)")
    return f"{stats['mean']:.4f}, {ci}, N = {stats['n']} seed replicates"


def card_markdown(card: dict) -> str:
    """The model card as Markdown (card.md)."""
    c, run, th, onnx = card["cell"], card["package_run"], card["threshold"], card["onnx"]
    lines = [f"# Collision detector: campaign {card['campaign']}, cell {card['cell_id']}", ""]
    if card["backbone"]["random"]:
        lines += [f"**The backbone {card['backbone']['name']} has RANDOM weights (offline): these figures show the "
                  f"plumbing works, not how well a real detector would do.**", ""]
    lines += [
        f"Cell: {c['backbone']} / {c['encoder']} / {c['size']}, loss {c['loss']}, lr {c['lr']}, batch {c['batch_size']}, "
        f"window {c['window_s']} s, augment {c['augment']} (rank {card['rank']} by mean validation AP, "
        f"{card['scope']} scope).", "",
        "## Held-out test split (over the cell's seed replicates)", "",
        f"- test AP: {_fmt(card['replicates']['test_ap'])}",
        f"- test AUC: {_fmt(card['replicates']['test_auc'])}",
        f"- validation AP: {_fmt(card['replicates']['val_ap'])}", "",
        f"This package is run {run['experiment_id']} (seed {run['seed']}, {run['origin']} weights): test AP "
        f"{_num(run['evaluated']['test_ap'])} (recorded {_num(run['recorded']['test_ap'])}), test AUC "
        f"{_num(run['evaluated']['test_auc'])}, validation AP {_num(run['evaluated']['val_ap'])}.", "",
        "## Alert threshold", "",
        f"{th['value']:.6f}: {th['rule']}. Used: {th['chosen_by']} (validation precision {_num(th['val_precision'])}, "
        f"recall {_num(th['val_recall'])}, F1 {_num(th['val_f1'])}).", "",
        "## Data and features", "",
        f"Dataset {card['data']['dataset']} ({card['data']['path']}): "
        + ", ".join(f"{s} {v['videos']} videos ({v['positives']} positive)" for s, v in card['data']['splits'].items())
        + ".",
        f"Backbone {card['backbone']['name']}, weights {card['backbone']['weights']}; embeddings every "
        f"{1 / card['features']['step_hz']:g} s, clips of {card['features']['clip_frames']} frames at "
        f"{card['features']['decode_fps']} fps; horizons {card['features']['horizons_s']} s.", "",
        "## Files", "",
        "- head.safetensors: the head's state dict",
        ("- head.onnx: the head as ONNX (inputs x (B, T, D), mask (B, T) bool)"
         + (f"; onnxruntime matches torch within {onnx['max_abs_diff']:.1e} (tolerance {onnx['tolerance']:.0e})"
            if onnx.get("checked") else f"; {onnx.get('reason', '')}")) if onnx["exported"]
        else f"- no ONNX: the {c['encoder']} head does not export ({onnx['reason']}); use head.safetensors",
        "", f"Code version: run {card['code_version']['run']}, package written by {card['code_version']['package']}.",
    ]
    return "\n".join(lines) + "\n"


def _num(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
