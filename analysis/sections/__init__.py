"""The report's sections, in the order the report shows them.

To add a figure or a part of the report: write a ``Section`` subclass (analysis/sections/base.py
says what each method does) in the module of its part, or a new module here, and add it to
``SECTIONS``. ``build_report`` (analysis/report.py) walks this list; nothing else changes. See
docs/report.md.
"""
from __future__ import annotations

from crashsearch.analysis.sections.architecture import Anova, SpaceShares
from crashsearch.analysis.sections.base import Context, NotComputed, Section, isolated
from crashsearch.analysis.sections.overview import Headline, Summary, Temporal, TopCells
from crashsearch.analysis.sections.search import Baselines, Convergence, Dynamics
from crashsearch.analysis.sections.transfer import Coverage, Transfer

SECTIONS: list[type[Section]] = [Summary, Headline, Temporal, TopCells, SpaceShares, Anova, Convergence, Baselines,
                                 Dynamics, Transfer, Coverage]

__all__ = ["SECTIONS", "Context", "NotComputed", "Section", "isolated"]
