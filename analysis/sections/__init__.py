"""The report's sections: each computes its numbers, draws its figures and renders its text.

base.py: what a section is (``Section``) and the one runner (``Context``, ``isolated``); doc.py:
the text and number formatting; overview.py, architecture.py, search.py, transfer.py: the sections
of each part of the report. Their order is ``analysis.report.SECTIONS``. To add a figure or a part
of the report: one ``Section`` class here and one entry in that list (docs/report.md). This file
imports nothing, so importing a section module never imports the others.
"""
