"""Routing and pass-through over real HTTP: weights, model rewriting, streaming, errors."""

import asyncio
import json

import aiohttp

from tests.runtime.gateway.harness import (
    Stub,
    gateway,
    metrics,
    post,
    route,
    run,
    sse_events,
    upstream,
)


def test_weights_split_sequential_and_concurrent_traffic():
    async def go():
        a, b = await Stub(("a-engine",)).start(), await Stub(("b-engine",)).start()
        r = route("chat", upstream("ea", a, "a-engine", weight=3),
                  upstream("eb", b, "b-engine", weight=1))
        async with gateway(r) as gw, aiohttp.ClientSession() as s:
            for _ in range(40):  # one at a time: weighted round-robin
                status, _, body = await post(s, gw.url, {"model": "chat", "prompt": "x",
                                                         "max_tokens": 2})
                assert status == 200, body
            assert (a.state["served"], b.state["served"]) == (30, 10)
            # concurrently: least in flight per weight keeps the 3:1 split too
            res = await asyncio.gather(*(post(s, gw.url, {"model": "chat", "prompt": "x",
                                                          "max_tokens": 2}) for _ in range(80)))
            assert all(st == 200 for st, _, _ in res)
            got_a = a.state["served"] - 30
            assert 50 <= got_a <= 70, got_a  # 60 expected
        await a.stop()
        await b.stop()
    run(go())


def test_non_streaming_pass_through_rewrites_the_model():
    async def go():
        stub = await Stub(("engine-name",)).start()
        r = route("public", upstream("e0", stub, "engine-name"))
        async with gateway(r) as gw, aiohttp.ClientSession() as s:
            status, headers, body = await post(s, gw.url, {"model": "public", "prompt": [1, 2],
                                                           "max_tokens": 3})
            assert status == 200 and headers["Content-Type"].startswith("application/json")
            doc = json.loads(body)
            assert doc["choices"][0]["text"] == " tok tok tok"
            assert doc["usage"]["completion_tokens"] == 3
            status, _, body = await post(s, gw.url, {
                "model": "public", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2}, path="/v1/chat/completions")
            assert status == 200
            assert json.loads(body)["choices"][0]["message"]["content"] == " tok tok"
        await stub.stop()
    run(go())


def test_streaming_pass_through_and_usage_only_when_asked():
    async def go():
        stub = await Stub(("m",), ttft_ms=5, tpot_ms=1).start()
        async with gateway(route("m", upstream("e0", stub))) as gw, \
                aiohttp.ClientSession() as s:
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 5, "stream": True}
            status, headers, raw = await post(s, gw.url, body, path="/v1/chat/completions")
            assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
            events = sse_events(raw)
            assert events[-1] == "[DONE]"
            chunks = events[:-1]
            assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == " tok" * 5
            assert not any("usage" in c for c in chunks)  # the gateway asked, the client not
            body = {"model": "m", "prompt": "x", "max_tokens": 4, "stream": True,
                    "stream_options": {"include_usage": True}}
            status, _, raw = await post(s, gw.url, body)
            events = sse_events(raw)
            assert "".join(c["choices"][0]["text"] for c in events[:-2]) == " tok" * 4
            assert events[-2]["usage"]["completion_tokens"] == 4 and events[-1] == "[DONE]"
        await stub.stop()
    run(go())


def test_openai_style_errors():
    async def go():
        stub = await Stub(("m",)).start()
        async with gateway(route("m", upstream("e0", stub)), max_body_bytes=4096) as gw, \
                aiohttp.ClientSession() as s:
            status, _, body = await post(s, gw.url, {"model": "nope", "prompt": "x"})
            err = json.loads(body)["error"]
            assert status == 404 and "`nope`" in err["message"]
            assert err["code"] == "model_not_found"
            status, _, body = await post(s, gw.url, b'{"model": "m", ')
            assert status == 400 and "not valid JSON" in json.loads(body)["error"]["message"]
            status, _, body = await post(s, gw.url, {"prompt": "x"})
            assert status == 400 and json.loads(body)["error"]["param"] == "model"
            status, _, body = await post(s, gw.url, {"model": "m", "max_tokens": "ten"})
            assert status == 400 and json.loads(body)["error"]["param"] == "max_tokens"
            status, _, body = await post(s, gw.url, {"model": "m", "prompt": "x" * 5000})
            assert status == 413 and json.loads(body)["error"]["type"]
            assert stub.state["served"] == 0  # nothing above reached the engine
        await stub.stop()
    run(go())


def test_api_keys():
    async def go():
        stub = await Stub(("m",)).start()
        async with gateway(route("m", upstream("e0", stub)), api_keys=["k-one", "k-two"]) as gw, \
                aiohttp.ClientSession() as s:
            req = {"model": "m", "prompt": "x", "max_tokens": 1}
            status, _, body = await post(s, gw.url, req)
            assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
            status, _, _ = await post(s, gw.url, req, headers={"Authorization": "Bearer k-on"})
            assert status == 401
            status, _, _ = await post(s, gw.url, req, headers={"Authorization": "Bearer k-two"})
            assert status == 200
            async with s.get(gw.url + "/v1/models") as r:
                assert r.status == 401
            async with s.get(gw.url + "/v1/models",
                             headers={"Authorization": "Bearer k-one"}) as r:
                assert [m["id"] for m in (await r.json())["data"]] == ["m"]
            async with s.get(gw.url + "/health") as r:  # health and metrics stay open
                assert r.status == 200 and (await r.json())["engines_up"] == 1
            assert (await metrics(s, gw.url))['fineserve_gateway_admitted_total{model="m"}'] == 1
        await stub.stop()
    run(go())
