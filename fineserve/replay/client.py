"""Open-loop replay: every request leaves at its trace time, whatever earlier ones are doing.

One asyncio loop schedules sends (sleeping to each arrival time) and one task per request
streams the answer, stamping the first token and the last with ``time.perf_counter``. The
prompt is a list of token ids of the trace's length (vLLM and the FineServe gateway accept
them; ``prompt_mode="text"`` sends words instead), and ``ignore_eos`` plus ``min_tokens`` fix
the output length. How late each send left (lag) is recorded, so a client that cannot keep up
is visible in the report rather than silently stretching the trace.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import numpy as np

from fineserve.metrics.summary import RequestRecord
from fineserve.workload.trace import Trace


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    url: str  # base URL, e.g. http://127.0.0.1:8000
    api_key: str | None = None
    speed: float = 1.0  # >1 replays faster
    duration_s: float | None = None  # stop sending after this many (replayed) seconds
    prompt_mode: str = "tokens"  # tokens | text
    timeout_s: float = 600.0  # per request
    max_connections: int = 0  # 0 = unlimited


def _payload(model: str, prompt_tokens: int, output_tokens: int, mode: str, seed: int) -> dict:
    if mode == "text":
        prompt: object = " ".join(["hello"] * prompt_tokens)
    else:  # spread ids so no prefix cache makes requests artificially cheap
        prompt = [int(100 + (seed * 7919 + k * 104729) % 20000) for k in range(prompt_tokens)]
    return {"model": model, "prompt": prompt, "max_tokens": output_tokens,
            "min_tokens": output_tokens, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}, "temperature": 0.0}


async def _send(session: aiohttp.ClientSession, cfg: ReplayConfig, rec: RequestRecord,
                t0: float) -> None:
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    body = _payload(rec.model, rec.prompt_tokens, rec.output_tokens, cfg.prompt_mode,
                    rec.index)
    try:
        async with session.post(f"{cfg.url.rstrip('/')}/v1/completions", json=body,
                                headers=headers) as resp:
            rec.status = resp.status
            if resp.status != 200:
                rec.error = (await resp.text())[:200] or resp.reason or "error"
                rec.finished_s = time.perf_counter() - t0
                return
            usage = None
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                now = time.perf_counter() - t0
                if chunk.get("usage"):
                    usage = chunk["usage"].get("completion_tokens")
                if any(c.get("text") or (c.get("delta") or {}).get("content")
                       for c in chunk.get("choices") or []):
                    if rec.tokens_received == 0:
                        rec.first_token_s = now
                    rec.tokens_received += 1
                    rec.finished_s = now
            if usage:  # servers may pack several tokens into one chunk
                rec.tokens_received = max(rec.tokens_received, int(usage))
    except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError) as exc:
        rec.error = f"{type(exc).__name__}: {exc}"[:200]
        rec.finished_s = time.perf_counter() - t0


async def replay_async(trace: Trace, cfg: ReplayConfig,
                       progress: Callable[[int, int], None] | None = None
                       ) -> tuple[list[RequestRecord], float]:
    """Replay ``trace``; returns the records and the wall time of the run."""
    arrivals = trace.arrival_s / cfg.speed
    n = len(trace)
    if cfg.duration_s is not None:
        n = int(np.searchsorted(arrivals, cfg.duration_s / cfg.speed))
    records = [RequestRecord(i, str(trace.model[i]), float(arrivals[i]), 0.0,
                             int(trace.prompt_tokens[i]), int(trace.output_tokens[i]))
               for i in range(n)]
    connector = aiohttp.TCPConnector(limit=cfg.max_connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks: set[asyncio.Task] = set()
        done = 0

        def finished(task: asyncio.Task) -> None:
            nonlocal done
            tasks.discard(task)
            done += 1

        t0 = time.perf_counter()
        for rec in records:
            delay = rec.scheduled_s - (time.perf_counter() - t0)
            if delay > 0.0005:
                await asyncio.sleep(delay)
            rec.sent_s = time.perf_counter() - t0
            task = asyncio.create_task(_send(session, cfg, rec, t0))
            tasks.add(task)
            task.add_done_callback(finished)
            if progress is not None and rec.index % 64 == 0:
                progress(rec.index + 1, done)
        while tasks:
            await asyncio.sleep(0.05)
            if progress is not None:
                progress(n, done)
        wall = time.perf_counter() - t0
    return records, wall


def replay(trace: Trace, cfg: ReplayConfig, progress=None) -> tuple[list[RequestRecord], float]:
    return asyncio.run(replay_async(trace, cfg, progress))
