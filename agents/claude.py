"""Claude as a proposal policy: the anthropic SDK's Messages API with forced tool use.

The answer comes back as the input of a ``propose_experiments`` (or ``diagnose_failure``) tool
call whose JSON schema is generated from the space, one enum per axis, and states how many
proposals the call asks for (minItems = maxItems); ``tool_choice`` forces that tool, so there is
no free text to parse. The static system prompt carries ``cache_control: ephemeral`` so that
every round that asks for a count asked before reads tools and system prompt from Anthropic's
prompt cache. A repair turn answers the tool call with an ``is_error``
tool_result listing the rejected items. Everything else (keys, retries, validation, budget) is
agents/llm.py.
"""
from __future__ import annotations

import os
from typing import Any

from crashsearch.agents.llm import LLMPolicy, Reply, classify_http_error, classify_transport_error, finite
from crashsearch.agents.prompt import diagnosis_schema, proposals_schema


class ClaudePolicy(LLMPolicy):
    """Proposals and failure diagnoses from a Claude model (default: the newest Opus the SDK knows).

    Constructed as ``ClaudePolicy(space, seed=0, model=..., temperature=..., role=None,
    timeout_s=..., max_retries=..., budget=None, ...)`` (options: agents.llm.LLMPolicy). Raises
    PolicyUnavailable when neither ANTHROPIC_API_KEY nor a Prefect Secret 'anthropic-api-key' is set.
    """

    name = "claude"
    default_model = "claude-opus-5-5"
    key_envs = ("ANTHROPIC_API_KEY",)
    secret_block = "anthropic-api-key"
    answer_hint = "Answer only by calling the tool you are given; put nothing else in your reply."

    def _make_client(self, key: str) -> Any:
        import anthropic

        self._anthropic = anthropic
        self._tools_by_count: dict[int | None, list[dict]] = {}
        # max_retries=0: agents/llm.py retries with its own backoff, budget and sit-out rules
        return anthropic.Anthropic(api_key=key, base_url=os.environ.get("ANTHROPIC_BASE_URL") or None,
                                   timeout=self.timeout_s, max_retries=0)

    def _tools(self, count: int | None) -> list[dict]:
        """The two tools, the propose tool's schema stating ``count`` proposals. Built once per count:
        the tools open the cached prefix, so a count asked for again reads the same cache entry."""
        if count not in self._tools_by_count:
            self._tools_by_count[count] = [
                {"name": self.propose_tool,
                 "description": "Submit the proposed experiments: each a full cell of the space and a one-sentence rationale.",
                 "input_schema": proposals_schema(self.space, count=count)},
                {"name": self.diagnose_tool,
                 "description": "Submit the diagnosis of a failed experiment: a config fix with the corrected cell, or a code bug.",
                 "input_schema": diagnosis_schema(self.space)},
            ]
        return self._tools_by_count[count]

    def _call(self, kind: str, system: str, user: str, repair: tuple[Reply, str] | None,
              count: int | None = None) -> Reply:
        tool = self.propose_tool if kind == "propose" else self.diagnose_tool
        messages: list[dict] = [{"role": "user", "content": user}]
        if repair is not None:
            previous, feedback = repair
            blocks = previous.handle or [{"type": "text", "text": "(no answer)"}]
            messages.append({"role": "assistant", "content": blocks})
            tool_use = next((b for b in blocks if b.get("type") == "tool_use"), None)
            if tool_use is not None:  # the API wants the tool call answered before anything else
                messages.append({"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": tool_use["id"], "is_error": True, "content": feedback}]})
            else:
                messages.append({"role": "user", "content": feedback})
        request: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_output_tokens,
            # tools + this block form the cached prefix: one cache entry per count of proposals asked
            "system": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
            "tools": self._tools(count if kind == "propose" else None),
            "tool_choice": {"type": "tool", "name": tool},
            "messages": messages,
        }
        if self.temperature is not None:
            request["temperature"] = self.temperature
        sdk = self._anthropic
        try:
            message = self._client.messages.create(**request)
        except sdk.APIStatusError as exc:
            raise classify_http_error(exc.status_code, _error_message(exc), exc.response.headers) from None
        except sdk.APIConnectionError as exc:  # includes APITimeoutError
            raise classify_transport_error(exc) from None

        usage = message.usage
        reply = Reply(data=None, tokens_in=finite(usage.input_tokens), tokens_out=finite(usage.output_tokens),
                      cache_read=finite(getattr(usage, "cache_read_input_tokens", 0)),
                      cache_write=finite(getattr(usage, "cache_creation_input_tokens", 0)))
        # Keep only the blocks a later request may send back (text and tool_use), as plain dicts.
        reply.handle = []
        for block in message.content:
            if block.type == "text":
                reply.handle.append({"type": "text", "text": block.text})
            elif block.type == "tool_use":
                reply.handle.append({"type": "tool_use", "id": block.id, "name": block.name, "input": block.input})
        call = next((b for b in reply.handle if b["type"] == "tool_use" and b["name"] == tool), None)
        if call is None:
            reply.error = f"the reply did not call the {tool} tool (stop_reason={message.stop_reason})"
        elif message.stop_reason == "max_tokens":
            reply.error = "the reply was cut off at max_tokens; propose fewer or shorter items"
        else:
            reply.data = call["input"]
        return reply


def _error_message(exc: Any) -> str:
    """The API's own error message from an APIStatusError body, else the exception text."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return str(getattr(exc, "message", exc))

