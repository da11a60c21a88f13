"""The acceptance bench without a GPU: the pool ``fineserve deploy`` would size, the
saturation phases through the pool's own policy, and ``fineserve simulate``'s view of the
trace in both modes (``--dry-run`` prints all three)."""

from __future__ import annotations

from bench.kvslab_accept_load import FLOOD_SEQ_TOKENS, flood_sizes
from bench.kvslab_accept_setup import Setup, plan_for
from fineserve.planner.schema import Plan


def simulated(setup: Setup, scale: float = 1.0, interference: bool = True
              ) -> dict[str, dict]:
    """The simulator's view of both modes on the same plans and trace, co-location
    interference on, step latencies ``scale`` x the profiles' (the GPU decides): the H100 run
    of 2026-11-26 decoded 1.0-1.5x slower than the profiles (static TPOT p50 17.5 / 23 / 18 ms
    against 12 / 18 / 17), and at 1.0 the simulator called KV-bound a trace the GPU found
    compute-bound (predicted pooled 0.94, measured 0.39)."""
    from fineserve.metrics.summary import summarize
    from fineserve.profiles.composite import default_latency_model
    from fineserve.sim.cluster import SimOptions, simulate
    from fineserve.sim.interference import InterferenceParams
    from fineserve.sim.stepscale import ScaledLatency

    latency = ScaledLatency(default_latency_model([]), decode_scale=scale, prefill_scale=scale)
    out = {}
    for mode in ("static", "pooled"):
        r = simulate(plan_for(setup, mode), setup.trace, latency, options=SimOptions(
            kv="plan", interference=InterferenceParams() if interference else None))
        s = summarize(r.records, {e.name: e.slo for e in setup.engines},
                      max(r.duration_s, setup.trace.duration_s), "simulate")
        out[mode] = {"slo_attainment": round(s["overall"].get("slo_attainment", 0.0), 3),
                     "preemptions": sum(r.preemptions.values()), "latency_scale": scale,
                     "span_s": round(r.duration_s, 1),
                     "per_model": {m: round(v.get("slo_attainment", 0.0), 3)
                                   for m, v in s["per_model"].items()}}
    return out


def policy_replay(setup: Setup, pool: dict, phase_s: float, gap_s: float = 4.0,
                  params=None) -> dict[str, dict]:
    """The saturation phases through the pool's own policy, without a GPU: demand from the
    flood sizes ``saturate`` sends, EWMA statistics as the lease publishes them (every
    0.05 s), a tick every 0.5 s, held = target at once (no drain or growth lag). Per phase:
    the last tick's targets and the mean share of the pool covering demand (hold window)."""
    from fineserve.runtime.kvslab.policy import EngineKvDemand, PolicyParams, compute_targets
    from fineserve.runtime.kvslab.stats import DemandStats

    params = params or PolicyParams()
    geo = {f"{e.name}-0": (e, pool["engines"][f"{e.name}-0"]) for e in setup.engines}
    stats = {eid: DemandStats() for eid in geo}
    held = {eid: g["floor_slabs"] for eid, (_, g) in geo.items()}
    per_seq = FLOOD_SEQ_TOKENS
    prev, t, out = None, 0.0, {}

    def run(want: dict[str, int], seconds: float) -> list[float]:
        nonlocal prev, t
        covered = []
        for k in range(round(seconds / 0.05)):
            t += 0.05
            for eid in geo:
                stats[eid].update(t, want[eid])
            if k % 10 != 9:
                continue
            tps = {eid: g["slab_bytes"] / e.bytes_per_token for eid, (e, g) in geo.items()}
            demands = [EngineKvDemand(
                eid, e.bytes_per_token, g["slab_bytes"], g["floor_slabs"], g["max_slabs"],
                held[eid], int(min(want[eid], held[eid] * tps[eid])), want[eid],
                demand_mean_tokens=stats[eid].mean, demand_std_tokens=stats[eid].std)
                for eid, (e, g) in geo.items()]
            prev = compute_targets(pool["pool_bytes"], demands, prev, params)
            held.update(prev.slabs)
            covered.append(sum(min(want[eid], held[eid] * tps[eid]) * e.bytes_per_token
                               for eid, (e, _) in geo.items()) / pool["pool_bytes"])
        return covered

    run(dict.fromkeys(geo, 0), 10.0)
    for hot in setup.engines:
        seqs = flood_sizes(setup, hot.name)
        want = {f"{n}-0": k * per_seq for n, k in seqs.items()}
        cov = run(want, phase_s)
        hold = cov[int(0.6 * len(cov)):] or cov
        out[hot.name] = {"kv_share": round(sum(hold) / len(hold), 3),
                         "targets": dict(prev.slabs)}
        run(dict.fromkeys(geo, 0), gap_s)
    return out


def pool_plan(plan: Plan, gpu_bytes: int) -> dict:
    """The KV pool ``fineserve deploy`` will create on a GPU of ``gpu_bytes`` for ``plan``."""
    from fineserve.runtime.kvslab.deploy_pool import plan_pools

    pp = plan_pools(plan.engines, {m.name: m.spec for m in plan.models}, lambda e: (0,),
                    {0: gpu_bytes}, plan.instance.settings.memory_utilization,
                    lambda g: f"/dev/shm/ledger-gpu{g}")
    return {"pool_bytes": pp.pools[0].pool_bytes, "engines": {
        e.engine_id: {"slab_bytes": e.slab_bytes, "floor_slabs": e.floor_slabs,
                      "max_slabs": e.max_slabs} for e in pp.engines}}
