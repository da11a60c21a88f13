"""Local scheduler in the gateway: bounded queue -> 429, client disconnects free slots."""

import asyncio
import json

import aiohttp

from tests.runtime.gateway.harness import Stub, gateway, metrics, post, route, run, upstream

FCFS = {"policy": "fcfs", "max_queue": 4}


def test_overload_gives_429_with_retry_after_and_a_bounded_queue():
    async def go():
        # the stub answers 429 itself beyond 2 at once: the gateway must never send more
        stub = await Stub(("m",), ttft_ms=300, max_concurrency=2).start()
        r = route("m", upstream("e0", stub, max_batch=2), ttft=30.0)
        async with gateway(r, scheduler=FCFS) as gw, aiohttp.ClientSession() as s:
            peak = 0
            done = False

            async def watch():
                nonlocal peak
                while not done:
                    m = await metrics(s, gw.url)
                    peak = max(peak, m['fineserve_gateway_queue_length{model="m"}'])
                    await asyncio.sleep(0.01)

            watcher = asyncio.create_task(watch())
            res = await asyncio.gather(*(post(s, gw.url, {"model": "m", "prompt": "x",
                                                          "max_tokens": 1}) for _ in range(30)))
            done = True
            await watcher
            ok = [r for r in res if r[0] == 200]
            refused = [r for r in res if r[0] == 429]
            assert len(ok) == 6 and len(refused) == 24  # 2 running + 4 queued
            for _, headers, body in refused:
                assert int(headers["Retry-After"]) >= 1
                assert json.loads(body)["error"]["code"] == "queue_full"  # not the stub's 429
            assert 1 <= peak <= 4
            m = await metrics(s, gw.url)
            assert m['fineserve_gateway_rejected_total{model="m",reason="queue_full"}'] == 24
            assert m['fineserve_gateway_admitted_total{model="m"}'] == 6
            assert m['fineserve_gateway_queue_length{model="m"}'] == 0
            assert m['fineserve_gateway_in_flight{model="m"}'] == 0
        await stub.stop()
    run(go())


async def wait_for(cond, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not await cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def test_client_disconnect_frees_the_queue_entry_and_the_engine_slot():
    async def go():
        stub = await Stub(("m",), tpot_ms=50).start()  # 1000 tokens = 50 s
        r = route("m", upstream("e0", stub, max_batch=1), ttft=30.0)
        async with gateway(r, scheduler=FCFS) as gw, aiohttp.ClientSession() as s:
            async def gauge(name):
                return (await metrics(s, gw.url))[f'fineserve_gateway_{name}{{model="m"}}']

            long = {"model": "m", "prompt": "x", "max_tokens": 1000}
            streaming = await s.post(gw.url + "/v1/completions", json={**long, "stream": True})
            assert streaming.status == 200
            assert (await streaming.content.readuntil(b"\n\n")).startswith(b"data:")
            queued = asyncio.create_task(post(s, gw.url, long))  # limit 1: waits in the queue

            async def one_queued():
                return await gauge("queue_length") == 1
            await wait_for(one_queued)
            queued.cancel()  # the client gives up while queued

            async def queue_empty():
                return await gauge("queue_length") == 0
            await wait_for(queue_empty)
            assert await gauge("in_flight") == 1 and stub.state["active"] == 1
            streaming.close()  # the client goes away mid-stream

            async def freed():
                return await gauge("in_flight") == 0 and stub.state["active"] == 0
            await wait_for(freed)  # the engine request was cancelled too
            status, _, body = await post(s, gw.url, {"model": "m", "prompt": "x",
                                                     "max_tokens": 1})
            assert status == 200, body  # the slot is usable again
        await stub.stop()
    run(go())
