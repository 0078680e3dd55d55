"""Gemini as a proposal policy: google-genai's generateContent with a JSON response schema.

The answer is JSON constrained by a response schema generated from the space (one enum per
axis) that states how many proposals the call asks for (minItems = maxItems). Gemini's schema enums must be strings, so numbers travel as "0.001" and
``space.validate`` maps them back onto the axis values. The static prompt goes first as the
system instruction, which lets Gemini's implicit prefix cache reuse it across rounds. A repair
turn replays the model's JSON and adds a user turn listing the rejected items. Everything else
(keys, retries, validation, budget) is agents/llm.py.
"""
from __future__ import annotations

import os
from typing import Any

from crashsearch.agents.llm import LLMPolicy, Reply, classify_http_error, classify_transport_error, finite, json_or_error
from crashsearch.agents.prompt import diagnosis_schema, proposals_schema


class GeminiPolicy(LLMPolicy):
    """Proposals and failure diagnoses from a Gemini model (default: the newest Pro the SDK knows).

    Constructed like ClaudePolicy (options: agents.llm.LLMPolicy). Raises PolicyUnavailable when
    neither GEMINI_API_KEY / GOOGLE_API_KEY nor a Prefect Secret 'gemini-api-key' is set.
    """

    name = "gemini"
    default_model = "gemini-3.1-pro-preview"
    key_envs = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    secret_block = "gemini-api-key"
    answer_hint = "Answer only with JSON that matches the response schema; put nothing else in your reply."

    def _make_client(self, key: str) -> Any:
        from google import genai
        from google.genai import errors, types

        self._types, self._errors = types, errors
        self._schemas = {("propose", None): _to_schema(types, proposals_schema(self.space, strings=True)),
                         ("diagnose", None): _to_schema(types, diagnosis_schema(self.space, strings=True))}
        options = types.HttpOptions(
            base_url=os.environ.get("GOOGLE_GEMINI_BASE_URL") or None,
            timeout=int(self.timeout_s * 1000),  # milliseconds
            retry_options=types.HttpRetryOptions(attempts=1),  # agents/llm.py does the retrying
        )
        return genai.Client(api_key=key, http_options=options)

    def _call(self, kind: str, system: str, user: str, repair: tuple[Reply, str] | None,
              count: int | None = None) -> Reply:
        types = self._types
        key = (kind, count if kind == "propose" else None)
        if key not in self._schemas:  # the propose schema states the count asked for (minItems, maxItems)
            self._schemas[key] = _to_schema(types, proposals_schema(self.space, strings=True, count=count))
        contents = [types.Content(role="user", parts=[types.Part(text=user)])]
        if repair is not None:
            previous, feedback = repair
            contents.append(types.Content(role="model", parts=[types.Part(text=previous.handle or "(no answer)")]))
            contents.append(types.Content(role="user", parts=[types.Part(text=feedback)]))
        config = types.GenerateContentConfig(
            system_instruction=system,
            temperature=self.temperature,
            max_output_tokens=self.max_output_tokens,
            response_mime_type="application/json",
            response_schema=self._schemas[key],
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),  # no tools: data only
        )
        try:
            response = self._client.models.generate_content(model=self.model, contents=contents, config=config)
        except self._errors.APIError as exc:
            raise classify_http_error(exc.code, exc.message or str(exc), _headers(exc), _retry_delay(exc.details)) from None
        except Exception as exc:  # httpx timeouts and connection errors
            raise classify_transport_error(exc) from None

        meta = response.usage_metadata
        cached = finite(getattr(meta, "cached_content_token_count", 0)) if meta else 0
        prompt = finite(getattr(meta, "prompt_token_count", 0)) if meta else 0
        reply = Reply(data=None,
                      tokens_in=max(prompt - cached, 0),
                      # thinking tokens are billed as output
                      tokens_out=(finite(meta.candidates_token_count) + finite(getattr(meta, "thoughts_token_count", 0))) if meta else 0,
                      cache_read=cached)
        try:
            text = response.text
        except Exception:  # blocked or empty candidates
            text = None
        reply.handle = text
        reply.data, reply.error = json_or_error(text)
        if text is None and response.candidates:
            reply.error = f"the reply was empty (finish_reason={response.candidates[0].finish_reason})"
        return reply


def _to_schema(types: Any, schema: dict) -> Any:
    """A google.genai types.Schema from our JSON schema dict, properties kept in axis order."""
    def convert(node: dict) -> dict:
        out = {k: v for k, v in node.items() if k not in ("properties", "items")}
        if "properties" in node:
            out["properties"] = {k: convert(v) for k, v in node["properties"].items()}
            out["property_ordering"] = list(node["properties"])
        if "items" in node:
            out["items"] = convert(node["items"])
        return out

    return types.Schema.model_validate(convert(schema))


def _headers(exc: Any) -> dict | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    try:
        return dict(headers) if headers is not None else None
    except Exception:
        return None


def _retry_delay(details: Any) -> float | None:
    """Seconds from a google.rpc.RetryInfo ``retryDelay: "7s"`` in the error body, else None."""
    error = details.get("error", details) if isinstance(details, dict) else None
    for item in (error or {}).get("details", []) if isinstance(error, dict) else []:
        delay = item.get("retryDelay") if isinstance(item, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return float(delay[:-1])
            except ValueError:
                return None
    return None
