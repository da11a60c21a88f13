"""Plugin pure parts: importable without vLLM/torch/CUDA, env settings, refusals, hook checks."""

import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest

from fineserve.runtime.kvslab import plugin
from fineserve.runtime.kvslab.errors import KvSlabError, UnsupportedEngine
from fineserve.runtime.kvslab.lease import LedgerLease, LocalLease
from fineserve.runtime.kvslab.ledger import EngineRegistration, Ledger
from fineserve.runtime.kvslab.pool import ManagerConfig
from fineserve.runtime.kvslab.settings import EngineFacts, PluginSettings, check_supported

OK = EngineFacts("0.26.0", 1, 1, False, 1, "FullAttentionSpec")


def test_modules_import_without_vllm_torch_or_cuda():
    code = ("import sys; import fineserve.runtime.kvslab.plugin, fineserve.runtime.kvslab.vmm; "
            "bad = [m for m in ('vllm', 'torch', 'cuda') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_register_is_a_no_op_when_switched_off(monkeypatch):
    monkeypatch.delenv("FINESERVE_KVSLAB", raising=False)
    plugin.register()  # would import vllm (absent here) if it did anything
    assert "vllm" not in sys.modules


def test_settings_from_env():
    s = PluginSettings.from_env({"FINESERVE_KVSLAB": "1", "FINESERVE_KVSLAB_LEDGER": "/dev/shm/x",
                                 "FINESERVE_KVSLAB_ENGINE_ID": "chat-0",
                                 "FINESERVE_KVSLAB_FLOOR_BYTES": "1073741824",
                                 "FINESERVE_KVSLAB_GROW_AHEAD": "2",
                                 "FINESERVE_KVSLAB_IDLE_POLL_S": "0.1"})
    assert (s.enabled, s.ledger, s.engine_id, s.floor_bytes, s.grow_ahead_slabs,
            s.idle_poll_s) == (True, "/dev/shm/x", "chat-0", 1 << 30, 2.0, 0.1)
    assert not PluginSettings.from_env({}).enabled


@pytest.mark.parametrize("env, msg", [
    ({"FINESERVE_KVSLAB": "yes"}, "FINESERVE_KVSLAB must be 0 or 1"),
    ({"FINESERVE_KVSLAB_FLOOR_BYTES": "1G"}, "FINESERVE_KVSLAB_FLOOR_BYTES must be a number"),
    ({"FINESERVE_KVSLAB_POLL_S": "0"}, "FINESERVE_KVSLAB_POLL_S must be >="),
    ({"FINESERVE_KVSLAB_IDLE_POLL_S": "-1"}, "FINESERVE_KVSLAB_IDLE_POLL_S must be >="),
])
def test_bad_settings_name_the_variable(env, msg):
    with pytest.raises(KvSlabError, match=msg):
        PluginSettings.from_env(env)


@pytest.mark.parametrize("change, msg", [
    (dict(vllm_version="0.32.0"), "supports vLLM 0.26.0 only"),
    (dict(tensor_parallel=2), "tensor_parallel_size=1"),
    (dict(sleep_mode=True), "enable_sleep_mode"),
    (dict(kv_groups=2), "one full-attention KV group"),
    (dict(spec_kind="MLAAttentionSpec"), "MLA"),
])
def test_unsupported_configurations_are_refused_with_one_message(change, msg):
    import dataclasses
    check_supported(OK)
    with pytest.raises(UnsupportedEngine, match=msg) as exc:
        check_supported(dataclasses.replace(OK, **change))
    assert "FINESERVE_KVSLAB" in str(exc.value)


def test_hooks_check_the_private_signatures():
    class Pool:
        def free_blocks(self, ordered_blocks):
            return "orig"

        def get_usage(self, extra):
            return 0.0

    plugin._wrap(Pool, "free_blocks", ("self", "ordered_blocks"),
                 lambda orig: lambda self, blocks: ("wrapped", orig(self, blocks)))
    assert Pool().free_blocks([]) == ("wrapped", "orig")
    plugin._wrap(Pool, "free_blocks", ("self", "ordered_blocks"),  # idempotent
                 lambda orig: lambda self, blocks: "twice")
    assert Pool().free_blocks([]) == ("wrapped", "orig")
    with pytest.raises(UnsupportedEngine, match="internals changed"):
        plugin._require(Pool, "get_usage", ("self",)) and plugin._require(
            Pool, "free_blocks", ("self", "blocks"))
    with pytest.raises(UnsupportedEngine, match="is missing"):
        plugin._require(Pool, "touch", ("self",))


def test_local_lease_grows_to_the_maximum_and_never_asks_to_shrink():
    lease = LocalLease(num_slabs=5, held=1)
    assert lease.acquire(10) == 4 and lease.acquire(1) == 0
    assert lease.publish(0, 0) == 5


def test_ledger_lease_joins_with_its_floor_and_publishes_demand(tmp_path):
    led = Ledger.create(str(tmp_path / "p.json"), 10 * (64 << 20), alive=lambda pid, _: True)
    now = [0.0]
    lease = LedgerLease(led, "a", publish_s=1.0, manager=ManagerConfig(tick_s=1.0),
                        clock=lambda: now[0])
    lease.join(EngineRegistration("a", 1, 131072, 64 << 20, 2, 10), 2, wait_s=0)
    assert led.snapshot().engine("a").held_slabs == 2
    now[0] = 5.0
    assert lease.publish(used_tokens=100, demand_tokens=5 * 512) == 5  # 512 tokens per slab
    other = LedgerLease(led, "b", publish_s=1.0, manager=ManagerConfig(), clock=lambda: 5.0)
    with pytest.raises(KvSlabError, match="does not fit"):
        other.join(EngineRegistration("b", 2, 131072, 64 << 20, 9, 10), 9, wait_s=0)


def _fake_vllm(root, hooks, version="0.26.0", bind_importers=True):
    """A stand-in ``vllm`` package holding exactly the hooked functions (tests register())."""
    from collections import defaultdict

    from fineserve.runtime.kvslab.hooks import NOT_OVERRIDDEN

    files = defaultdict(list)
    classes = defaultdict(list)  # (module, class) -> method sources
    for h in hooks:
        fn = f"def {h.name}({', '.join(h.params)}):\n    return 'orig'\n"
        if h.owner:
            classes[h.module, h.owner].append(fn.replace("\n", "\n    "))
        else:
            files[h.module].append(fn)
        for importer in h.imported_by if bind_importers else ():
            files[importer].append(f"from {h.module} import {h.name}\n")
    for (module, cls), methods in classes.items():
        files[module].append(f"class {cls}:\n    " + "\n    ".join(methods))
    for module, cls, _ in NOT_OVERRIDDEN:
        files[module].append(f"from vllm.v1.core.sched.scheduler import Scheduler\n"
                             f"class {cls}(Scheduler):\n    pass\n")
    files["vllm"].append(f"__version__ = {version!r}\n")
    for module, parts in files.items():
        path = root.joinpath(*module.split("."))
        for i in range(1, len(module.split("."))):
            pkg = root.joinpath(*module.split(".")[:i])
            pkg.mkdir(parents=True, exist_ok=True)
            (pkg / "__init__.py").touch()
        target = path / "__init__.py" if module == "vllm" else path.with_suffix(".py")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("\n".join(parts))


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("FINESERVE_KVSLAB", "1")
    yield tmp_path
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]


