"""Run the gateway until SIGTERM / SIGINT, then drain: stop accepting, finish, exit.

``fineserve deploy`` starts ``python -m fineserve.runtime.gateway CONFIG`` as a child and
waits for the line ``gateway ready on http://HOST:PORT`` on its stdout.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable

from aiohttp import web

from fineserve.runtime.gateway.app import Gateway
from fineserve.runtime.gateway.config import GatewayConfig

log = logging.getLogger("fineserve.gateway")


class Running:
    """A started gateway: its HTTP runner, bound port and state."""

    def __init__(self, gateway: Gateway, runner: web.AppRunner, site: web.TCPSite,
                 port: int) -> None:
        self.gateway = gateway
        self.runner = runner
        self.site = site
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.gateway.config.host}:{self.port}"

    async def shutdown(self) -> bool:
        """Stop listening, drain in-flight requests, close everything; False if cut short."""
        await self.site.stop()
        drained = await self.gateway.drain(self.gateway.config.drain_timeout_s)
        if not drained:
            log.warning("drain timeout: %d requests cut off", self.gateway.active)
        await self.runner.cleanup()
        await self.gateway.stop()
        return drained


async def start(config: GatewayConfig) -> Running:
    """Start serving on the running loop (the caller owns the loop)."""
    gateway = Gateway(config)
    await gateway.start()
    # handler_cancellation: a client that disconnects cancels its handler, which closes the
    # engine request and frees the scheduler slot at once
    runner = web.AppRunner(gateway.app(), access_log=None, handler_cancellation=True,
                           shutdown_timeout=1.0)
    try:
        await runner.setup()
        site = web.TCPSite(runner, config.host, config.port, backlog=1024)
        await site.start()
    except BaseException:
        await runner.cleanup()
        await gateway.stop()
        raise
    server = site._server  # aiohttp exposes the bound port only here (port 0 = any)
    sockets = getattr(server, "sockets", None) or ()
    port = sockets[0].getsockname()[1] if sockets else config.port
    return Running(gateway, runner, site, port)


async def serve_async(config: GatewayConfig, on_ready: Callable[[str], None] | None = None
                      ) -> bool:
    """Serve until SIGTERM or SIGINT; True when every in-flight request was drained."""
    running = await start(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if on_ready is not None:
            on_ready(running.url)
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        drained = await running.shutdown()
    return drained


def _announce(url: str) -> None:
    print(f"gateway ready on {url}", flush=True)


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # optional: the stdlib loop works, slower
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve(config: GatewayConfig) -> bool:
    """Blocking: serve ``config`` until SIGTERM / SIGINT, then drain (see ``serve_async``)."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(serve_async(config, _announce))


def main(argv: list[str] | None = None) -> int:
    from fineserve.errors import FineserveError
    from fineserve.runtime.gateway.config import load_config

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m fineserve.runtime.gateway CONFIG.json|CONFIG.yaml",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = load_config(args[0])
        serve(config)
    except FineserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # e.g. the port is taken
        print(f"error: gateway cannot start: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0
