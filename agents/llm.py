"""Plumbing shared by the LLM agents (agents/claude.py, agents/gemini.py).

``LLMPolicy`` is a Policy that asks a chat model for proposals and for failure diagnoses. A
provider subclass only knows its SDK: it builds the client (``_make_client``) and makes one call
(``_call``) that returns a provider-neutral ``Reply`` or raises ``CallFailed``. Everything else
lives here, once for both providers:

- API keys: from environment variables, else a Prefect Secret block (only when a Prefect API is
  reachable without starting one); a missing key raises PolicyUnavailable at construction. Keys
  are scrubbed from every error string we keep, log or raise.
- Robustness: our own retries with exponential backoff and jitter on 429, 5xx, timeouts and
  connection errors (honouring retry-after, capped); after the last try the agent sits out the
  round: ``propose`` returns [] and ``last_error`` says why, and the campaign goes on.
- Validation: every proposed item goes through ``space.validate``; rejected items get the
  space's one-line reason and the model gets one repair turn listing those reasons.
  LLM output is data: it becomes space values and a plain, truncated rationale string, nothing
  else; it is never executed or interpolated into a command.
- Accounting: tokens and dollars per call, split over the proposals of that call, totals in
  ``usage()``, and a per-campaign token/dollar ``Budget`` after which the agent sits out.
"""
from __future__ import annotations

import contextvars
import email.utils
import json
import logging
import math
import os
import random
import re
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Mapping

from crashsearch.agents.base import HealAdvice, HistoryView, Policy, PolicyUnavailable, Proposal
from crashsearch.agents.prompt import (
    RATIONALE_CHARS,
    PromptLimits,
    clean_text,
    diagnose_prompt,
    propose_prompt,
    repair_prompt,
    static_prompt,
    trim_traceback,
)
from crashsearch.lab.errors import UserError
from crashsearch.lab.bounds import check_int, check_number
from crashsearch.lab.space import Cell, InvalidCell, Space

log = logging.getLogger("crashsearch.agents")

# ---- prices and budget -------------------------------------------------------------------------

# List prices in US dollars per million tokens (input, output) at the time of writing; pass
# ``prices=(in, out)`` to an agent when they change or for another model. Matched by prefix,
# longest first, so "claude-opus-4-1" finds "claude-opus".
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "claude-opus-4-1": (15.0, 75.0),  # Opus 4 and 4.1
    "claude-opus-4-0": (15.0, 75.0),
    "claude-opus-4-2025": (15.0, 75.0),
    "claude-opus": (5.0, 25.0),  # Opus 4.5 and later
    "claude-sonnet": (3.0, 15.0),
    "claude-haiku": (1.0, 5.0),
    "gemini-2.5-pro": (1.25, 10.0),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-3": (2.0, 12.0),  # Gemini 3 / 3.1 Pro preview, prompts up to 200k tokens
    "gemini": (2.0, 12.0),
}
# Anthropic bills prompt-cache writes at 1.25x and reads at 0.1x the input price.
CACHE_WRITE_FACTOR, CACHE_READ_FACTOR = 1.25, 0.10


def price_for(model: str) -> tuple[float, float]:
    """($ per Mtok in, $ per Mtok out) for a model id, by longest matching prefix; (0, 0) if unknown."""
    for prefix in sorted(PRICES_PER_MTOK, key=len, reverse=True):
        if model.startswith(prefix):
            return PRICES_PER_MTOK[prefix]
    return (0.0, 0.0)


