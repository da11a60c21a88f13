"""`fineserve replay` (issue 10) drives the gateway: streamed token-id prompts, usage counts."""

from fineserve.replay.client import ReplayConfig, replay_async
from fineserve.workload.arrivals import Poisson
from fineserve.workload.lengths import FixedLengths
from fineserve.workload.trace import ModelLoad, generate
from tests.runtime.gateway.harness import Stub, gateway, route, run, upstream


def test_replay_through_the_gateway():
    async def go():
        stub = await Stub(("engine-a", "engine-b"), ttft_ms=10, tpot_ms=2).start()
        ra = route("a", upstream("ea", stub, "engine-a"), ttft=1.0, tpot=0.1)
        rb = route("b", upstream("eb", stub, "engine-b"), ttft=1.0, tpot=0.1)
        trace = generate([ModelLoad("a", Poisson(40), FixedLengths(16, 6)),
                          ModelLoad("b", Poisson(20), FixedLengths(8, 4))], 1.0, seed=3)
        async with gateway(ra, rb) as gw:
            records, _ = await replay_async(trace, ReplayConfig(gw.url))
        await stub.stop()
        assert len(records) == len(trace) > 20
        for rec in records:
            assert rec.ok, (rec.status, rec.error)
            assert rec.tokens_received == rec.output_tokens
            assert rec.first_token_s >= rec.sent_s
    run(go())
