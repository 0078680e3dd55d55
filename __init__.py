"""crashsearch: autonomous ML research campaigns for dashcam collision detection.

The repository root is this package: its folders (flows, tasks, models, agents, analysis, lab)
install as ``crashsearch.flows``, ``crashsearch.lab`` and so on, so no generic top-level name
lands in a user's environment (docs/packaging.md).
"""
__version__ = "0.1.0"
