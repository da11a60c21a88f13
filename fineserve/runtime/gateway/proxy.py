"""Forward one request to one engine and relay the answer, streamed or whole.

Only failures before anything reached the client are ``Unreachable`` (the caller may try
another replica); once a stream has started, an engine failure ends that stream. Leaving the
``async with`` early (the client went away, or the task was cancelled) closes the engine
connection, which makes vLLM abort the generation.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from yarl import URL

from fineserve.runtime.gateway.errors import ApiError
from fineserve.runtime.gateway.sse import SseRelay

_JSON_HEADERS = {"Content-Type": "application/json"}
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_USAGE_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
# errors that mean "nothing was done on the engine's side or it is safe to redo"
_RETRYABLE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


class Unreachable(Exception):
    """The engine could not be reached (``refused``) or dropped the connection before answering."""

    def __init__(self, refused: bool, why: str) -> None:
        super().__init__(why)
        self.refused = refused


@dataclass(slots=True)
class Served:
    """What came back from the engine, for the scheduler and the metrics."""

    status: int  # engine's status; 502 when a stream broke off
    output_tokens: int = 0
    first_token_s: float | None = None  # monotonic, streamed requests only
    last_token_s: float | None = None


def _passthrough(r: aiohttp.ClientResponse, data: bytes) -> web.Response:
    headers = {"Content-Type": r.headers.get("Content-Type", "application/json")}
    retry = r.headers.get("Retry-After")
    if retry is not None:
        headers["Retry-After"] = retry
    return web.Response(body=data, status=r.status, headers=headers)


async def forward_json(session: aiohttp.ClientSession, url: URL, body: bytes
                       ) -> tuple[web.Response, Served]:
    """Non-streaming request: the engine's answer, whole."""
    try:
        async with session.post(url, data=body, headers=_JSON_HEADERS) as r:
            data = await r.read()
    except aiohttp.ClientConnectorError as exc:
        raise Unreachable(True, f"connect failed: {exc.os_error}") from None
    except _RETRYABLE as exc:
        raise Unreachable(False, f"{type(exc).__name__}: {exc}") from None
    except TimeoutError:
        raise ApiError(504, "engine did not answer in time") from None
    served = Served(r.status)
    if r.status == 200:
        m = _USAGE_TOKENS.search(data)
        served.output_tokens = int(m.group(1)) if m else 0
    return _passthrough(r, data), served


async def forward_stream(request: web.Request, session: aiohttp.ClientSession, url: URL,
                         body: bytes, strip_usage: bool,
                         on_first_token: Callable[[float], None]
                         ) -> tuple[web.StreamResponse, Served]:
    """Streaming request: relay SSE events as they come, timing the first and last token."""
    try:
        r = await session.post(url, data=body, headers=_JSON_HEADERS)
    except aiohttp.ClientConnectorError as exc:
        raise Unreachable(True, f"connect failed: {exc.os_error}") from None
    except _RETRYABLE as exc:
        raise Unreachable(False, f"{type(exc).__name__}: {exc}") from None
    except TimeoutError:
        raise ApiError(504, "engine did not answer in time") from None
    try:
        if r.status != 200:
            return _passthrough(r, await r.read()), Served(r.status)
        return await _relay(request, r, strip_usage, on_first_token)
    except BaseException:
        r.close()  # unread engine data: drop the connection, so the engine aborts the request
        raise
    finally:
        r.release()


async def _relay(request: web.Request, r: aiohttp.ClientResponse, strip_usage: bool,
                 on_first_token: Callable[[float], None]) -> tuple[web.StreamResponse, Served]:
    resp = web.StreamResponse(headers=_SSE_HEADERS)
    await resp.prepare(request)
    relay = SseRelay(strip_usage)
    served = Served(200)
    first = last = None
    try:
        async for data in r.content.iter_any():
            out, n = relay.feed(data)
            if n:
                last = time.monotonic()
                if first is None:
                    first = last
                    on_first_token(first)
            if out:
                await resp.write(out)
        out, n = relay.flush()
        if n:
            last = time.monotonic()
            first = first or last
        if out:
            await resp.write(out)
    except (aiohttp.ClientPayloadError, *_RETRYABLE, TimeoutError):
        served.status = 502  # the engine broke off mid-stream: the client sees it end early
    served.first_token_s, served.last_token_s = first, last
    served.output_tokens = relay.output_tokens
    await resp.write_eof()
    return resp, served
