"""Several OS processes hammer one ledger while one is SIGKILLed: nothing leaks or overlaps."""

import multiprocessing as mp
import os
import random
import signal
import time

from fineserve.runtime.kvslab.ledger import EngineRegistration, Ledger
from fineserve.runtime.kvslab.pool import ManagerConfig, PoolManager

MIB = 1 << 20
POOL = 60 * 32 * MIB
OPS = 250


def _hammer(path, eid, slab_mib, seed, out, ready, forever, release=None):
    """Random grow/shrink/publish/tick; report what this process believes it holds."""
    rng = random.Random(seed)
    led = Ledger(path)
    led.register(EngineRegistration(eid, os.getpid(), 65536, slab_mib * MIB, 2, 40), time.time())
    mgr = PoolManager(led, ManagerConfig(tick_s=0.01, heartbeat_timeout_s=600))
    held, i = 0, 0
    while forever or i < OPS:
        i += 1
        r = rng.random()
        if r < 0.4:
            held += led.acquire(eid, rng.randint(1, 6), time.time())
        elif r < 0.7 and held:
            n = rng.randint(1, held)
            held = led.release(eid, n, time.time())
        elif r < 0.85:
            led.publish(eid, time.time(), used_tokens=0, demand_tokens=rng.randint(0, 60000))
        else:
            mgr.maybe_tick(time.time())
        snap = led.snapshot()
        snap.check_integrity()
        assert snap.engine(eid).held_slabs == held  # nobody else changed my lease
        if i == 20:
            ready.set()
    out.put((eid, held))
    release.wait(120)  # stay alive (lease held) until the parent has checked


def test_processes_conserve_leases_and_a_killed_one_is_reaped(tmp_path):
    path = str(tmp_path / "pool.json")
    Ledger.create(path, POOL)
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    victim_ready, release = ctx.Event(), ctx.Event()
    procs = [ctx.Process(target=_hammer, args=(path, f"e{i}", (32, 64, 96)[i % 3], i, out,
                                               ctx.Event(), False, release),
                         name=f"kvslab-hammer-{i}")
             for i in range(3)]
    victim = ctx.Process(target=_hammer, args=(path, "victim", 64, 99, out, victim_ready, True),
                         name="kvslab-hammer-victim")
    for p in (*procs, victim):
        p.start()
    try:
        assert victim_ready.wait(60)
        held_victim = Ledger(path).snapshot().engine("victim")
        assert held_victim is not None
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(30)
        reports = dict(out.get(timeout=120) for _ in procs)
        led = Ledger(path)
        led.reap(time.time(), 600)
        snap = led.snapshot()
        snap.check_integrity()
        assert snap.engine("victim") is None and "victim" in snap.reaped
        assert {e.engine_id: e.held_slabs for e in snap.engines} == reports  # conserved
        release.set()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0, f"{p.name} exited {p.exitcode}"
    finally:
        for p in (*procs, victim):
            if p.is_alive():
                p.kill()
                p.join()
    assert victim.exitcode == -signal.SIGKILL
    # the survivors have exited too: every lease comes back
    assert set(led.reap(time.time(), 600)) == {"e0", "e1", "e2"}
    assert led.snapshot().free_bytes == POOL
