"""The gateway's only HTTP/1.1 client to its engines: generation, health probes, scrapes.

aiohttp's ClientSession costs about 150 us of CPU per request (request/response objects,
header multidicts, URL handling, tracing hooks, timers); the gateway only ever POSTs JSON to
a few known engines and relays the answer (plus an occasional bodiless GET), so this client
does just that on an asyncio
``Protocol``: one pre-built request head per (engine, path), a pool of idle keep-alive
connections per engine, and a response parser for ``Content-Length``, ``chunked`` and
read-until-close bodies that hands body bytes on as they arrive (SSE pass-through without
copies beyond the socket buffer).

Failures are typed for the caller's failover: ``ConnectFailed`` (nothing reached the engine),
``Disconnected`` (the connection closed before the response head: the engine may have dropped
an idle keep-alive connection), ``BrokenBody`` (closed mid-body). Timeouts are the caller's
(``asyncio.timeout`` around the exchange); cancelling a caller closes its connection, which is
how an engine learns that the client went away and aborts the generation.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator

_CRLF = b"\r\n"
_HEAD_END = b"\r\n\r\n"
_MAX_HEAD = 64 * 1024
_HIGH_WATER = 1 << 20  # buffered body bytes before reading from the socket pauses
# uvicorn (vLLM's server) drops idle keep-alive connections after 5 s: let ours go first
IDLE_TIMEOUT_S = 4.0


class ClientError(Exception):
    """Base of the engine connection errors below."""


class ConnectFailed(ClientError):
    """No connection to the engine (refused, unreachable, connect timeout)."""


class Disconnected(ClientError):
    """The engine closed the connection before the response head arrived."""


class BrokenBody(ClientError):
    """The engine closed the connection (or sent garbage) in the middle of a response."""


class _Conn(asyncio.Protocol):
    """One TCP connection: a receive buffer and one waiter (one exchange at a time)."""

    __slots__ = ("transport", "buf", "waiter", "closed", "paused", "idle_since")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.paused = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None:
            self.waiter = None
            if not w.done():
                w.set_result(None)

    async def more(self) -> bool:
        """Wait for more bytes; False when the connection closed instead."""
        if self.closed:
            return False
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        self.waiter = asyncio.get_running_loop().create_future()
        await self.waiter
        return True

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Response:
    """Status, the two headers the gateway relays, and the body (read once)."""

    __slots__ = ("status", "content_type", "retry_after", "_conn", "_pool", "_length",
                 "_chunked", "_left", "_done", "_keep")

    def __init__(self, pool: Pool, conn: _Conn, status: int, headers: dict[bytes, bytes],
                 keep_alive: bool) -> None:
        self.status = status
        self.content_type = headers.get(b"content-type", b"").decode("latin-1")
        ra = headers.get(b"retry-after")
        self.retry_after = ra.decode("latin-1") if ra is not None else None
        self._conn: _Conn | None = conn
        self._pool = pool
        self._keep = keep_alive
        te = headers.get(b"transfer-encoding", b"").lower()
        self._chunked = b"chunked" in te
        cl = headers.get(b"content-length")
        if self._chunked:
            self._length = -1
        elif cl is not None:
            try:
                self._length = int(cl)
            except ValueError:
                raise BrokenBody(f"bad Content-Length {cl!r}") from None
        elif status in (204, 304) or 100 <= status < 200:
            self._length = 0
        else:
            self._length = -2  # until the engine closes the connection
            self._keep = False
        self._left = 0  # bytes left in the current chunk (chunked)
        self._done = self._length == 0

    async def iter_any(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive (chunk framing removed); raises BrokenBody when cut."""
        conn = self._conn
        if conn is None:
            return
        if self._length >= 0:
            left = self._length
            while left:
                if not conn.buf and not await conn.more():
                    raise BrokenBody(f"connection closed with {left} body bytes missing")
                buf = conn.buf
                if len(buf) <= left:
                    data = bytes(buf)
                    buf.clear()
                else:
                    data = bytes(buf[:left])
                    del buf[:left]
                left -= len(data)
                yield data
        elif self._chunked:
            while True:
                data = self._take_chunks(conn)
                if data:
                    yield data
                if self._done:
                    break
                if not await conn.more():
                    raise BrokenBody("connection closed inside a chunked body")
        else:
            while True:
                if conn.buf:
                    data = bytes(conn.buf)
                    conn.buf.clear()
                    yield data
                if not await conn.more():
                    break
        self._done = True
        self.release()

    def _take_chunks(self, conn: _Conn) -> bytes:
        """Decode as much chunked framing as the buffer holds; sets ``_done`` at the end."""
        buf = conn.buf
        out = bytearray()
        pos = 0
        while not self._done:
            if self._left > 0:
                n = min(self._left, len(buf) - pos)
                if n <= 0:
                    break
                out += buf[pos:pos + n]
                pos += n
                self._left -= n
                if self._left == 0:
                    self._left = -1  # the CRLF after the chunk data is next
                continue
            if self._left == -1:
                if len(buf) - pos < 2:
                    break
                if buf[pos:pos + 2] != _CRLF:
                    raise BrokenBody("chunk data not followed by CRLF")
                pos += 2
                self._left = 0
                continue
            end = buf.find(_CRLF, pos)
            if end < 0:
                if len(buf) - pos > 1024:
                    raise BrokenBody("chunk size line too long")
                break
            line = bytes(buf[pos:end]).split(b";", 1)[0].strip()
            try:
                size = int(line, 16)
            except ValueError:
                raise BrokenBody(f"bad chunk size {line[:20]!r}") from None
            if size == 0:  # last chunk: skip trailers up to the empty line
                trailer_end = buf.find(_HEAD_END, end)
                if buf[end:end + 4] == _HEAD_END:
                    pos = end + 4
                elif trailer_end >= 0:
                    pos = trailer_end + 4
                else:
                    break
                self._done = True
                break
            pos = end + 2
            self._left = size
        if pos:
            del buf[:pos]
        return bytes(out)

    async def read(self) -> bytes:
        """The whole body; a read cut short (error, timeout, cancel) drops the connection."""
        try:
            parts = [data async for data in self.iter_any()]
        except BaseException:
            self.close()
            raise
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        """Give the connection back (fully read keep-alive) or close it (anything else)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._done and self._keep and not conn.closed and not conn.buf:
            self._pool.put(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Drop the connection whatever its state (the engine sees the request abandoned)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class Pool:
    """Keep-alive connections to one engine (``host:port``); lives on one event loop."""

    def __init__(self, host: str, port: int, connect_timeout_s: float,
                 idle_timeout_s: float = IDLE_TIMEOUT_S) -> None:
        self.host = host
        self.port = port
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._idle: deque[_Conn] = deque()
        self._host_line = f"Host: {host}:{port}\r\n".encode()
        self._heads: dict[str, bytes] = {}
        self.opened = 0  # connections opened so far (tests: reuse)

    def head(self, path: str) -> bytes:
        h = self._heads.get(path)
        if h is None:
            h = self._heads[path] = (f"POST {path} HTTP/1.1\r\n".encode() + self._host_line
                                     + b"Content-Type: application/json\r\nContent-Length: ")
        return h

    async def post(self, path: str, body: bytes) -> Response:
        """Send ``body`` and return once the response head is in (the body is streamed)."""
        return await self._exchange(b"%s%d\r\n\r\n%s" % (self.head(path), len(body), body))

    async def get(self, path: str) -> Response:
        """A bodiless GET (health probes, metric scrapes: not per request, so no cached head)."""
        return await self._exchange(b"GET %s HTTP/1.1\r\n%s\r\n" % (path.encode(),
                                                                        self._host_line))

    async def _exchange(self, request: bytes) -> Response:
        conn = await self._connection()
        assert conn.transport is not None
        conn.transport.write(request)
        try:
            return await self._read_head(conn)
        except BaseException:
            conn.close()
            raise

    async def _connection(self) -> _Conn:
        now = time.monotonic()
        idle = self._idle
        while idle:
            conn = idle.pop()  # most recently used first: warmest, least likely timed out
            if conn.closed or now - conn.idle_since > self.idle_timeout_s:
                conn.close()
                continue
            return conn
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Conn, self.host, self.port), self.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise ConnectFailed(f"connect to {self.host}:{self.port} failed: "
                                f"{getattr(exc, 'strerror', None) or exc or 'timeout'}") from None
        self.opened += 1
        return conn

    def put(self, conn: _Conn) -> None:
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    async def _read_head(self, conn: _Conn) -> Response:
        while True:
            end = conn.buf.find(_HEAD_END)
            if end >= 0:
                break
            if len(conn.buf) > _MAX_HEAD:
                raise BrokenBody("response head larger than 64 KiB")
            if not await conn.more():
                if conn.buf:
                    raise BrokenBody("connection closed inside the response head")
                raise Disconnected("engine closed the connection before answering")
        head = bytes(conn.buf[:end])
        del conn.buf[:end + 4]
        lines = head.split(_CRLF)
        status_line = lines[0].split(b" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
            raise BrokenBody(f"not an HTTP/1.x response: {lines[0][:40]!r}")
        try:
            status = int(status_line[1])
        except ValueError:
            raise BrokenBody(f"bad status line {lines[0][:40]!r}") from None
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            k, sep, v = line.partition(b":")
            if sep:
                headers[k.strip().lower()] = v.strip()
        keep = status_line[0] == b"HTTP/1.1"
        connection = headers.get(b"connection", b"").lower()
        if b"close" in connection:
            keep = False
        elif b"keep-alive" in connection:
            keep = True
        return Response(self, conn, status, headers, keep)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
