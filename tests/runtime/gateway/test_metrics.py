"""/metrics after traffic: per-model latency histograms, SLO attainment, engine series."""

import json

import aiohttp

from fineserve.runtime.gateway.upstream import parse_engine_metrics
from tests.runtime.gateway.harness import Stub, gateway, metrics, post, route, run, upstream

VLLM_SAMPLE = b"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.42
vllm:prompt_tokens_total{engine="0",model_name="m"} 1234.0
vllm:num_preemptions_total{engine="0",model_name="m"} 5.0
vllm:num_preemptions_created{engine="0",model_name="m"} 1.7e9
"""


def test_parse_vllm_metrics():
    snap = parse_engine_metrics(VLLM_SAMPLE, 7.0)
    assert snap is not None
    assert (snap.at_s, snap.running, snap.waiting, snap.kv_usage) == (7.0, 3, 2, 0.42)
    assert snap.preemptions == 5  # the counter, not its _created timestamp
    assert parse_engine_metrics(b"# nothing from vLLM\nother 1\n", 0.0) is None


def test_series_after_traffic():
    async def go():
        stub = await Stub(("m",), ttft_ms=20, tpot_ms=5, metrics=True).start()
        ok = route("fast", upstream("e0", stub), ttft=1.0, tpot=0.1)
        tight = route("tight", upstream("e1", stub), ttft=0.001, tpot=0.1)
        fcfs = {"policy": "fcfs"}  # no deadline admission: the tight model is served, late
        async with gateway(ok, tight, engine_poll_interval_s=0.05, scheduler=fcfs) as gw, \
                aiohttp.ClientSession() as s:
            for _ in range(10):
                body = {"model": "fast", "prompt": "x", "max_tokens": 5, "stream": True}
                assert (await post(s, gw.url, body))[0] == 200
            for _ in range(5):
                body = {"model": "fast", "prompt": "x", "max_tokens": 5}
                assert (await post(s, gw.url, body))[0] == 200
            for _ in range(3):
                body = {"model": "tight", "prompt": "x", "max_tokens": 2, "stream": True}
                assert (await post(s, gw.url, body))[0] == 200
            m = await metrics(s, gw.url)
        await stub.stop()

        def g(name, model="fast"):
            return m[f'fineserve_gateway_{name}{{model="{model}"}}']

        assert g("ttft_seconds_count") == 10  # streamed requests only
        assert 0.015 < g("ttft_seconds_sum") / 10 < 0.5  # the stub waits 20 ms
        assert g("tpot_seconds_count") == 10
        assert 0.003 < g("tpot_seconds_sum") / 10 < 0.1  # the stub sends one every 5 ms
        assert g("e2e_seconds_count") == 15
        assert g("admitted_total") == g("finished_total") == g("slo_met_total") == 15
        assert g("slo_attainment") == 1.0
        assert g("slo_attainment", "tight") == 0.0  # 20 ms TTFT against a 1 ms SLO
        assert g("queue_length") == 0 and g("in_flight") == 0
        assert m['fineserve_gateway_engine_inflight_limit{engine="e0",model="fast"}'] >= 1
        assert m['fineserve_gateway_engine_healthy{engine="e0",model="fast"}'] == 1
    run(go())


def test_deadline_admission_rejects_what_cannot_meet_the_ttft_slo():
    async def go():
        stub = await Stub(("m",)).start()
        tight = route("tight", upstream("e0", stub), ttft=0.5, tpot=0.1)
        # 10 ms per prompt token: a 100-token prompt cannot get its first token within 0.5 s
        sched = {"policy": "deadline", "est_prefill_s_per_token": 0.01}
        async with gateway(tight, scheduler=sched) as gw, aiohttp.ClientSession() as s:
            short = await post(s, gw.url, {"model": "tight", "prompt": [7] * 10})
            status, headers, body = await post(s, gw.url, {"model": "tight",
                                                           "prompt": [7] * 100})
            m = await metrics(s, gw.url)
        await stub.stop()
        assert short[0] == 200
        assert status == 429 and int(headers["Retry-After"]) >= 1
        code = json.loads(body)["error"]["code"]
        assert code == "cannot_meet_the_ttft_slo"
        assert m[f'fineserve_gateway_rejected_total{{model="tight",reason="{code}"}}'] == 1
        assert stub.state["served"] == 1
    run(go())
