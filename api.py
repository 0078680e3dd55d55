"""The notebook API: ``import crashsearch as cs; home = cs.open_home("crashsearch-data")``.

    home.history()                 every experiment, a DuckDB relation (lazy: .df(), .filter(), .aggregate())
    home.history_df("night-1")     one campaign's experiments as a pandas DataFrame
    home.sql("SELECT ...")         any read over the views experiments, campaigns, bugfix_events
    home.campaigns()               one row per campaign (DataFrame)
    home.leaderboard("night-1")    best cells by mean validation AP, with 95% intervals
    home.analyze("night-1")        build the report (no Prefect server needed); returns its paths and numbers
    home.numbers("night-1")        the last report's numbers.json as a dict

Reads go through in-memory DuckDB views, the SQL of ``<home>/history.duckdb`` (lab/catalog.py):
a notebook never blocks a running campaign, and a relation re-reads the log each time it runs,
so it follows the campaign. Reading writes nothing, so a read-only home reads as any other; a
damaged log file is named and left out as in the CLI, the other campaigns stay readable.
Nothing here writes to the home except ``analyze`` (the report folder).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from crashsearch.lab.errors import UserError
from crashsearch.lab.logfiles import campaign_key
from crashsearch.lab.rows import check_campaign_id
from crashsearch.lab.settings import Home, check_home, resolve_home
from crashsearch.lab.store import Store, check_read_only


def open_home(path: str | os.PathLike | None = None) -> "LabHome":
    """The crashsearch home at ``path`` (default: ``$CRASHSEARCH_HOME`` or ./crashsearch-data).

    Raises ValueError when ``path`` does not exist, is a file, or is a folder that holds no
    crashsearch home (a typo never creates an empty home; reading creates no folder).
    """
    home = resolve_home(path, create=False)  # reads create nothing; analyze writes its report
    check_home(home)
    return LabHome(home)


class LabHome:
    """One crashsearch home, read from a notebook. See the module docstring for the methods."""

    def __init__(self, home: Home):
        self.home = home
        self.store = Store(home)
        self._con: duckdb.DuckDBPyConnection | None = None

    def __repr__(self) -> str:
        return f"crashsearch home {self.home.location}"

    @property
    def root(self) -> Path:
        return self.home.root

    # ---- the history ----------------------------------------------------------------------------
    def connection(self) -> duckdb.DuckDBPyConnection:
        """A new in-memory DuckDB connection with the views (the store's, following the log of a folder
        home; lab/store.py): it sees the home as it is now (files damaged since, campaigns' liveness)."""
        self._con = self.store.connect(follow=True)  # earlier relations keep their own connection
        return self._con

    def sql(self, query: str, params: list | None = None) -> duckdb.DuckDBPyRelation:
        """A read over the views as a DuckDB relation. Raises ValueError for anything but a read."""
        check_read_only(query)
        return self.connection().sql(query, params=params)

    def history(self, campaign: str | None = None) -> duckdb.DuckDBPyRelation:
        """Every experiment (of one campaign, or all; one row per experiment) as a DuckDB relation."""
        if campaign is None:
            return self.sql("SELECT * FROM experiments ORDER BY finished_at, experiment_id")
        return self.sql("SELECT * FROM experiments WHERE campaign = ? ORDER BY finished_at, experiment_id",
                        [self._known(campaign)])

    def history_df(self, campaign: str | None = None) -> pd.DataFrame:
        """``history(campaign)`` as a pandas DataFrame."""
        return self.history(campaign).df()

    def campaigns(self) -> pd.DataFrame:
        """One row per campaign: id, dataset, space, status, policies, budget, times, info (JSON)."""
        return self.sql("SELECT * FROM campaigns ORDER BY id").df()

    def leaderboard(self, campaign: str | None = None, k: int = 10, min_replicates: int = 1) -> pd.DataFrame:
        """The best ``k`` cells by mean validation AP (``crashsearch leaderboard``; columns in
        ``lab.store.Store.leaderboard``)."""
        return self.store.leaderboard(None if campaign is None else self._known(campaign), k=k,
                                      min_replicates=min_replicates)

    # ---- reports --------------------------------------------------------------------------------
    def analyze(self, campaign: str) -> dict[str, Any]:
        """Build the campaign's report under ``<home>/campaigns/<id>/report/`` (``crashsearch analyze``
        without Prefect). Returns {"campaign", "report", "html", "numbers_path", "headline", "numbers", ...}."""
        from crashsearch.flows.analyze import analyze  # imports the analysis stack: only when asked

        return analyze(self._known(campaign), Home(self.home.root, url=self.home.url))

    def numbers(self, campaign: str) -> dict[str, Any]:
        """The campaign's last report numbers (``report/numbers.json``). Raises ValueError when the
        campaign has no report yet."""
        path = self.home.root / "campaigns" / self._known(campaign) / "report" / "numbers.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"campaign {campaign!r} has no report yet: run home.analyze({campaign!r})") from None
        except ValueError as exc:
            raise UserError(f"{path} is damaged ({exc}): run home.analyze({campaign!r}) again") from None

    def close(self) -> None:
        """Close the read-only connection (a later read opens a new one)."""
        if self._con is not None:
            self._con.close()
            self._con = None

    def _known(self, campaign: str) -> str:
        """``campaign`` if the home has it; else ValueError naming the campaigns it has."""
        check_campaign_id(campaign)
        if not self.store.backend.exists(campaign_key(campaign, "campaign.json")) and not self.store.log_keys(campaign):
            raise self.store.missing_campaign(campaign)
        return campaign
