"""A real S3 API on 127.0.0.1 for the tests: moto in server mode, in its own process.

``S3Server`` starts ``python -m moto.server`` on a free loopback port and waits until it answers;
``s3_env`` is the standard AWS environment that points a client at it (test credentials, never
real ones). The fixtures in tests/conftest.py start one server per test session and give each
test its own bucket. moto is a dev dependency (pyproject's dev extra), so ``make test`` on a clean
clone has it; nothing here reaches beyond 127.0.0.1.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

# moto accepts any credentials; these are the test's own, so the secret can be grepped for
TEST_KEY_ID = "crashsearch-test-key"
TEST_SECRET = "crashsearch-test-secret-" + uuid.uuid4().hex[:12]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """``python -m moto.server`` on 127.0.0.1; ``start()`` returns self, ``stop()`` ends it."""

    def __init__(self, startup_timeout: float = 60.0):
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.log = None
        self.endpoint = ""

    def start(self) -> "S3Server":
        for _ in range(3):  # a port taken between free_port() and the bind: try another
            port = free_port()
            self.endpoint = f"http://127.0.0.1:{port}"
            # its request log goes to a file: a pipe nobody reads fills up and stalls the server
            self.log = tempfile.NamedTemporaryFile(prefix="crashsearch-moto-", suffix=".log", delete=False)
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                         stdout=self.log, stderr=subprocess.STDOUT,
                                         env={**os.environ, "MOTO_CALL_RESET_API": "false"})
            if self._wait():
                return self
            said = Path(self.log.name).read_text(errors="replace")[-2000:]
            self.stop()
        raise RuntimeError(f"the moto S3 server did not start: {said}")

    def _wait(self) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=2):
                    return True
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.log is not None:
            self.log.close()
            Path(self.log.name).unlink(missing_ok=True)
            self.log = None

    def env(self) -> dict[str, str]:
        """The standard AWS variables a client reads to reach this server."""
        return {"AWS_ACCESS_KEY_ID": TEST_KEY_ID, "AWS_SECRET_ACCESS_KEY": TEST_SECRET,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh random name by default); return its name."""
        name = name or f"cs-{uuid.uuid4().hex[:16]}"
        req = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with urllib.request.urlopen(req, timeout=10):
            pass
        return name
