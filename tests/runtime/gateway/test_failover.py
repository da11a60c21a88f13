"""A replica that refuses connections is skipped, probed, and used again once it answers."""

import asyncio

import aiohttp

from tests.runtime.gateway.harness import Stub, gateway, metrics, post, route, run, upstream

FAST = {"health_interval_s": 0.05, "engine_poll_interval_s": 0.05}
REQ = {"model": "m", "prompt": "x", "max_tokens": 1}


def test_failover_and_recovery():
    async def go():
        a, b = await Stub(("m",)).start(), await Stub(("m",)).start()
        async with gateway(route("m", upstream("ea", a), upstream("eb", b)), **FAST) as gw, \
                aiohttp.ClientSession() as s:
            await b.stop()  # the engine dies between requests
            for _ in range(20):
                status, _, body = await post(s, gw.url, REQ)
                assert status == 200, body  # retried on the other replica, never an error
            m = await metrics(s, gw.url)
            assert m['fineserve_gateway_engine_healthy{engine="eb",model="m"}'] == 0
            assert m['fineserve_gateway_engine_healthy{engine="ea",model="m"}'] == 1
            refused = m.get('fineserve_gateway_upstream_errors_total{engine="eb",kind="refused",'
                            'model="m"}', 0)
            assert refused <= 1  # found by the watcher or by at most one request
            assert a.state["served"] == 20
            await b.start()  # restarted on the same port
            for _ in range(100):
                if (await metrics(s, gw.url))[
                        'fineserve_gateway_engine_healthy{engine="eb",model="m"}'] == 1:
                    break
                await asyncio.sleep(0.05)
            for _ in range(10):
                assert (await post(s, gw.url, REQ))[0] == 200
            assert b.state["served"] == 5  # back in the rotation without a gateway restart
        await a.stop()
        await b.stop()
    run(go())


def test_all_replicas_down_is_503_with_retry_after():
    async def go():
        a = await Stub(("m",)).start()
        async with gateway(route("m", upstream("ea", a)), **FAST) as gw, \
                aiohttp.ClientSession() as s:
            await a.stop()
            status, headers, body = await post(s, gw.url, REQ)
            assert status == 503 and b"no engine" in body and headers["Retry-After"] == "1"
            async with s.get(gw.url + "/health") as r:
                assert (await r.json())["engines_up"] == 0
            m = await metrics(s, gw.url)
            assert m['fineserve_gateway_rejected_total{model="m",reason="no_engine"}'] == 1
            assert m['fineserve_gateway_in_flight{model="m"}'] == 0
    run(go())
