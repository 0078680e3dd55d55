"""The experiment record: one row per experiment, the columns of the history log.

Modelled on Optuna's FrozenTrial: a status, values, the parameters (one column per axis of the
space, added by the store from the space), system attributes (device, code version, timings) and
the proposal's provenance (policy, model, rationale, tokens, cost). Test metrics are recorded
but kept apart: policies never see columns starting with ``test_``.
"""
from __future__ import annotations

import pyarrow as pa

STATUSES = ("ok", "failed", "healed", "invalid")

# Columns every experiment row has, besides one column per axis of the space.
BASE_FIELDS = [
    pa.field("experiment_id", pa.string(), nullable=False),  # unique across campaigns and restarts
    pa.field("campaign", pa.string(), nullable=False),
    pa.field("dataset", pa.string()),
    pa.field("space", pa.string()),  # space name
    pa.field("cell_id", pa.int64(), nullable=False),  # canonical mixed-radix id in that space
    pa.field("arch_group", pa.string()),  # backbone/encoder
    pa.field("proposer", pa.string()),  # policy name: random, tpe, evolution, claude, gemini, replicate, heal, import
    pa.field("model", pa.string()),  # LLM model id, "" for offline policies
    pa.field("rationale", pa.string()),
    pa.field("round", pa.int32()),
    pa.field("status", pa.string(), nullable=False),  # one of STATUSES
    pa.field("val_ap", pa.float64()),  # the metric: mean AP over the horizons on the validation split
    pa.field("val_ap_h05", pa.float64()),  # per-horizon AP, prediction 0.5 s before the event
    pa.field("val_ap_h10", pa.float64()),
    pa.field("val_ap_h15", pa.float64()),
    pa.field("val_auc", pa.float64()),
    pa.field("test_ap", pa.float64()),  # held-out test split: never shown to policies
    pa.field("test_auc", pa.float64()),
    pa.field("seed", pa.int64()),
    pa.field("replicate", pa.int32()),  # 0 for the first run of a cell, 1.. for re-runs with new seeds
    pa.field("healed_from", pa.string()),  # experiment id of the failed run this one heals
    pa.field("heal_action", pa.string()),  # e.g. "batch_size 64->32", "lr 0.01->0.003"
    pa.field("train_seconds", pa.float64()),
    pa.field("eval_seconds", pa.float64()),
    pa.field("params", pa.int64()),
    pa.field("peak_mem_mb", pa.float64()),
    pa.field("device", pa.string()),
    pa.field("worker", pa.string()),  # host/process that trained it
    pa.field("code_version", pa.string()),  # git commit + content hash of models/, tasks/, lab/
    pa.field("error_class", pa.string()),  # e.g. OOMError, NaNLossError, ShapeError, MissingFeaturesError
    pa.field("error_message", pa.string()),  # one line
    pa.field("started_at", pa.timestamp("us", tz="UTC")),
    pa.field("finished_at", pa.timestamp("us", tz="UTC")),
    pa.field("tokens_in", pa.int64()),
    pa.field("tokens_out", pa.int64()),
    pa.field("cost_usd", pa.float64()),
]
BASE_COLUMNS = [f.name for f in BASE_FIELDS]
# Columns that hold a probability-like score: finite and in [0, 1] or null, never anything else.
METRICS = ("val_ap", "val_ap_h05", "val_ap_h10", "val_ap_h15", "val_auc", "test_ap", "test_auc")


def axis_type(values: tuple) -> pa.DataType:
    """Arrow type of an axis column: int64, float64 or string, from the axis's values."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return pa.int64()
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return pa.float64()
    return pa.string()


def experiment_schema(space) -> pa.Schema:
    """The full row schema for a space: BASE_FIELDS then one column per axis."""
    return pa.schema(BASE_FIELDS + [pa.field(a.name, axis_type(a.values)) for a in space.axes])