@dataclass
class Budget:
    """What one agent may spend in one campaign; None means no limit on that count."""

    max_tokens: int | None = None
    max_usd: float | None = 25.0

    @classmethod
    def coerce(cls, raw: Any) -> "Budget":
        """Budget from None (the default: $25), a Budget, a number ($) or a dict with tokens/usd keys."""
        if raw is None:
            return cls()
        if isinstance(raw, Budget):
            return raw
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return cls(max_tokens=None, max_usd=float(raw))
        if isinstance(raw, Mapping):
            unknown = set(raw) - {"tokens", "usd", "max_tokens", "max_usd"}
            if unknown:
                raise UserError(f"budget has unknown keys {sorted(unknown)}; use tokens and usd")
            tokens = raw.get("max_tokens", raw.get("tokens"))
            usd = raw.get("max_usd", raw.get("usd"))
            return cls(max_tokens=None if tokens is None else int(tokens), max_usd=None if usd is None else float(usd))
        raise UserError(f"budget must be a number of dollars or a dict with tokens/usd, got {type(raw).__name__}")

    def exhausted(self, usage: "Usage") -> str | None:
        """None while there is budget left, else one line saying which limit was reached."""
        tokens = usage.tokens_in + usage.tokens_out
        if self.max_tokens is not None and tokens >= self.max_tokens:
            return f"token budget exhausted ({tokens:,} of {self.max_tokens:,} tokens used)"
        if self.max_usd is not None and usage.cost_usd >= self.max_usd:
            return f"dollar budget exhausted (${usage.cost_usd:.2f} of ${self.max_usd:.2f} spent)"
        return None


@dataclass
class Usage:
    """Running totals of one agent over a campaign (kept in get_state, so resumes keep counting)."""

    calls: int = 0
    failed_calls: int = 0
    tokens_in: int = 0  # every prompt token, cached or not
    tokens_out: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    proposals: int = 0
    rejected: int = 0
    repairs: int = 0
    rounds_sat_out: int = 0
    diagnoses: int = 0


# ---- one call to a model --------------------------------------------------------------------------


@dataclass
class Reply:
    """A provider-neutral model answer.

    ``data`` is the parsed JSON object (None when the reply was malformed, with ``error`` saying
    why in one line); ``handle`` is what the provider needs to continue the conversation in a
    repair turn (the assistant's content blocks, or its raw text).
    """

    data: Any
    error: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cache_read: int = 0
    cache_write: int = 0
    handle: Any = None


