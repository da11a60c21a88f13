"""A stub OpenAI-compatible server: real HTTP and SSE streaming, fake generation.

It answers /health, /v1/models, /v1/completions and /v1/chat/completions, streams
``max_tokens`` tokens after ``ttft_ms`` with ``tpot_ms`` between them, and rejects with 429
beyond ``max_concurrency``. Used by replay and gateway tests and benchmarks in place of an
engine when what is measured is the client or the gateway, never the model.

    python -m fineserve.testing.stub_server --port 8001 --ttft-ms 20 --tpot-ms 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web

STATE = web.AppKey("state", dict)


def make_app(models: tuple[str, ...] = ("stub",), ttft_ms: float = 0.0, tpot_ms: float = 0.0,
             max_concurrency: int = 0, metrics: bool = False) -> web.Application:
    """The stub's routes; ``metrics`` adds a vLLM-style /metrics (running, waiting, KV use)."""
    state = {"active": 0, "served": 0}
    answers: dict[tuple[str, bool, int], bytes] = {}

    def answer(model: str, chat: bool, n: int) -> bytes:
        """A whole (non-streamed) answer, encoded once per shape: the stub must stay cheap,
        since benchmarks run it on the same cores as what they measure."""
        key = (model, chat, n)
        body = answers.get(key)
        if body is None:
            text = " tok" * n
            choice = ({"message": {"role": "assistant", "content": text}} if chat
                      else {"text": text})
            body = answers[key] = json.dumps({
                "id": "stub", "object": "chat.completion" if chat else "text_completion",
                "model": model, "choices": [{"index": 0, **choice, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": n}}).encode()
        return body

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def list_models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "owned_by": "fineserve-stub"} for m in models]})

    async def generate(request: web.Request, chat: bool) -> web.StreamResponse:
        body = json.loads(await request.read())
        model = body.get("model")
        if model not in models:
            return web.json_response({"error": {"message": f"unknown model {model}"}},
                                     status=404)
        if max_concurrency and state["active"] >= max_concurrency:
            return web.json_response({"error": {"message": "busy"}}, status=429,
                                     headers={"Retry-After": "1"})
        n = int(body.get("max_tokens") or 16)
        state["active"] += 1
        try:
            if not body.get("stream"):
                delay = (ttft_ms + tpot_ms * max(0, n - 1)) / 1e3
                if delay > 0:
                    await asyncio.sleep(delay)
                return web.Response(body=answer(model, chat, n), content_type="application/json")
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            delta = {"delta": {"content": " tok"}} if chat else {"text": " tok"}
            chunk = {"id": "stub", "model": model,
                     "choices": [{"index": 0, **delta, "finish_reason": None}]}
            event = f"data: {json.dumps(chunk)}\n\n".encode()  # the same for every token
            start = time.perf_counter()
            for i in range(n):
                due = start + (ttft_ms + tpot_ms * i) / 1e3
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await resp.write(event)
            usage = {"id": "stub", "model": model, "choices": [],
                     "usage": {"prompt_tokens": 0, "completion_tokens": n}}
            await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
            await resp.write_eof()
            return resp
        finally:
            state["active"] -= 1
            state["served"] += 1

    async def vllm_metrics(_: web.Request) -> web.Response:
        running = state["active"]
        lines = [f'vllm:num_requests_running{{model_name="{m}"}} {running}.0' for m in models[:1]]
        lines += [f'vllm:num_requests_waiting{{model_name="{models[0]}"}} 0.0',
                  f'vllm:kv_cache_usage_perc{{model_name="{models[0]}"}} {min(1, running / 64)}']
        return web.Response(text="\n".join(lines) + "\n")

    async def completions(request: web.Request) -> web.StreamResponse:
        return await generate(request, chat=False)

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        return await generate(request, chat=True)

    app = web.Application()
    app[STATE] = state  # active and served counts, for tests
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", list_models)
    if metrics:
        app.router.add_get("/metrics", vllm_metrics)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--models", default="stub", help="comma-separated model names")
    ap.add_argument("--ttft-ms", type=float, default=0.0)
    ap.add_argument("--tpot-ms", type=float, default=0.0)
    ap.add_argument("--max-concurrency", type=int, default=0)
    ap.add_argument("--metrics", action="store_true", help="serve vLLM-style /metrics")
    a = ap.parse_args()
    try:  # uvloop when present: a cheaper stub leaves more CPU to what is measured
        import uvloop
        loop = uvloop.new_event_loop()
    except ImportError:
        loop = None
    web.run_app(make_app(tuple(a.models.split(",")), a.ttft_ms, a.tpot_ms, a.max_concurrency,
                         a.metrics),
                host=a.host, port=a.port, print=None, access_log=None, loop=loop)


if __name__ == "__main__":
    main()