def test_register_patches_every_hook_of_a_matching_vllm(fake_vllm):
    import importlib

    from fineserve.runtime.kvslab.hooks import HOOKS

    _fake_vllm(fake_vllm, HOOKS)
    plugin.register()
    for h in HOOKS:
        mod = importlib.import_module(h.module)
        fn = getattr(getattr(mod, h.owner) if h.owner else mod, h.name)
        assert getattr(fn, "_fineserve_kvslab", False), h.where
        for importer in h.imported_by:  # the name gpu_worker calls is the patched one
            assert getattr(importlib.import_module(importer), h.name) is fn, importer


def test_register_refuses_an_importer_bound_to_another_function(fake_vllm):
    import importlib

    from fineserve.runtime.kvslab.hooks import HOOKS, V2_WARMUP

    _fake_vllm(fake_vllm, HOOKS, bind_importers=False)
    for importer in V2_WARMUP.imported_by:
        path = fake_vllm.joinpath(*importer.split(".")).with_suffix(".py")
        path.write_text(path.read_text() + "\ndef warmup_kernels(a, b, c):\n    return 1\n")
    with pytest.raises(UnsupportedEngine, match="gpu_worker.warmup_kernels is not"):
        plugin.register()
    fn = importlib.import_module(V2_WARMUP.module).warmup_kernels
    assert not getattr(fn, "_fineserve_kvslab", False)


