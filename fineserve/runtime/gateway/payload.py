"""Read just enough of an OpenAI request body to route it and to rewrite it for an engine.

The body is decoded once (a malformed one must be a 400 anyway) and re-encoded only when the
engine needs something different: another model name, or ``stream_options.include_usage`` so
the stream ends with the exact completion-token count. Otherwise the client's bytes go out
untouched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fineserve.runtime.gateway.errors import ApiError


@dataclass(slots=True)
class Payload:
    raw: bytes  # the client's body
    body: dict[str, Any]
    model: str
    stream: bool
    client_usage: bool  # the client asked for the usage chunk itself
    prompt_tokens: int  # estimate (token ids counted, text at ~4 bytes a token)
    max_tokens: int
    _encoded: dict[str, bytes] | None = None  # served model name -> body for that engine

    def for_engine(self, served_name: str) -> bytes:
        """The body to send to an engine that knows the model as ``served_name``."""
        if served_name == self.model and (not self.stream or self.client_usage):
            return self.raw
        if self._encoded is None:
            self._encoded = {}
        out = self._encoded.get(served_name)
        if out is None:
            body = dict(self.body)
            body["model"] = served_name
            if self.stream and not self.client_usage:
                opts = body.get("stream_options")
                body["stream_options"] = {**(opts if isinstance(opts, dict) else {}),
                                          "include_usage": True}
            out = self._encoded[served_name] = json.dumps(
                body, separators=(",", ":"), ensure_ascii=False).encode()
        return out


def parse_payload(raw: bytes, default_max_tokens: int) -> Payload:
    """Decode a completions / chat body; ApiError(400) names what is wrong."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", "invalid_request_error"
                       ) from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", "invalid_request_error")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model: must be a non-empty string", "invalid_request_error",
                       param="model")
    stream = body.get("stream") is True
    opts = body.get("stream_options")
    client_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = default_max_tokens
    elif not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
        raise ApiError(400, "max_tokens: must be a non-negative integer",
                       "invalid_request_error", param="max_tokens")
    return Payload(raw, body, model, stream, client_usage, _prompt_tokens(body, len(raw)),
                   max_tokens)


def _prompt_tokens(body: dict[str, Any], size: int) -> int:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        return len(prompt)  # token ids: exact
    if isinstance(prompt, str):
        return len(prompt) // 4 + 1
    return size // 4 + 1  # chat messages, batched prompts: the body size is a fair bound
