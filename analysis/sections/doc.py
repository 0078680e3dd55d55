"""The report's text: a list of blocks rendered to Markdown and to self-contained HTML, and the
one formatting of a number every section uses."""
from __future__ import annotations

import base64
import html
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crashsearch.analysis import plots

_P_COLUMNS = {"p", "spearman_p", "kendall_p"}


def fmt(value: Any, column: str = "") -> str:
    """A number as the report prints it ("-" for missing; p-values in two significant digits)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if column in _P_COLUMNS:
            return "<1e-300" if v == 0 else f"{v:.2g}"
        if math.isinf(v):
            return "inf"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.4f}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


def nan(v) -> float:
    """``v`` as a float, NaN for None."""
    return math.nan if v is None else float(v)


class Doc:
    """A report as a list of blocks, rendered to Markdown and to self-contained HTML."""

    def __init__(self, out_dir: Path):
        self.blocks: list[tuple] = []
        self.out_dir = out_dir

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def ul(self, items: list[str]):
        if items:
            self.blocks.append(("ul", items))

    def table(self, frame: pd.DataFrame | None, columns: dict[str, str] | None = None, empty: str = "(none)"):
        if frame is None or frame.empty:
            self.p(empty)
            return
        frame = frame.reset_index() if frame.index.name else frame
        columns = columns or {c: c for c in frame.columns}
        rows = [[fmt(v, c) for c, v in zip(columns, row)] for row in frame[list(columns)].itertuples(index=False)]
        self.blocks.append(("table", list(columns.values()), rows))

    def img(self, path: "Path | plots.Absent", caption: str):
        if isinstance(path, plots.Absent):  # nothing to draw: say why instead of an empty box
            self.p(f"(Figure not drawn: {caption.split(' (')[0]}: {path.why}.)")
            return
        self.blocks.append(("img", path, caption))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "ul":
                out.append("\n".join(f"- {i}" for i in b[1]))
            elif b[0] == "table":
                head, rows = b[1], b[2]
                lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
                out.append("\n".join(lines))
            elif b[0] == "img":
                out.append(f"![{b[2]}]({b[1].relative_to(self.out_dir).as_posix()})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        e = html.escape
        out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
               "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
               "table{border-collapse:collapse;margin:0.5em 0 1.2em;font-size:0.9em}"
               "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
               "td:first-child,th:first-child{text-align:left}img{max-width:100%}figcaption{color:#555;font-size:0.9em}"
               "</style></head><body>"]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                out.append(f"<p>{_inline(b[1])}</p>")
            elif b[0] == "ul":
                out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
            elif b[0] == "table":
                head = "".join(f"<th>{e(h)}</th>" for h in b[1])
                body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b[2])
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif b[0] == "img":
                data = base64.b64encode(Path(b[1]).read_bytes()).decode("ascii")
                out.append(f"<figure><img alt='{e(b[2])}' src='data:image/png;base64,{data}'>"
                           f"<figcaption>{e(b[2])}</figcaption></figure>")
        out.append("</body></html>")
        return "\n".join(out)


def _inline(text: str) -> str:
    """Escape, then render the only inline Markdown the report uses: **bold** and `code`."""
    parts = html.escape(text).split("**")
    text = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values: NaN and infinities as None, frames as lists of records."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items() if k != "samples"}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, pd.DataFrame):
        return [jsonable(r) for r in obj.to_dict("records")]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(obj, (pd.Timestamp, datetime)):
        return obj.isoformat()
    if isinstance(obj, Path):
        return obj.as_posix()
    if obj is pd.NA or obj is pd.NaT:
        return None
    return obj