def test_register_refuses_a_changed_signature_before_patching_anything(fake_vllm):
    import dataclasses
    import importlib

    from fineserve.runtime.kvslab.hooks import HOOKS, V2_ALLOCATE

    old = dataclasses.replace(V2_ALLOCATE, params=("kv_cache_config", "device"))
    _fake_vllm(fake_vllm, [old if h is V2_ALLOCATE else h for h in HOOKS])
    with pytest.raises(UnsupportedEngine, match="_allocate_kv_cache.*shared_layers"):
        plugin.register()
    for h in HOOKS:
        mod = importlib.import_module(h.module)
        fn = getattr(getattr(mod, h.owner) if h.owner else mod, h.name)
        assert not getattr(fn, "_fineserve_kvslab", False), h.where


def test_register_refuses_another_vllm_version(fake_vllm):
    from fineserve.runtime.kvslab.hooks import HOOKS

    _fake_vllm(fake_vllm, HOOKS, version="0.32.0")
    with pytest.raises(UnsupportedEngine, match="supports vLLM 0.26.0 only"):
        plugin.register()


class _Cfg:
    def __init__(self, num_blocks):
        self.num_blocks = num_blocks


class _Runner:
    def __init__(self, num_blocks):
        self.kv_cache_config = _Cfg(num_blocks)


@pytest.mark.parametrize("total, online, per_slab, want", [
    (1024, 2, 32, 64), (1024, 32, 32, None), (64, 3, 32, None)])
def test_warmup_blocks_is_the_mapped_count_or_none(total, online, per_slab, want):
    assert plugin.warmup_blocks(total, online, per_slab) == want


def test_v2_warmup_sees_only_the_mapped_blocks_and_the_count_is_restored(monkeypatch):
    from fineserve.runtime.kvslab.layout import KvLayout

    lay = KvLayout(num_layers=32, page_bytes=65536, planes=1, num_blocks=10240, block_size=16)
    monkeypatch.setattr(plugin, "_STATE", plugin._State(layout=lay, online=3))
    seen = []

    def orig(runner, execute, sample):
        seen.append(runner.kv_cache_config.num_blocks)
        raise RuntimeError("warm-up failed")  # restored even so

    runner = _Runner(10240)
    with pytest.raises(RuntimeError, match="warm-up failed"):
        plugin._v2_warmup(orig)(runner, None, None)
    assert seen == [3 * lay.blocks_per_slab] and runner.kv_cache_config.num_blocks == 10240


def test_v2_warmup_is_untouched_without_a_slab_layout(monkeypatch):
    monkeypatch.setattr(plugin, "_STATE", plugin._State())
    runner = _Runner(10240)
    got = plugin._v2_warmup(lambda r, e, s: r.kv_cache_config.num_blocks)(runner, None, None)
    assert got == 10240


def test_ledger_lease_writes_when_demand_moves_a_slab_or_the_refresh_is_due(tmp_path):
    """Writing the ledger every 50 ms cost ~0.1-0.4 ms of the scheduler's GIL each time."""
    led = Ledger.create(str(tmp_path / "p.json"), 10 * (64 << 20), alive=lambda pid, _: True)
    now = [0.0]
    lease = LedgerLease(led, "a", publish_s=0.05, manager=ManagerConfig(tick_s=100.0),
                        clock=lambda: now[0])  # no tick: targets change only as written here
    lease.join(EngineRegistration("a", 1, 131072, 64 << 20, 2, 10), 2, wait_s=0)
    assert lease.refresh_s == 2.5  # a quarter of the heartbeat timeout, below tick_s
    now[0] = 1.0
    assert lease.due()
    lease.publish(used_tokens=100, demand_tokens=1000)
    assert led.snapshot().engine("a").heartbeat == 1.0
    now[0] = 1.02
    assert not lease.due()
    now[0] = 1.1
    lease.publish(used_tokens=100 + 511, demand_tokens=1000 - 511)  # less than 512 tokens
    assert led.snapshot().engine("a").heartbeat == 1.0
    now[0] = 1.2
    lease.publish(used_tokens=100, demand_tokens=1000 + 512)
    row = led.snapshot().engine("a")
    assert (row.heartbeat, row.demand_tokens) == (1.2, 1512)
    led.set_targets({"a": 7}, 1.25)  # another engine's tick
    now[0] = 1.3
    assert lease.publish(used_tokens=100, demand_tokens=1512) == 7  # re-read, not written
    assert led.snapshot().engine("a").heartbeat == 1.2
    now[0] = 1.2 + 2.5
    lease.publish(used_tokens=100, demand_tokens=1512)
    assert led.snapshot().engine("a").heartbeat == 3.7  # the refresh heartbeat


