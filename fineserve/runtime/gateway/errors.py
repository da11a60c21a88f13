"""OpenAI-style error answers: ``{"error": {"message", "type", "param", "code"}}``.

Clients written against the OpenAI API read ``error.message`` and retry on 429 / 503 after
``Retry-After`` seconds, so every refusal the gateway makes has that shape and header.
"""

from __future__ import annotations

import json
import math

from aiohttp import web

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          413: "invalid_request_error", 429: "rate_limit_error", 502: "upstream_error",
          503: "service_unavailable", 504: "timeout_error"}


class ApiError(Exception):
    """An answer the gateway gives instead of forwarding; ``response()`` renders it."""

    def __init__(self, status: int, message: str, kind: str | None = None,
                 param: str | None = None, code: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind or _TYPES.get(status, "error")
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s

    def response(self) -> web.Response:
        body = json.dumps({"error": {"message": self.message, "type": self.kind,
                                     "param": self.param, "code": self.code}})
        headers = None
        if self.retry_after_s is not None:  # whole seconds per RFC 9110, at least 1
            headers = {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}
        return web.Response(status=self.status, text=body, content_type="application/json",
                            headers=headers)
