"""Shared test set-up: an isolated Prefect home and small thread counts (2-core machines)."""
from __future__ import annotations

import os
import tempfile

# Before anything imports prefect: every test session gets its own Prefect home and ephemeral
# server, so tests never touch a user's Prefect state or a running server.
_PREFECT_HOME = tempfile.mkdtemp(prefix="crashsearch-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# no test may reach the internet, and no test may spend a real API key
for key in ("ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"):
    os.environ.pop(key, None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
