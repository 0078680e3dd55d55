"""A fake LLM server for the tests: the Anthropic Messages and Gemini generateContent wire formats.

It listens on 127.0.0.1 on a free port (threaded), answers from per-API queues of scripted
replies and records every request it receives (path, headers, JSON body), so tests can run the
real SDK clients against it through ANTHROPIC_BASE_URL / GOOGLE_GEMINI_BASE_URL and then check
what the clients sent. Scripted replies are built with the helpers below:

    server.anthropic(tool_reply("propose_experiments", {"proposals": [...]}), error(429, retry_after=0))
    server.gemini(json_reply({"proposals": [...]}), text_reply("{not json"), slow(json_reply(...), 2.0))

A queue entry may also be a function of the received request that returns a Scripted, and
``respond_with(api, fn)`` sets such a function for every request once the queue is empty (for
long runs such as a whole campaign). Otherwise, when a queue runs dry, the server answers 500
"no scripted reply left" and counts it in ``unscripted``, so a test that made more calls than it
scripted notices.
"""
from __future__ import annotations

import itertools
import json
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Union

_ids = itertools.count(1)


@dataclass
class Scripted:
    """One scripted answer: an HTTP status, a body (dict as JSON, or raw str/bytes), headers, a delay."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Recorded:
    """One request the server received."""

    api: str  # "anthropic" or "gemini"
    path: str
    headers: dict[str, str]  # lower-cased names
    raw: bytes

    @property
    def body(self) -> Any:
        return json.loads(self.raw or b"null")

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8", "replace")


# ---- reply builders ---------------------------------------------------------------------------


def tool_reply(name: str, tool_input: Any, input_tokens: int = 1200, output_tokens: int = 300,
               cache_read: int = 0, cache_write: int = 0, text: str | None = None, stop_reason: str = "tool_use") -> Scripted:
    """An Anthropic message whose content is (optional text and) one tool_use block."""
    content = ([{"type": "text", "text": text}] if text else []) + [
        {"type": "tool_use", "id": f"toolu_{next(_ids):04d}", "name": name, "input": tool_input}]
    return Scripted(body=_message(content, stop_reason, input_tokens, output_tokens, cache_read, cache_write))


def anthropic_text_reply(text: str, input_tokens: int = 1200, output_tokens: int = 100) -> Scripted:
    """An Anthropic message with a text block only (no tool call)."""
    return Scripted(body=_message([{"type": "text", "text": text}], "end_turn", input_tokens, output_tokens, 0, 0))


def json_reply(obj: Any, prompt_tokens: int = 1500, output_tokens: int = 400, thoughts_tokens: int = 0) -> Scripted:
    """A Gemini generateContent answer whose first part's text is ``obj`` as JSON."""
    return text_reply(json.dumps(obj), prompt_tokens, output_tokens, thoughts_tokens)


def text_reply(text: str, prompt_tokens: int = 1500, output_tokens: int = 400, thoughts_tokens: int = 0) -> Scripted:
    """A Gemini generateContent answer with raw text (e.g. malformed JSON)."""
    usage = {"promptTokenCount": prompt_tokens, "candidatesTokenCount": output_tokens,
             "totalTokenCount": prompt_tokens + output_tokens + thoughts_tokens}
    if thoughts_tokens:
        usage["thoughtsTokenCount"] = thoughts_tokens
    return Scripted(body={
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": usage,
        "modelVersion": "fake",
    })


def error(status: int, message: str = "scripted error", retry_after: float | None = None) -> Scripted:
    """An HTTP error in a shape both APIs' clients parse, optionally with a retry-after header."""
    kind = {429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}.get(status, "invalid_request_error")
    body = {"type": "error", "error": {"type": kind, "message": message, "code": status, "status": kind.upper()}}
    headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else {}
    return Scripted(status=status, body=body, headers=headers)


def slow(reply: Scripted, delay_s: float) -> Scripted:
    """The same reply, sent only after ``delay_s`` seconds (to outlast a client timeout)."""
    return Scripted(reply.status, reply.body, dict(reply.headers), delay_s)


def _message(content: list, stop_reason: str, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int) -> dict:
    return {
        "id": f"msg_{next(_ids):04d}", "type": "message", "role": "assistant", "model": "fake-claude",
        "content": content, "stop_reason": stop_reason, "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                  "cache_read_input_tokens": cache_read, "cache_creation_input_tokens": cache_write},
    }


# ---- the server ------------------------------------------------------------------------------------

Responder = Callable[[Recorded], Scripted]

_GEMINI_PATH = re.compile(r"^/v1(?:beta)?/models/(?P<model>[^/:]+):generateContent")  # the SDK picks v1 or v1beta


class FakeLLMServer:
    """The server; ``start()`` / ``stop()`` (or a ``with`` block), ``base_url``, queues and ``requests``."""

    def __init__(self) -> None:
        self.queues: dict[str, deque[Union[Scripted, Responder]]] = {"anthropic": deque(), "gemini": deque()}
        self.responders: dict[str, Responder] = {}
        self.requests: list[Recorded] = []
        self.unscripted = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # scripting
    def anthropic(self, *replies: Scripted | Responder) -> None:
        self.queues["anthropic"].extend(replies)

    def gemini(self, *replies: Scripted | Responder) -> None:
        self.queues["gemini"].extend(replies)

    def respond_with(self, api: str, responder: Responder) -> None:
        """Answer every request to ``api`` that finds its queue empty with ``responder(request)``."""
        self.responders[api] = responder

    def received(self, api: str) -> list[Recorded]:
        """The requests one API received, oldest first."""
        with self._lock:
            return [r for r in self.requests if r.api == api]

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "start the server first"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeLLMServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep pytest output quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                if path.endswith("/v1/messages"):
                    api = "anthropic"
                elif _GEMINI_PATH.match(path):
                    api = "gemini"
                else:
                    self._send(Scripted(404, {"error": {"message": f"fake server: unknown path {path}"}}))
                    return
                request = Recorded(api, self.path, {k.lower(): v for k, v in self.headers.items()}, raw)
                with server._lock:  # one reply at a time, so responders need no locking of their own
                    server.requests.append(request)
                    queue = server.queues[api]
                    if queue:
                        reply = queue.popleft()
                    elif api in server.responders:
                        reply = server.responders[api]
                    else:
                        server.unscripted += 1
                        reply = error(500, "fake server: no scripted reply left")
                    if callable(reply):
                        reply = reply(request)
                if reply.delay_s and server._stopping.wait(reply.delay_s):
                    return
                self._send(reply)

            def _send(self, reply: Scripted) -> None:
                if isinstance(reply.body, (dict, list)):
                    data, kind = json.dumps(reply.body).encode(), "application/json"
                elif isinstance(reply.body, bytes):
                    data, kind = reply.body, "application/json"
                else:
                    data, kind = str(reply.body or "").encode(), "application/json"
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", kind)
                    self.send_header("content-length", str(len(data)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-llm-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeLLMServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
