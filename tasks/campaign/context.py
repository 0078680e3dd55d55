"""The small context both schedulers run over: the run's parts, each owning its own state.

=============  ==========================================================================
``config``     every setting (CampaignConfig); read only
``ledger``     history, counts, goal, claims, round, replicate room (ledger.py)
``proposers``  policies, asking, claiming, observing, their state (proposers.py)
``recorder``   batches to the executor, results into the ledger, healing (recorder.py)
``progress``   the progress bar and the flow's reporter (recorder.py)
``stopping``   clock, deadline, goal reason, the STOP event (stopping.py)
``executor``   where batches train (executor.py); the pipeline sizes its trainers by it
=============  ==========================================================================

A scheduler (turns.py, pipeline.py) reads the context and calls the parts' methods; it returns
its stop reason and its stats, and writes into no part's fields and no other scheduler.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from crashsearch.lab.storage import Backend
from crashsearch.tasks.campaign.config import CampaignConfig
from crashsearch.tasks.campaign.executor import Executor
from crashsearch.tasks.campaign.ledger import Ledger
from crashsearch.tasks.campaign.proposers import Proposers
from crashsearch.tasks.campaign.recorder import Progress, Recorder
from crashsearch.tasks.campaign.stopping import Stopping


@dataclass
class RunContext:
    """One campaign run's parts (module docstring)."""

    config: CampaignConfig
    ledger: Ledger
    proposers: Proposers
    recorder: Recorder
    progress: Progress
    stopping: Stopping
    executor: Executor
    device: str
    backend: Backend  # the store's: state.json lives with the history (an s3:// home's too)
    state_key: str
    log: Callable[[str], None]

    @property
    def policies(self) -> list:
        return self.proposers.policies

    def save_state(self) -> None:
        """Write state.json: the round and each policy's state (a resume restores them)."""
        self.backend.put(self.state_key, json.dumps({"round": self.ledger.round, "policies": self.proposers.states()}).encode())
