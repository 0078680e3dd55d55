"""What a valid experiment row is: the checks the history store runs before it writes anything.

``clean_row`` checks and normalises one row dict (``Store.append`` and ``lab.exchange.import_log``);
``clean_table`` checks a whole Arrow table column-wise (``Store.append_table``, the bulk path).
Both raise ValueError with a one-line message naming the row and column of the first problem.
"""
from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from crashsearch.lab.errors import UserError
from crashsearch.lab.bounds import TIME_MAX, TIME_MIN, TIME_RANGE
from crashsearch.lab.schema import METRICS, STATUSES
from crashsearch.lab.space import Space

REQUIRED = ("experiment_id", "campaign", "cell_id", "status")
CAMPAIGN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # a safe folder name


def check_campaign_id(campaign: str) -> str:
    """Return ``campaign`` if it is a safe folder name, else raise ValueError naming it."""
    if not isinstance(campaign, str) or not CAMPAIGN_ID.match(campaign):
        raise UserError(f"campaign id {campaign!r} must be letters, digits, '.', '_' or '-' (not starting with . _ -)")
    return campaign


def clean_row(row: dict, campaign: str, space: Space, schema: pa.Schema, now: datetime) -> dict:
    """A copy of ``row`` with every schema column, values normalised; raises ValueError 'column X: ...'.

    Fills ``campaign``, ``space``, ``finished_at`` (``now``), missing axis values and
    ``arch_group`` from ``cell_id``; axis values that are given must agree with it (except for
    status ``invalid``).
    """
    if not isinstance(row, dict):
        raise UserError(f"a row must be a dict, got {type(row).__name__}")
    unknown = [k for k in row if k not in schema.names]
    if unknown:
        raise UserError(f"column {unknown[0]}: not a column of the experiment schema")
    out = {}
    for field in schema:
        try:
            out[field.name] = arrow_value(row.get(field.name), field.type)
        except ValueError as exc:
            raise UserError(f"column {field.name}: {exc}") from None
    for name in METRICS:
        value = out.get(name)
        if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise UserError(f"column {name}: {value!r} is not a score in [0, 1]")
    if out["campaign"] is None:
        out["campaign"] = campaign
    elif out["campaign"] != campaign:
        raise UserError(f"column campaign: {out['campaign']!r} is not {campaign!r}")
    for name in REQUIRED:
        if out[name] is None or out[name] == "":
            raise UserError(f"column {name}: required but missing")
    if out["status"] not in STATUSES:
        raise UserError(f"column status: {out['status']!r} is not one of {', '.join(STATUSES)}")
    if out["space"] is None:
        out["space"] = space.name
    if out["finished_at"] is None:
        out["finished_at"] = now
    if out["status"] != "invalid":
        expected = _decode(space, out["cell_id"])
        for axis in space.axes:
            given = out[axis.name]
            if given is None:
                out[axis.name] = expected[axis.name]
            elif not _matches(expected[axis.name], given):
                raise UserError(f"column {axis.name}: {given!r} disagrees with cell_id {out['cell_id']} "
                                 f"({axis.name}={expected[axis.name]!r})")
            else:
                out[axis.name] = expected[axis.name]
        if out["arch_group"] is None and "backbone" in expected and "encoder" in expected:
            out["arch_group"] = f"{expected['backbone']}/{expected['encoder']}"
    return out