class CallFailed(Exception):
    """A call that produced no reply; ``retryable`` for 429, 5xx, timeouts and lost connections."""

    def __init__(self, message: str, retryable: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after


def classify_http_error(status: int | None, message: str, headers: Mapping[str, str] | None = None,
                        body_retry_after: float | None = None) -> CallFailed:
    """A CallFailed for an HTTP error status: retryable on 408, 409, 429 and 5xx."""
    retryable = status is not None and (status in (408, 409, 429) or status >= 500)
    retry_after = parse_retry_after(headers) if headers is not None else None
    if retry_after is None:
        retry_after = body_retry_after
    return CallFailed(f"HTTP {status}: {one_line(message)}", retryable=retryable, retry_after=retry_after)


def classify_transport_error(exc: BaseException) -> CallFailed:
    """A CallFailed for an exception without an HTTP status (timeouts, refused connections, ...)."""
    kind = type(exc).__name__
    if "Timeout" in kind:
        return CallFailed(f"request timed out ({kind})", retryable=True)
    if "Connect" in kind or "Connection" in kind or "RemoteProtocol" in kind:
        return CallFailed(f"connection failed ({kind}: {one_line(str(exc))})", retryable=True)
    return CallFailed(f"{kind}: {one_line(str(exc))}", retryable=False)


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from retry-after-ms / retry-after (seconds or an HTTP date), else None."""
    if not headers:
        return None
    lower = {str(k).lower(): str(v) for k, v in headers.items()}
    try:
        if "retry-after-ms" in lower:
            return max(0.0, float(lower["retry-after-ms"]) / 1000.0)
        if "retry-after" in lower:
            raw = lower["retry-after"].strip()
            try:
                return max(0.0, float(raw))
            except ValueError:
                when = email.utils.parsedate_to_datetime(raw)
                return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None
    return None


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random, retry_after: float | None = None) -> float:
    """Seconds before retry ``attempt`` (0-based): base * 2^attempt with jitter, at least retry-after, at most max_s."""
    delay = base_s * (2 ** attempt) * (0.5 + rng.random() / 2)  # "equal jitter": spreads agents that failed together
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, max_s)


def with_retries(call: Callable[[], Reply], *, max_retries: int, base_s: float, max_s: float, rng: random.Random,
                 sleep: Callable[[float], None] = time.sleep, on_retry: Callable[[CallFailed, float], None] | None = None) -> Reply:
    """Run ``call`` and retry it up to max_retries times on retryable CallFailed; re-raise the last one."""
    attempt = 0
    while True:
        try:
            return call()
        except CallFailed as exc:
            if not exc.retryable or attempt >= max_retries:
                if exc.retryable:
                    exc.message = f"{exc.message} (gave up after {attempt + 1} attempts)"
                    exc.args = (exc.message,)
                raise
            delay = backoff_delay(attempt, base_s, max_s, rng, exc.retry_after)
            if on_retry is not None:
                on_retry(exc, delay)
            sleep(delay)
            attempt += 1


# ---- keys and scrubbing ---------------------------------------------------------------------------

_KEY_PATTERNS = [
    re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}"),  # Anthropic keys
    re.compile(r"AIza[0-9A-Za-z_\-]{20,}"),  # Google API keys
    re.compile(r"(?i)([?&]key=)[^&\s'\"]+"),  # a key in a URL query
    re.compile(r"(?i)((?:x-api-key|x-goog-api-key|authorization)['\"]?\s*[:=]\s*['\"]?)(?:Bearer\s+)?[^\s'\",}]+"),
]


def scrub(text: Any, secrets: Iterable[str] = ()) -> str:
    """``text`` as a string with every given secret and anything shaped like an API key redacted."""
    out = str(text)
    for secret in secrets:
        if secret and len(secret) >= 6:
            out = out.replace(secret, "[redacted]")
    for pattern in _KEY_PATTERNS:
        out = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[redacted]", out)
    return out


def one_line(text: Any, limit: int = 300) -> str:
    """Whitespace collapsed to single spaces, cut to ``limit`` characters."""
    return " ".join(str(text).split())[:limit]


def prefect_secret(name: str, timeout_s: float = 10.0) -> str | None:
    """The value of a Prefect Secret block, or None.

    Tried only when a Prefect API is configured (PREFECT_API_URL) or we run inside a flow or task
    run; otherwise Prefect would start a temporary server just to find no block. Bounded by
    ``timeout_s`` in a daemon thread so an unreachable server cannot hang the campaign.
    """
    try:
        from prefect.context import get_run_context
        from prefect.settings import get_current_settings
    except Exception:  # prefect missing or broken: no secret store
        return None
    try:
        configured = bool(get_current_settings().api.url)
    except Exception:
        configured = False
    if not configured:
        try:
            get_run_context()
            configured = True
        except Exception:
            return None
    result: dict[str, str | None] = {"value": None}

    def load() -> None:
        try:
            from prefect.blocks.system import Secret

            value = Secret.load(name).get()
            result["value"] = value if isinstance(value, str) and value else None
        except Exception:  # no such block, no server: the caller reports a missing key
            result["value"] = None

    # copy_context: the thread must see the caller's Prefect settings (they live in contextvars)
    worker = threading.Thread(target=contextvars.copy_context().run, args=(load,), name=f"prefect-secret-{name}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    return result["value"]


def resolve_key(agent: str, env_names: tuple[str, ...], secret_block: str) -> str:
    """The API key from the first set env var, else the Prefect Secret block; raise PolicyUnavailable."""
    for env in env_names:
        value = os.environ.get(env, "").strip()
        if value:
            return value
    value = prefect_secret(secret_block)
    if value:
        return value.strip()
    names = " / ".join(env_names)
    verb = "is" if len(env_names) == 1 else "are"
    raise PolicyUnavailable(
        f"{agent}: {names} {verb} not set (nor a Prefect Secret '{secret_block}'); the campaign goes on without it"
    )


# ---- parsing proposals ------------------------------------------------------------------------


def parse_proposals(space: Space, data: Any, n: int, taken: set[int]) -> tuple[list[tuple[Cell, str]], list[str]]:
    """Validate a model's ``{"proposals": [...]}`` answer.

    Returns (accepted, reasons): up to n (cell, rationale) pairs that are valid cells not in
    ``taken`` (tried, in flight or accepted earlier; updated in place), and one line per rejected
    item (or one line for a malformed answer). Nothing from ``data`` survives except space values
    and the cleaned rationale string.
    """
    if isinstance(data, Mapping):
        items = data.get("proposals")
    else:
        items = data  # a bare list is fine too
    if not isinstance(items, list):
        got = type(items).__name__ if isinstance(data, Mapping) and "proposals" in data else "no 'proposals' list"
        return [], [f"the answer must be an object with a 'proposals' list, got {got}"]
    accepted: list[tuple[Cell, str]] = []
    reasons: list[str] = []
    for i, item in enumerate(items, 1):
        if len(accepted) >= n:
            break
        if not isinstance(item, Mapping):
            reasons.append(f"item {i}: not an object with the axes and a rationale")
            continue
        values = {k: v for k, v in item.items() if k != "rationale"}
        try:
            cell = space.validate(values)
        except InvalidCell as exc:
            reasons.append(f"item {i}: {one_line(exc.reason, 400)}")
            continue
        if cell.id in taken:
            reasons.append(f"item {i}: cell {cell.id} was already run, is in flight or repeats an earlier item; propose a different cell")
            continue
        taken.add(cell.id)
        accepted.append((cell, clean_text(item.get("rationale", ""), RATIONALE_CHARS)))
    return accepted, reasons


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` integers that differ by at most one and sum to total."""
    if parts <= 0:
        return []
    base, extra = divmod(int(total), parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


# ---- the policy -----------------------------------------------------------------------------------


OUTPUT_TOKENS_PER_PROPOSAL = 100  # a proposed cell's fields and a sentence of rationale, with margin


class LLMPolicy(Policy):
    """A Policy backed by a chat model; subclasses provide the SDK client and one call.

    Keyword arguments (all optional): ``model``, ``temperature`` (None: the provider's default),
    ``proposals_per_round`` (cap on n per call), ``role`` ("explorer", "exploiter" or None),
    ``timeout_s`` per request, ``max_retries`` after the first try, ``retry_base_s`` /
    ``retry_max_s`` (backoff; tests make them tiny), ``budget`` (see Budget.coerce), ``prices``
    ($/Mtok in, out), ``max_output_tokens``, ``prompt_limits`` (a PromptLimits).

    Raises PolicyUnavailable (one line, no key) when no API key is found.
    """

    concurrent_calls = True  # each call is one HTTP request: calls overlap safely

    name = "llm"
    default_model = ""
    key_envs: tuple[str, ...] = ()
    secret_block = ""
    propose_tool = "propose_experiments"
    diagnose_tool = "diagnose_failure"
    answer_hint = ""  # how this provider's model must answer, for the static prompt

    def __init__(self, space: Space, seed: int = 0, model: str | None = None, temperature: float | None = None,
                 proposals_per_round: int | None = None, role: str | None = None, timeout_s: float = 120.0,
                 max_retries: int = 3, retry_base_s: float = 2.0, retry_max_s: float = 60.0, budget: Any = None,
                 prices: tuple[float, float] | None = None, max_output_tokens: int = 8192,
                 prompt_limits: PromptLimits | None = None, **kwargs: Any):
        super().__init__(space, seed=seed)
        self._calls = threading.local()  # each call's own last_error (calls of one agent may overlap)
        self._latest_error: str | None = None  # the most recent error of any call, for usage()
        if role not in (None, "explorer", "exploiter"):
            raise UserError(f"{self.name}: role must be 'explorer', 'exploiter' or None, got {role!r}")
        if timeout_s <= 0:
            raise UserError(f"{self.name}: timeout_s must be positive, got {timeout_s}")
        if kwargs:
            log.warning("%s: ignoring unknown options %s", self.name, sorted(kwargs))
        self.model = model or self.default_model
        self.temperature = temperature
        self.proposals_per_round = proposals_per_round
        self.role = role
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.retry_base_s = float(retry_base_s)
        self.retry_max_s = float(retry_max_s)
        self.budget = Budget.coerce(budget)
        self.prices = tuple(prices) if prices is not None else price_for(self.model)
        if self.prices == (0.0, 0.0) and prices is None:
            log.warning("%s: no price known for model %s; cost is not counted (pass prices=(in, out) $/Mtok)", self.name, self.model)
        self.max_output_tokens = int(max_output_tokens)
        # a reply has room for about max_output_tokens / OUTPUT_TOKENS_PER_PROPOSAL cells; a larger ask is cut off
        room = max(1, self.max_output_tokens // OUTPUT_TOKENS_PER_PROPOSAL)
        self.max_per_call = min(room, proposals_per_round) if proposals_per_round else room
        self.limits = prompt_limits or PromptLimits()
        self._usage = Usage()
        self._usage_lock = threading.Lock()  # the pipeline runs several calls of one agent at once
        self._rng = random.Random(seed)
        self._sleep: Callable[[float], None] = time.sleep
        key = resolve_key(self.name, self.key_envs, self.secret_block)
        self._secrets = (key,)
        try:
            self._client = self._make_client(key)
        except Exception as exc:  # a broken SDK install or option: one line, never the key
            raise PolicyUnavailable(f"{self.name}: cannot create the client ({self._scrub(exc)}); the campaign goes on without it") from None
        self._static = static_prompt(space, self.answer_hint)

    @property
    def last_error(self) -> str | None:
        """Why this thread's last ``propose``/``diagnose`` came back empty (None: it did not)."""
        return getattr(self._calls, "error", None)

    @last_error.setter
    def last_error(self, value: str | None) -> None:
        self._calls.error = value
        if value:
            self._latest_error = value

    # -- provider hooks --------------------------------------------------------------------------
    def _make_client(self, key: str) -> Any:
        raise NotImplementedError

    def _call(self, kind: str, system: str, user: str, repair: tuple[Reply, str] | None,
              count: int | None = None) -> Reply:
        """One request. ``kind`` is "propose" or "diagnose"; ``repair`` = (previous reply, feedback);
        ``count``: how many proposals the reply must carry (the reply schema states it)."""
        raise NotImplementedError

    # -- Policy ----------------------------------------------------------------------------------------
    def propose(self, view: HistoryView, n: int) -> list[Proposal]:
        """Up to n validated proposals, or [] when the agent sits out (``last_error`` says why)."""
        self.last_error = None
        if n <= 0:
            return []
        n = min(n, self.proposals_per_round) if self.proposals_per_round else n
        blocked = self.budget.exhausted(self._usage)
        if blocked:
            return self._sit_out(blocked)
        user = propose_prompt(view, n, self.name, self.role, self.limits)
        taken = view.tried_ids()
        calls: list[Reply] = []
        try:
            reply = self._request("propose", user, None, count=n)
        except CallFailed as exc:
            return self._sit_out(exc.message)
        calls.append(reply)
        accepted, reasons = parse_proposals(self.space, reply.data, n, taken) if reply.error is None else ([], [reply.error])
        if reasons and len(accepted) < n:
            self._count(rejected=len(reasons))
            blocked = self.budget.exhausted(self._usage)
            if blocked:
                self.last_error = f"{self.name}: no repair turn: {blocked}"
            else:
                self._count(repairs=1)
                feedback = repair_prompt(reasons, n - len(accepted), [c for c, _ in accepted], self.answer_hint)
                try:
                    second = self._request("propose", user, (reply, feedback), count=n - len(accepted))
                    calls.append(second)
                    more, reasons2 = (parse_proposals(self.space, second.data, n - len(accepted), taken)
                                      if second.error is None else ([], [second.error]))
                    accepted += more
                    self._count(rejected=len(reasons2))
                    if reasons2:
                        self.last_error = f"{self.name}: after the repair turn still rejected: " + "; ".join(reasons2)[:600]
                except CallFailed as exc:
                    self.last_error = f"{self.name}: repair turn failed: {exc.message}"
        if self.last_error:
            log.warning("%s", self.last_error)
        self._count(proposals=len(accepted))
        return self._priced_proposals(accepted, calls)

    def diagnose(self, cell: Cell, error_class: str, traceback: str) -> HealAdvice | None:
        """Config fix, code bug or give_up advice for a failure; None when the model could not be asked."""
        self.last_error = None
        blocked = self.budget.exhausted(self._usage)
        if blocked:
            self.last_error = f"{self.name}: no diagnosis: {blocked}"
            log.warning("%s", self.last_error)
            return None
        user = diagnose_prompt(cell, error_class, trim_traceback(self._scrub(traceback)), self.answer_hint)
        try:
            reply = self._request("diagnose", user, None)
        except CallFailed as exc:
            self.last_error = f"{self.name}: no diagnosis: {exc.message}"
            log.warning("%s", self.last_error)
            return None
        self._count(diagnoses=1)
        cost = self._cost(reply)
        paid = dict(tokens_in=reply.tokens_in + reply.cache_read + reply.cache_write, tokens_out=reply.tokens_out, cost_usd=cost)
        data = reply.data if reply.error is None else None
        if not isinstance(data, Mapping):
            return HealAdvice("give_up", diagnosis=f"unreadable diagnosis: {reply.error or 'not an object'}", **paid)
        kind = data.get("kind")
        diagnosis = clean_text(data.get("diagnosis", ""), 600)
        if kind == "code_bug":
            return HealAdvice("code_bug", diagnosis=diagnosis, **paid)
        if kind == "config_fix":
            raw = data.get("cell")
            if not isinstance(raw, Mapping):
                return HealAdvice("give_up", diagnosis=f"config fix rejected: no cell given ({diagnosis})"[:600], **paid)
            try:
                fixed = self.space.validate({**cell.to_dict(), **raw})  # the model may list only the axes it changes
            except InvalidCell as exc:
                return HealAdvice("give_up", diagnosis=f"config fix rejected: {one_line(exc.reason, 400)}", **paid)
            if fixed.id == cell.id:
                return HealAdvice("give_up", diagnosis=f"config fix rejected: it repeats the failed cell ({diagnosis})"[:600], **paid)
            return HealAdvice("config_fix", diagnosis=diagnosis, cell=fixed, **paid)
        return HealAdvice("give_up", diagnosis=f"unreadable diagnosis: kind={clean_text(kind, 40)!r}", **paid)

    def usage(self) -> dict[str, Any]:
        """Campaign totals for the summary: calls, tokens, cost, proposals, sit-outs, budget, last error."""
        with self._usage_lock:
            out: dict[str, Any] = {"policy": self.name, "model": self.model, **asdict(self._usage)}
        out["cost_usd"] = round(out["cost_usd"], 6)
        out["budget_tokens"] = self.budget.max_tokens
        out["budget_usd"] = self.budget.max_usd
        out["last_error"] = self._latest_error
        return out

    def get_state(self) -> dict:
        with self._usage_lock:
            return {"usage": asdict(self._usage)}

    def set_state(self, state: dict) -> None:
        """Restore ``get_state()``. Raises ValueError naming a total that is not a count (or dollars)."""
        saved = state.get("usage") or {}
        if not isinstance(saved, dict):
            raise ValueError(f"usage {str(saved)[:60]!r} is not an object")
        # checked here: a bad total would fail the first budget check of the resumed run instead
        totals = {k: (check_number(v, f"usage.{k}", 0.0) if k == "cost_usd" else check_int(v, f"usage.{k}", 0))
                  for k, v in saved.items() if k in Usage.__dataclass_fields__}
        self._usage = Usage(**totals)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, role={self.role!r})"

    # -- internals ---------------------------------------------------------------------------------------
    def _request(self, kind: str, user: str, repair: tuple[Reply, str] | None, count: int | None = None) -> Reply:
        """One logical call with retries; counts tokens and cost; raises CallFailed (scrubbed).
        ``count``: the number of proposals the reply schema asks for (None: no count stated)."""
        extra = {} if count is None else {"count": count}

        def attempt() -> Reply:
            try:
                return self._call(kind, self._static, user, repair, **extra)
            except CallFailed as exc:
                self._count(failed_calls=1)
                exc.message = self._scrub(exc.message)
                exc.args = (exc.message,)
                raise
            except Exception as exc:  # an SDK error we did not classify: one line, no retry
                self._count(failed_calls=1)
                raise CallFailed(self._scrub(f"{type(exc).__name__}: {one_line(exc)}")) from None

        def on_retry(exc: CallFailed, delay: float) -> None:
            log.info("%s: %s; retrying in %.1f s", self.name, exc.message, delay)

        reply = with_retries(attempt, max_retries=self.max_retries, base_s=self.retry_base_s, max_s=self.retry_max_s,
                             rng=self._rng, sleep=self._sleep, on_retry=on_retry)
        if reply.error:
            reply.error = self._scrub(reply.error)
        self._count(calls=1, tokens_in=reply.tokens_in + reply.cache_read + reply.cache_write,
                    tokens_out=reply.tokens_out, cache_read_tokens=reply.cache_read,
                    cache_write_tokens=reply.cache_write, cost_usd=self._cost(reply))
        return reply

    def _count(self, **deltas: float) -> None:
        """Add to the running totals, under the lock (calls of one agent may run at once)."""
        with self._usage_lock:
            for field_name, delta in deltas.items():
                setattr(self._usage, field_name, getattr(self._usage, field_name) + delta)

    def _cost(self, reply: Reply) -> float:
        price_in, price_out = self.prices
        prompt = reply.tokens_in + CACHE_WRITE_FACTOR * reply.cache_write + CACHE_READ_FACTOR * reply.cache_read
        return (prompt * price_in + reply.tokens_out * price_out) / 1e6

    def _priced_proposals(self, accepted: list[tuple[Cell, str]], calls: list[Reply]) -> list[Proposal]:
        """Proposals carrying an even share of the tokens and cost of the calls that produced them."""
        if not accepted:
            return []
        k = len(accepted)
        tin = split_evenly(sum(r.tokens_in + r.cache_read + r.cache_write for r in calls), k)
        tout = split_evenly(sum(r.tokens_out for r in calls), k)
        cost = sum(self._cost(r) for r in calls) / k
        return [self._proposal(cell, rationale, tokens_in=a, tokens_out=b, cost_usd=cost)
                for (cell, rationale), a, b in zip(accepted, tin, tout)]

    def _sit_out(self, why: str) -> list[Proposal]:
        self._count(rounds_sat_out=1)
        self.last_error = f"{self.name}: sits out this round: {self._scrub(why)}"
        log.warning("%s", self.last_error)
        return []

    def _scrub(self, text: Any) -> str:
        return scrub(text, getattr(self, "_secrets", ()))


def json_or_error(text: str | None) -> tuple[Any, str | None]:
    """(parsed JSON, None) or (None, a one-line reason) for a model's text answer."""
    if text is None or not str(text).strip():
        return None, "the reply was empty"
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, f"the reply was not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"


def finite(x: Any) -> int:
    """An int token count from an SDK field that may be None."""
    try:
        value = float(x)
    except (TypeError, ValueError):
        return 0
    return int(value) if math.isfinite(value) else 0


__all__ = ["LLMPolicy", "Budget", "Usage", "Reply", "CallFailed", "PRICES_PER_MTOK", "price_for", "parse_proposals",
           "scrub", "resolve_key", "with_retries", "backoff_delay", "parse_retry_after", "split_evenly"]
