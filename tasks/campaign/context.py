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
from pathlib import Path
from typing import Callable

from crashsearch.lab._io import atomic_write
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
    state_path: Path
    log: Callable[[str], None]

    @property
    def policies(self) -> list:
        return self.proposers.policies

    def save_state(self) -> None:
        """Write state.json: the round and each policy's state (a resume restores them)."""
        write_text_atomic(self.state_path, json.dumps({"round": self.ledger.round, "policies": self.proposers.states()}))


def write_text_atomic(path: Path, text: str) -> None:
    """The one atomic writer (lab/_io.py): on a full disk its temp file is removed and the path named."""
    atomic_write(path, lambda f: f.write(text.encode()))