def clean_table(table: pa.Table, campaign: str, schema: pa.Schema) -> pa.Table:
    """``table`` checked column-wise and cast to ``schema`` (missing columns null).

    Fills a missing ``campaign`` column; checks the columns are schema columns, required ones
    have no nulls, statuses are valid, ids are unique and every row is of ``campaign``. Does not
    check axis values against cell_id (``clean_row`` does). Raises ValueError naming the column.
    """
    if "campaign" not in table.column_names:
        table = table.append_column("campaign", pa.array([campaign] * table.num_rows, pa.string()))
    unknown = [name for name in table.column_names if name not in schema.names]
    if unknown:
        raise UserError(f"column {unknown[0]}: not a column of the experiment schema")
    for name in REQUIRED:
        if name not in table.column_names:
            raise UserError(f"column {name}: required but missing")
        if table[name].null_count:
            first = table[name].to_pylist().index(None)
            raise UserError(f"row {first} column {name}: required but null")
    bad = pc.invert(pc.is_in(table["status"], value_set=pa.array(STATUSES)))
    if pc.any(bad).as_py():
        first = pc.index(bad, True).as_py()
        raise UserError(f"row {first} column status: {table['status'][first].as_py()!r} is not one of {', '.join(STATUSES)}")
    other = pc.not_equal(table["campaign"], campaign)
    if pc.any(other).as_py():
        first = pc.index(other, True).as_py()
        raise UserError(f"row {first} column campaign: {table['campaign'][first].as_py()!r} is not {campaign!r}")
    for name in METRICS:
        if name not in table.column_names:
            continue
        try:
            values = pc.cast(table[name], pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise UserError(f"column {name}: cannot be read as double ({exc})") from None
        # NaN is a missing score (stored as is by this bulk path); inf and values outside [0, 1] are impossible
        bad = pc.fill_null(pc.or_(pc.is_inf(values), pc.or_(pc.less(values, 0.0), pc.greater(values, 1.0))), False)
        if pc.any(bad).as_py():
            first = pc.index(bad, True).as_py()
            raise UserError(f"row {first} column {name}: {values[first].as_py()!r} is not a score in [0, 1]")
    _check_domains(table)
    if pc.count_distinct(table["experiment_id"]).as_py() != table.num_rows:
        raise UserError("column experiment_id: the table repeats an id")
    columns = []
    for field in schema:
        if field.name in table.column_names:
            try:
                columns.append(table[field.name].cast(field.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise UserError(f"column {field.name}: cannot be read as {field.type} ({exc})") from None
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _check_domains(table: pa.Table) -> None:
    """Raise ValueError naming the row and column of an infinite number or a time outside lab.bounds' range."""
    for name in table.column_names:
        column = table[name]
        if pa.types.is_floating(column.type):
            bad = pc.fill_null(pc.is_inf(column), False)
        elif pa.types.is_timestamp(column.type):
            low, high = (pa.scalar(t, pa.timestamp("us", tz="UTC")) for t in (TIME_MIN, TIME_MAX))
            us = pc.cast(column, pa.timestamp("us", tz=column.type.tz or "UTC"), safe=False)
            bad = pc.fill_null(pc.or_(pc.less(us, low), pc.greater(us, high)), False)
        else:
            continue
        if pc.any(bad).as_py():
            first = pc.index(bad, True).as_py()
            raise UserError(f"row {first} column {name}: {column[first].as_py()!r} is out of range "
                             f"(numbers must be finite, times in {TIME_RANGE})")


def arrow_value(value: Any, kind: pa.DataType) -> Any:
    """``value`` as the Python type Arrow writes for ``kind``; None and NaN become None.

    Raises ValueError (without the column name) when the value is of the wrong type or range.
    """
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if pa.types.is_string(kind):
        if not isinstance(value, str):
            raise UserError(f"expected a string, got {type(value).__name__} {value!r}")
        return value
    if pa.types.is_integer(kind):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"expected an integer, got {type(value).__name__} {value!r}")
        bits = kind.bit_width - 1
        if not -(2 ** bits) <= value < 2 ** bits:
            raise UserError(f"{value} does not fit in {kind}")
        return value
    if pa.types.is_floating(kind):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"expected a number, got {type(value).__name__} {value!r}")
        value = float(value)
        if math.isinf(value):  # readers average and rank these: an inf would top or sink every figure
            raise UserError(f"{value} is not a finite number")
        return None if math.isnan(value) else value
    if pa.types.is_timestamp(kind):
        if isinstance(value, str):
            try:
                value = pd.Timestamp(value)
            except ValueError:
                raise UserError(f"{value!r} is not an ISO-8601 time") from None
        if isinstance(value, pd.Timestamp):
            value = value.to_pydatetime()
        if not isinstance(value, datetime):
            raise UserError(f"expected a datetime, got {type(value).__name__} {value!r}")
        if value.tzinfo is None:
            raise UserError(f"{value.isoformat()} has no time zone; give UTC times (datetime.now(timezone.utc))")
        if not TIME_MIN <= value <= TIME_MAX:  # the analysis computes in pandas nanoseconds
            raise UserError(f"{value.isoformat()} is out of range: times must lie in {TIME_RANGE}")
        return value.astimezone(timezone.utc)
    raise UserError(f"unsupported column type {kind}")


def _decode(space: Space, cell_id: int) -> dict:
    """Axis values of a full-space cell id (restrictions ignored: ids are the parent's)."""
    size = math.prod(len(a.values) for a in space.axes)
    if not 0 <= cell_id < size:
        raise UserError(f"column cell_id: {cell_id} is outside 0..{size - 1} of space {space.name}")
    values, rest = {}, cell_id
    for axis in reversed(space.axes):
        rest, index = divmod(rest, len(axis.values))
        values[axis.name] = axis.values[index]
    return {a.name: values[a.name] for a in space.axes}


def _matches(value: Any, given: Any) -> bool:
    if isinstance(value, str) or isinstance(given, str):
        return str(value) == str(given)
    return math.isclose(float(value), float(given), rel_tol=1e-9, abs_tol=1e-12)
