"""Load on the GPU host: the saturation floods and the sampler that watches the engines (vLLM
/metrics) and, pooled, the pool's ledger while they run."""

from __future__ import annotations

import math
import time

from bench.e2e.deployment import drain, say, scrape
from bench.kvslab_accept_setup import Setup

FLOOD_PROMPT, FLOOD_OUTPUT = 1024, 512
FLOOD_SEQ_TOKENS = FLOOD_PROMPT + FLOOD_OUTPUT // 8  # tokens a flood sequence holds in a phase


class Sampler:
    """Every 0.25 s: each engine's running / waiting / KV usage (vLLM /metrics) and, pooled,
    the ledger (used tokens, held slabs); samples carry the current label."""

    def __init__(self, urls: dict[str, str], ledger: str | None) -> None:
        import threading

        self.urls, self.ledger, self.label = urls, ledger, ""
        self.rows: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:

        while not self._stop.wait(0.25):
            row: dict = {"t": time.monotonic(), "label": self.label, "engines": {}}
            for eid, url in self.urls.items():
                snap = scrape(url)
                if snap is not None:
                    row["engines"][eid] = {"running": snap.running, "waiting": snap.waiting,
                                           "usage": snap.kv_usage}
            if self.ledger:
                self._read_ledger(row)
            self.rows.append(row)

    def _read_ledger(self, row: dict) -> None:
        from fineserve.runtime.kvslab.ledger import Ledger

        try:
            st = Ledger(self.ledger).snapshot()
        except Exception as exc:  # noqa: BLE001 (reported, sampling goes on)
            row["ledger_error"] = str(exc)[:200]
            return
        row["pool_bytes"] = st.pool_bytes
        row["ledger"] = {e.engine_id: {"used_kv_bytes": e.used_tokens * e.bytes_per_token,
                                       "held_bytes": e.held_bytes,
                                       "target_bytes": e.target_slabs * e.slab_bytes,
                                       "demand_kv_bytes": e.demand_tokens * e.bytes_per_token}
                         for e in st.engines}

    def stop(self) -> list[dict]:
        self._stop.set()
        self._thread.join(5)
        return self.rows


async def _stream_one(session, url: str, model: str, seed: int) -> None:
    """One stream slot: a request, and when it ends the next one (another prompt), until
    cancelled. A cold engine decodes its 512 tokens in ~5.5 s (H100 s5, ~10 ms a step), so
    single requests ended inside the 6 s phase's hold window and their memory, idle, counted
    against the KV share (0.029 / 0.020 / 0 of the pool in s5's phases): a flood holds its
    sequences for the whole phase."""
    for k in range(1_000_000):
        prompt = [100 + (seed * 7919 + k * 15485863 + i * 104729) % 20000
                  for i in range(FLOOD_PROMPT)]
        body = {"model": model, "prompt": prompt, "max_tokens": FLOOD_OUTPUT,
                "ignore_eos": True, "stream": True, "temperature": 0.0}
        async with session.post(f"{url}/v1/completions", json=body) as resp:
            async for _ in resp.content.iter_any():
                pass


async def flood(targets: list[tuple[str, str, int]], hold_s: float, seed: int) -> None:
    """Hold ``n`` streaming requests open on each (url, model, n) for ``hold_s`` (a request
    that ends is followed by another), then drop them (vLLM aborts a request whose client
    disconnects)."""
    import asyncio

    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None),
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [asyncio.create_task(_stream_one(session, url, model, seed * 1000 + i))
                 for url, model, n in targets for i in range(n)]
        await asyncio.sleep(hold_s)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _phase(targets: list[tuple[str, str, int]], sampler: Sampler, hold_label: str,
                 phase_s: float, seed: int) -> None:
    """A flood of ``phase_s``; samples of its last 40 % carry ``hold_label``."""
    import asyncio

    task = asyncio.create_task(flood(targets, phase_s, seed))
    await asyncio.sleep(0.6 * phase_s)
    sampler.label = hold_label
    await task


def flood_sizes(setup: Setup, hot_name: str) -> dict[str, int]:
    """Sequences each engine gets while ``hot_name`` is flooded: the hot one past the whole
    pool (1.3x), the others a quarter of their static share."""
    per_seq = FLOOD_SEQ_TOKENS
    out = {}
    for e in setup.engines:
        kv = 1.3 * setup.kv_total if e.name == hot_name else 0.25 * setup.static_kv[e.name]
        out[e.name] = max(1, math.ceil(kv / e.bytes_per_token / per_seq))
    return out


def saturate(setup: Setup, urls: dict[str, str], sampler: Sampler, phase_s: float,
             seed: int) -> None:
    """One phase per engine: it is flooded past the whole pool, the others get a quarter of
    their static share; between phases the floods are dropped and the engines drained."""
    import asyncio


    for k, hot in enumerate(setup.engines):
        seqs = flood_sizes(setup, hot.name)
        targets = [(urls[f"{e.name}-0"], e.name, seqs[e.name]) for e in setup.engines]
        sampler.label = f"sat:{hot.name}:ramp"
        t0 = time.monotonic()
        asyncio.run(_phase(targets, sampler, f"sat:{hot.name}:hold", phase_s, seed + k))
        sampler.label = ""
        say(f"saturation {hot.name}: {time.monotonic() - t0:.1f} s")
        drain(urls, 4.0)
