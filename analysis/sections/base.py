"""What a report section is, and the one runner that computes, draws and renders every section.

A section is a small class: ``compute()`` returns its entries of numbers.json (exactly its
``keys``), ``draw(fig_dir)`` returns its figures ({name: Path or plots.Absent}, exactly its
``figures``), ``render(doc)`` writes its text. It reads the shared inputs from ``self.ctx``
(a ``Context``) and another section's results through ``self.ctx.need(name)``, which computes
that section first when it has not run yet (so the list's order is the report's order, not the
order of computation). A section that raises is isolated (``isolated``): numbers.json says why in
``not_computed.<name>``, its keys are null, its figures absent, and the report shows its heading
with "Not computed: why"; a section that needs it fails the same way, naming it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from crashsearch.analysis import plots
from crashsearch.analysis.history import prepare
from crashsearch.analysis.sections.doc import Doc
from crashsearch.lab.lock import reraise_interrupt


class NotComputed(Exception):
    """A section needed another section's results, and that section was not computed."""


def isolated(section: str, failures: dict, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, or None when it raises: ``failures[section]`` then says why in one line.

    A figure that cannot be computed is shown as "not computed: why" and the rest of the report is
    built; the numbers that were computed are never lost to one failing section.
    """
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001  any failure of one section must not take the report down
        reraise_interrupt(exc)  # but a Ctrl-C during its DuckDB query stops the report
        failures[section] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
        return None


def event_positions(df: pd.DataFrame, events: Iterable[dict]) -> list[int]:
    """For each bug-fix event, the number of experiments before its fix (lab.versions.post_fix_mask)."""
    if not len(df):
        return []
    from crashsearch.lab.versions import post_fix_mask

    return sorted(int((~post_fix_mask(df, e)).sum()) for e in events)


def post_bugfix(df: pd.DataFrame, events: list[dict]) -> pd.DataFrame | None:
    """Rows post-fix for every event (lab.versions, the one segmentation rule), or None without events."""
    if not events:
        return None
    from crashsearch.lab.versions import post_bugfix as lab_post_bugfix

    return lab_post_bugfix(df, events)


def stack(df: pd.DataFrame, extra: pd.DataFrame | None, columns: list[str]) -> pd.DataFrame:
    """``df`` alone when there is nothing extra, else the given columns of both (extra prepared).

    The extra campaigns are prepared on their own (arms and order are per campaign) and only the
    columns a section reads are stacked, so a 1M-row history is not copied whole again."""
    if extra is None or extra.empty:
        return df
    extra = prepare(extra)
    cols = [c for c in columns if c in df.columns and c in extra.columns]
    return pd.concat([df[cols], extra[cols]], ignore_index=True)


class Section:
    """One part of the report. Override what it has: numbers, figures, text.

    ``name``: its key in not_computed and timings; ``keys``: the numbers.json entries ``compute``
    returns; ``figures``: the figure names ``draw`` returns; ``heading``: (level, text) shown above
    "Not computed: why" when it fails (its ``render`` writes its own headings otherwise).
    """

    name: str = ""
    keys: tuple[str, ...] = ()
    figures: tuple[str, ...] = ()
    heading: tuple[int, str] | None = None

    def __init__(self, ctx: "Context"):
        self.ctx = ctx

    def compute(self) -> dict:
        """This section's entries of numbers.json, {key: value} for every key of ``keys``."""
        return {}

    def draw(self, fig_dir: Path) -> dict:
        """This section's figures, {name: Path or plots.Absent} for every name of ``figures``."""
        return {}

    def render(self, doc: Doc) -> None:
        """Write this section's text (and figures, through ``self.ctx.figs``) into ``doc``."""

    def render_failed(self, doc: Doc, why: str) -> None:
        if self.heading:
            doc.h(*self.heading)
        doc.p(f"{'' if self.heading else self.name.capitalize() + ': '}Not computed: {why}.")


class Context:
    """The inputs every section reads, and the runner of the sections over them.

    ``df``: the prepared history; ``post``: its post-bugfix rows (None without an event or rows
    after it); ``positions``: experiments before each event; ``post_start``: before the last fix.
    """

    def __init__(self, history_df: pd.DataFrame, out_dir: Path, events: list[dict], **inputs: Any):
        self.out_dir = out_dir
        self.events = events
        self.inputs = inputs
        self.title = inputs["title"]
        self.weights = inputs["weights"]
        self.seed = inputs["seed"]
        self.df = prepare(history_df)
        post_raw = post_bugfix(self.df, events)
        self.post = None
        if post_raw is not None and len(post_raw):
            # keep the arms of the full history: a replicate after the fix still credits the original proposer
            self.post = post_raw.reset_index(drop=True)
            self.post["order"] = np.arange(len(self.post))
        self.positions = event_positions(self.df, events)
        self.post_start = len(self.df) - len(self.post) if self.post is not None else 0
        self.numbers: dict[str, Any] = {}
        self.figs: dict[str, Path | plots.Absent] = {}
        self.not_computed: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self.sections: dict[str, Section] = {}
        self._state: dict[str, str] = {}  # name -> "running" / "done" / "failed"
        self._nested: list[float] = []  # per section computing now: seconds spent in the sections it needed

    def add(self, section_classes: Iterable[type[Section]]) -> list[Section]:
        """Instantiate the sections of this report, in report order."""
        out = [cls(self) for cls in section_classes]
        for s in out:
            assert s.name and s.name not in self.sections, f"section name {s.name!r} missing or repeated"
            self.sections[s.name] = s
        return out

    def need(self, name: str) -> Section:
        """Section ``name`` computed (computing it now if it has not run); raises NotComputed when it failed."""
        state = self._state.get(name)
        if state is None:
            self.compute(self.sections[name])
            state = self._state[name]
        if state == "running":
            raise NotComputed(f"section {name!r} needs itself (a cycle between sections)")
        if state == "failed":
            raise NotComputed(f"needs the {name} section: {self.not_computed[name]}")
        return self.sections[name]

    def compute(self, s: Section) -> None:
        """Run ``s.compute()`` once, isolated; its numbers (null on failure) go to ``self.numbers``."""
        if s.name in self._state:
            return
        self._state[s.name] = "running"
        self._nested.append(0.0)
        start = time.perf_counter()
        got = isolated(s.name, self.not_computed, s.compute)
        if got is not None:
            assert set(got) == set(s.keys), f"section {s.name!r} returned {sorted(got)}, declares {sorted(s.keys)}"
        self.numbers.update(got if got is not None else {k: None for k in s.keys})
        self._state[s.name] = "done" if got is not None else "failed"
        # a section that needed another timed it too: count each second once, where it was spent
        elapsed = time.perf_counter() - start
        self.timings[s.name] = round(elapsed - self._nested.pop(), 4)
        if self._nested:
            self._nested[-1] += elapsed

    def draw(self, s: Section, fig_dir: Path) -> None:
        """``s.draw`` isolated; a section not computed, or whose drawing raised, has its figures absent."""
        got = isolated(s.name, self.not_computed, s.draw, fig_dir) if self._state[s.name] == "done" else None
        for name in s.figures:
            self.figs[name] = (got[name] if got is not None else
                               plots._absent(fig_dir / f"{name}.png", f"not computed: {self.not_computed[s.name]}"))

    def render(self, s: Section, doc: Doc) -> None:
        """``s.render`` into ``doc``, isolated: a section that fails shows its heading and why, nothing half-written."""
        part = Doc(doc.out_dir)
        if self._state[s.name] == "done" and isolated(s.name, self.not_computed, self._render, s, part):
            doc.blocks += part.blocks
        else:
            s.render_failed(doc, self.not_computed[s.name])

    @staticmethod
    def _render(s: Section, doc: Doc) -> bool:
        s.render(doc)
        return True
