"""The lean engine client against a scripted raw-socket server: body framings, keep-alive
reuse, connections closed early or refused, and cancellation closing the connection."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from fineserve.runtime.gateway.client import BrokenBody, ConnectFailed, Disconnected, Pool
from tests.runtime.gateway.harness import free_port, run

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Scripted:
    """A server whose every connection runs ``script``; counts connections and requests."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed_by_client = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Pool:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return Pool("127.0.0.1", port, connect_timeout_s=2.0)

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request (head + Content-Length body, if any); None when the client closed."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            self.closed_by_client.set()
            return None
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return body


def test_content_length_bodies_reuse_one_connection() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (body := await srv.read_request(reader)) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    srv = Scripted(script)

    async def go() -> None:
        async with srv as pool:
            for i in range(5):
                r = await pool.post("/v1/completions", b'{"n":%d}' % i)
                assert r.status == 200 and r.content_type == "application/json"
                assert await r.read() == b'{"n":%d}' % i
            assert srv.connections == 1 and pool.opened == 1
            assert srv.requests[0].startswith(b"POST /v1/completions HTTP/1.1\r\nHost: ")
            pool.close()
    run(go())


def test_chunked_body_split_anywhere_is_decoded() -> None:
    payload = b"data: {\"a\": 1}\n\n" * 3 + b"data: [DONE]\n\n"
    framed = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in
                      (payload[:5], payload[5:40], payload[40:])) + b"0\r\nX-Trailer: 1\r\n\r\n"

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await srv.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(0, len(framed), 7):  # framing split at arbitrary points
                writer.write(framed[i:i + 7])
                await writer.drain()
                await asyncio.sleep(0)

    srv = Scripted(script)

    async def go() -> None:
        async with srv as pool:
            for _ in range(2):
                r = await pool.post("/x", b"{}")
                got = [part async for part in r.iter_any()]
                assert b"".join(got) == payload
            assert pool.opened == 1  # the connection went back after the last chunk
    run(go())


def test_connection_close_and_read_until_close_are_not_reused() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await srv.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\n"
                         b"Connection: close\r\n\r\nbusy, no length")

    srv = Scripted(script)

    async def go() -> None:
        async with srv as pool:
            for _ in range(2):
                r = await pool.post("/x", b"{}")
                assert r.status == 429 and r.retry_after == "3"
                assert await r.read() == b"busy, no length"
            assert pool.opened == 2
    run(go())


def test_engine_closing_mid_stream_is_a_broken_body() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await srv.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"f\r\ndata: {\"a\":1}\n\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.02)  # then the engine dies

    srv = Scripted(script)

    async def go() -> None:
        async with srv as pool:
            r = await pool.post("/x", b"{}")
            got = []
            with pytest.raises(BrokenBody):
                async for part in r.iter_any():
                    got.append(part)
            assert got == [b'data: {"a":1}\n\n']
            r.release()
            assert not pool._idle  # a broken connection is never pooled
    run(go())


def test_close_before_answering_is_disconnected_and_refused_is_connect_failed() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)  # and hang up without a word

    srv = Scripted(script)

    async def go() -> None:
        async with srv as pool:
            with pytest.raises(Disconnected):
                await pool.post("/x", b"{}")
        with pytest.raises(ConnectFailed):
            await Pool("127.0.0.1", free_port(), connect_timeout_s=2.0).post("/x", b"{}")
    run(go())


def test_stale_pooled_connection_is_replaced() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await srv.read_request(reader) is not None:  # one answer, then an idle close
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    srv = Scripted(script)

    async def go() -> None:
        async with srv as pool:
            assert await (await pool.post("/x", b"{}")).read() == b"ok"
            await asyncio.sleep(0.05)  # the server's close reaches the pooled connection
            assert await (await pool.post("/x", b"{}")).read() == b"ok"
            assert pool.opened == 2
    run(go())


def test_cancelling_the_reader_closes_the_engine_connection() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await srv.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            await writer.drain()
            await srv.read_request(reader)  # returns None when the client hangs up

    srv = Scripted(script)

    async def go() -> None:
        async with srv as pool:
            r = await pool.post("/x", b"{}")

            async def consume() -> None:
                try:
                    async for _ in r.iter_any():
                        pass
                finally:
                    r.close()

            task = asyncio.create_task(consume())
            await asyncio.sleep(0.02)
            task.cancel()
            await asyncio.wait_for(srv.closed_by_client.wait(), 2.0)
            assert not pool._idle
    run(go())


def test_get_shares_the_pool_and_a_read_cut_short_drops_the_connection() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await srv.read_request(reader) is not None:
            if len(srv.requests) == 1:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            else:  # promises a body it never sends
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\npart")
            await writer.drain()

    srv = Scripted(script)

    async def go() -> None:
        async with srv as pool:
            r = await pool.get("/health")
            assert r.status == 200 and await r.read() == b"ok"
            assert srv.requests[0].startswith(b"GET /health HTTP/1.1\r\nHost: ")
            assert b"content-length" not in srv.requests[0].lower()
            r = await pool.get("/metrics")  # over the same, pooled connection
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await r.read()
            assert pool.opened == 1 and not pool._idle  # the half-read one is not pooled
            await asyncio.wait_for(srv.closed_by_client.wait(), 2.0)
    run(go())