def test_local_lease_reads_its_constant_target_once():
    lease = LocalLease(num_slabs=5, held=1)
    assert lease.due()
    assert lease.publish(0, 0) == 5 and not lease.due()


class _HookEngine:
    """The engine surface the scheduler hooks and the background loop use (a fake local to
    these hook tests)."""

    def __init__(self):
        self.lock = threading.RLock()
        self.slabs = SimpleNamespace(draining=False)
        self.view = SimpleNamespace(num_free=lambda: self.free)
        self.layout = SimpleNamespace(blocks_per_slab=32)
        self.free, self.pinned = 0, set()
        self.freed, self.grows, self.rounds = [], [True], 0
        self.wake = threading.Event()
        self.round_done = threading.Event()

    def on_blocks_freed(self, ids):
        self.freed.append(ids)

    def service(self):
        pass

    def on_step_scheduled(self):
        pass

    def draining_slabs(self):
        return (1,) if self.slabs.draining else ()

    def draining_blocks(self):
        return frozenset(self.pinned)

    def grow_sync(self):
        return self.grows.pop(0) if self.grows else False

    def background_once(self):
        self.rounds += 1
        self.round_done.set()

    def busy(self):
        return False


@pytest.fixture
def hook_state(monkeypatch):
    eng, pool = _HookEngine(), SimpleNamespace(got=[])
    monkeypatch.setattr(plugin, "_STATE", plugin._State(engine=eng, pool=pool))
    return eng, pool, plugin._scheduler_makers()


def test_free_hook_does_no_per_block_work_unless_a_slab_drains(hook_state):
    from fineserve.runtime.kvslab.hooks import POOL_FREE

    eng, pool, makers = hook_state
    free = makers[POOL_FREE](lambda self, blocks: self.got.append(list(blocks)))
    blocks = [SimpleNamespace(block_id=i, ref_cnt=int(i == 2), is_null=i == 0) for i in range(4)]
    free(pool, iter(blocks))
    assert pool.got == [blocks] and eng.freed == []
    eng.slabs.draining = True
    free(pool, reversed(blocks))  # an iterator, consumed once: by vLLM's free and by us
    assert pool.got[1] == blocks[::-1] and eng.freed == [[3, 1]]  # not in use, not null


def test_allocate_hook_grows_synchronously_only_when_a_step_does_not_fit(hook_state):
    from fineserve.runtime.kvslab.hooks import ALLOCATE_SLOTS

    eng, pool, makers = hook_state
    results = [None, "blocks"]
    allocate = makers[ALLOCATE_SLOTS](lambda self, req, n: results.pop(0))
    mgr = SimpleNamespace(block_pool=pool)
    assert allocate(mgr, "req", 16) == "blocks" and eng.grows == []  # one grow, one retry
    results = ["fits"]
    eng.grows = [True]
    assert allocate(mgr, "req", 16) == "fits" and eng.grows == [True]  # fast path


def test_background_loop_sleeps_long_when_idle_and_runs_at_once_when_woken(hook_state):
    eng, _, _ = hook_state
    plugin._STATE.settings = PluginSettings(poll_s=0.001, idle_poll_s=3600.0)
    th = threading.Thread(target=plugin._background, args=(eng,), daemon=True)
    th.start()
    assert eng.round_done.wait(10)  # the first round after poll_s; then idle: an hour
    eng.round_done.clear()
    eng.wake.set()  # the scheduler saw free blocks fall below the grow-ahead mark
    assert eng.round_done.wait(10) and eng.rounds == 2
    plugin._STATE.stop.set()
    eng.wake.set()
    th.join(10)
    assert not th.is_alive() and eng.rounds == 2


