"""Forward one request to one engine and relay the answer, streamed or whole.

Only failures before anything reached the client are ``Unreachable`` (the caller may try
another replica); once a stream has started, an engine failure ends that stream. Leaving
early (the client went away, or the task was cancelled) closes the engine connection, which
makes vLLM abort the generation. The engine side is the lean keep-alive client
(``client.py``); the client side is aiohttp's server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from fineserve.runtime.gateway.client import (
    BrokenBody,
    ClientError,
    ConnectFailed,
    Disconnected,
    Pool,
    Response,
)
from fineserve.runtime.gateway.errors import ApiError
from fineserve.runtime.gateway.sse import USAGE_TOKENS, SseRelay

CLIENT_CLOSED = 499  # the client disconnected mid-answer (nginx's convention; never sent)
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


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


def _passthrough(r: Response, data: bytes) -> web.Response:
    headers = {"Content-Type": r.content_type or "application/json"}
    if r.retry_after is not None:
        headers["Retry-After"] = r.retry_after
    return web.Response(body=data, status=r.status, headers=headers)


async def _send(pool: Pool, path: str, body: bytes) -> Response:
    try:
        return await pool.post(path, body)
    except ConnectFailed as exc:
        raise Unreachable(True, str(exc)) from None
    except (Disconnected, BrokenBody) as exc:
        raise Unreachable(False, f"{type(exc).__name__}: {exc}") from None


async def forward_json(pool: Pool, path: str, body: bytes, timeout_s: float
                       ) -> tuple[web.Response, Served]:
    """Non-streaming request: the engine's answer, whole."""
    try:
        async with asyncio.timeout(timeout_s):
            r = await _send(pool, path, body)
            data = await r.read()  # a read cut short drops the connection
    except TimeoutError:
        raise ApiError(504, "engine did not answer in time") from None
    except BrokenBody as exc:
        raise Unreachable(False, f"BrokenBody: {exc}") from None
    served = Served(r.status)
    if r.status == 200:
        m = USAGE_TOKENS.search(data)
        served.output_tokens = int(m.group(1)) if m else 0
    return _passthrough(r, data), served


async def forward_stream(request: web.Request, pool: Pool, path: str, body: bytes,
                         strip_usage: bool, on_first_token: Callable[[float], None],
                         timeout_s: float) -> tuple[web.StreamResponse, Served]:
    """Streaming request: relay SSE events as they come, timing the first and last token."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        async with asyncio.timeout_at(deadline):
            r = await _send(pool, path, body)
    except TimeoutError:
        raise ApiError(504, "engine did not answer in time") from None
    try:
        if r.status != 200:
            async with asyncio.timeout_at(deadline):
                data = await r.read()
            return _passthrough(r, data), Served(r.status)
        return await _relay(request, r, strip_usage, on_first_token, deadline)
    except BaseException:
        r.close()  # unread engine data: drop the connection, so the engine aborts the request
        raise
    finally:
        r.release()


async def _relay(request: web.Request, r: Response, strip_usage: bool,
                 on_first_token: Callable[[float], None], deadline: float
                 ) -> tuple[web.StreamResponse, Served]:
    resp = web.StreamResponse(headers=_SSE_HEADERS)
    await resp.prepare(request)
    relay = SseRelay(strip_usage)
    served = Served(200)
    first = last = None
    try:
        async with asyncio.timeout_at(deadline):
            async for data in r.iter_any():
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
    except ConnectionResetError:
        # the client went away (it may stop reading after [DONE]): not the engine's fault
        served.status = CLIENT_CLOSED
        r.close()
    except (ClientError, TimeoutError):
        served.status = 502  # the engine broke off mid-stream: the client sees it end early
        r.close()
    served.first_token_s, served.last_token_s = first, last
    served.output_tokens = relay.output_tokens
    try:
        await resp.write_eof()
    except ConnectionResetError:
        pass  # everything was relayed; the client hung up before the stream's terminator
    return resp, served
