"""crashsearch: autonomous ML research campaigns for dashcam collision detection.

The repository root is this package: its folders (flows, tasks, models, agents, analysis, lab)
install as ``crashsearch.flows``, ``crashsearch.lab`` and so on, so no generic top-level name
lands in a user's environment (docs/packaging.md).

In a notebook::

    import crashsearch as cs
    home = cs.open_home("crashsearch-data")
    home.history_df()            # every experiment (pandas); home.history() is a DuckDB relation
    home.leaderboard("demo-day")  # best cells with 95% intervals
    home.numbers("demo-day")     # the report's numbers.json

``import crashsearch`` stays light: the API (crashsearch/api.py: DuckDB, pandas) loads on first
use, and torch and Prefect only when a method needs them.
"""
__version__ = "0.1.0"
__all__ = ["open_home", "LabHome", "__version__"]


def __getattr__(name: str):
    if name in ("open_home", "LabHome"):
        from crashsearch import api

        return getattr(api, name)
    raise AttributeError(f"module 'crashsearch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"open_home", "LabHome"})