def _sched(pool, policy="fcfs"):
    blocks = {"a": [1, 2], "b": [40, 41], "c": [3], "d": [42]}
    reqs = [SimpleNamespace(request_id=k) for k in "abcd"]
    mgr = SimpleNamespace(block_pool=pool, get_block_ids=lambda rid: (blocks[rid],))
    return SimpleNamespace(running=list(reqs), kv_cache_manager=mgr,
                           policy=SimpleNamespace(value=policy))


@pytest.mark.parametrize("draining, policy, on, free, order", [
    (True, "fcfs", True, 35, "acbd"),  # b and d pin the drain: FCFS preempts from the end
    (False, "fcfs", True, 0, "abcd"),  # no drain: vLLM's order
    (True, "priority", True, 0, "abcd"),  # the priority policy picks by priority
    (True, "fcfs", False, 0, "abcd"),  # FINESERVE_KVSLAB_PREEMPT_DRAINING=0
    (True, "fcfs", True, 36, "abcd"),  # a slab + a block per request free: no preemption
])
def test_schedule_puts_requests_pinning_a_drain_where_fcfs_preempts(hook_state, draining,
                                                                    policy, on, free, order):
    from fineserve.runtime.kvslab.hooks import SCHEDULE

    eng, pool, makers = hook_state
    eng.slabs.draining, eng.pinned, eng.free = draining, {40, 41, 42}, free
    plugin._STATE.settings = PluginSettings(preempt_draining_first=on)
    seen = []
    schedule = makers[SCHEDULE](lambda self: seen.append(
        "".join(r.request_id for r in self.running)) or SimpleNamespace(
        total_num_scheduled_tokens=0))
    sched = _sched(pool, policy)
    schedule(sched)
    assert seen == [order] and sorted(r.request_id for r in sched.running) == list("abcd")


def test_preempt_draining_is_a_switch():
    assert PluginSettings.from_env({}).preempt_draining_first
    assert not PluginSettings.from_env(
        {"FINESERVE_KVSLAB_PREEMPT_DRAINING": "0"}).preempt_draining_first
    with pytest.raises(KvSlabError, match="FINESERVE_KVSLAB_PREEMPT_DRAINING must be 0 or 1"):
        PluginSettings.from_env({"FINESERVE_KVSLAB_PREEMPT_DRAINING": "yes"})


def test_pinning_requests_are_found_once_per_drain_and_stay_last(hook_state):
    """The block scan runs when the set of DRAINING slabs changes; a request vLLM appends
    later (blocks from ONLINE slabs) goes before the pinning ones without a new scan."""
    from fineserve.runtime.kvslab.hooks import SCHEDULE

    eng, pool, makers = hook_state
    eng.slabs.draining, eng.pinned = True, {40, 41, 42}
    plugin._STATE.settings = PluginSettings()
    schedule = makers[SCHEDULE](lambda self: SimpleNamespace(total_num_scheduled_tokens=0))
    sched = _sched(pool)
    scans = []
    ids = sched.kv_cache_manager.get_block_ids
    sched.kv_cache_manager.get_block_ids = lambda rid: scans.append(rid) or (
        ([7],) if rid == "e" else ids(rid))
    schedule(sched)
    assert "".join(r.request_id for r in sched.running) == "acbd" and len(scans) == 4
    sched.running.append(SimpleNamespace(request_id="e"))  # admitted since: not scanned
    schedule(sched)
    assert "".join(r.request_id for r in sched.running) == "acebd"
    assert len(scans) == 4
    b = sched.running.pop()  # preempted ...
    schedule(sched)
    sched.running.append(b)  # ... and re-admitted on ONLINE blocks: no longer pinning
    schedule(sched)
    assert "".join(r.request_id for r in sched.running) == "acedb"  # d goes before the pinning b
    assert len(scans) == 4
    eng.draining_slabs = lambda: (1, 2)  # another slab drains: scanned again
    schedule(sched)
    assert len(scans) == 4 + 5
