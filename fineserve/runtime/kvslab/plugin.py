"""vLLM 0.26.0 general plugin ``fineserve_kvslab``: slab-backed, elastic KV cache.

Switched on by ``FINESERVE_KVSLAB=1`` (other variables: ``settings.py``). Loaded in every vLLM
process; with TP=1 the scheduler and the worker share the engine-core process, so one
process-global ``_State`` joins the two sides. Hooks (``hooks.py`` lists them with the exact
parameters they are checked against; docs/kv-slab.md):

worker side
  ``Worker.initialize_from_config``     remember the VllmConfig
  ``GPUModelRunner._allocate_kv_cache_tensors`` (V1 runner, 0.26's default for Llama) and
  ``attn_utils._allocate_kv_cache``     (Model Runner V2, 0.26's default for dense models):
                                        reserve one virtual range per KV tensor, map slab 0 +
                                        the floor, return int8 tensors over the ranges
                                        (vLLM's reshape/bind code unchanged)
  ``warmup.warmup_kernels``             (V2) run vLLM's warm-up over the mapped blocks only
scheduler side
  ``BlockPool.__init__``                park the blocks of unmapped slabs, start the engine
  ``BlockPool.free_blocks``             park freed blocks of draining slabs
  ``BlockPool.get_usage``               usage over mapped blocks, not the virtual maximum
  ``KVCacheManager.allocate_slots``     on ``None``: synchronous grows until it fits
  ``Scheduler.schedule`` / ``update_from_output``  service drains under the lock, count steps

Nothing here imports vLLM, torch or CUDA at module import: the module is importable (and its
pure parts testable) on a machine without them.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Any

from fineserve.runtime.kvslab.blockpool import VllmBlockPoolView
from fineserve.runtime.kvslab.engine import EngineConfig, SlabEngine
from fineserve.runtime.kvslab.errors import UnsupportedEngine
from fineserve.runtime.kvslab.hooks import (
    ALLOCATE_SLOTS,
    HOOKS,
    NOT_OVERRIDDEN,
    POOL_FREE,
    POOL_INIT,
    POOL_USAGE,
    SCHEDULE,
    UPDATE,
    V1_ALLOCATE,
    V2_ALLOCATE,
    V2_WARMUP,
    WORKER_INIT,
    Hook,
    signature_problem,
)
from fineserve.runtime.kvslab.layout import _PROBE_BLOCKS, KvLayout, planes_of
from fineserve.runtime.kvslab.settings import (
    SUPPORTED_VLLM,
    EngineFacts,
    PluginSettings,
    check_supported,
)

log = logging.getLogger("fineserve.kvslab")


@dataclass(slots=True)
class _State:
    settings: PluginSettings = field(default_factory=PluginSettings)
    vllm_config: Any = None
    layout: KvLayout | None = None
    mapper: Any = None
    lease: Any = None
    online: int = 1
    pool: Any = None  # the scheduler's BlockPool backed by slabs
    scheduler: Any = None
    pin_key: tuple[int, ...] = ()  # DRAINING slabs when ``pin_ids`` was computed
    pin_ids: frozenset[str] = frozenset()  # running requests holding blocks of those slabs
    engine: SlabEngine | None = None
    stop: threading.Event = field(default_factory=threading.Event)


_STATE = _State()


def register() -> None:
    """Entry point (group ``vllm.general_plugins``): patch vLLM if FINESERVE_KVSLAB=1.

    Every hook is resolved and its signature checked (``hooks.HOOKS``) before the first one is
    patched, so a changed vLLM is refused with one line and left untouched.
    """
    settings = PluginSettings.from_env()
    if not settings.enabled:
        return
    import vllm

    if vllm.__version__ != SUPPORTED_VLLM:
        raise UnsupportedEngine(f"KV Slab supports vLLM {SUPPORTED_VLLM} only, found "
                                f"{vllm.__version__}", hint="unset FINESERVE_KVSLAB")
    owners = {h: _resolve(h) for h in HOOKS}  # raises before anything is patched
    _check_not_overridden()
    importers = {h: _importers(h, owners[h]) for h in HOOKS}
    _STATE.settings = settings
    for hook, make in _makers().items():
        new = _wrap(owners[hook], hook.name, hook.params, make, exact=hook.exact)
        for mod in importers[hook]:
            setattr(mod, hook.name, new)


# -- signature self-test ---------------------------------------------------------------------
def _resolve(hook: Hook) -> Any:
    """The class or module that owns ``hook``, its function checked against the table."""
    import importlib

    try:
        mod = importlib.import_module(hook.module)
    except ImportError as exc:
        raise UnsupportedEngine(f"vLLM internals changed: cannot import {hook.module} "
                                f"({exc})", hint="unset FINESERVE_KVSLAB") from exc
    owner = getattr(mod, hook.owner, None) if hook.owner else mod
    if owner is None:
        raise UnsupportedEngine(f"vLLM internals changed: {hook.where} is missing",
                                hint="unset FINESERVE_KVSLAB")
    _require(owner, hook.name, hook.params, exact=hook.exact)
    return owner


def _importers(hook: Hook, owner: Any) -> list[Any]:
    """The modules of ``hook.imported_by``; each must bind the very function we patch."""
    import importlib

    out = []
    for name in hook.imported_by:
        mod = importlib.import_module(name)
        if getattr(mod, hook.name, None) is not getattr(owner, hook.name):
            raise UnsupportedEngine(f"vLLM internals changed: {name}.{hook.name} is not "
                                    f"{hook.where}", hint="unset FINESERVE_KVSLAB")
        out.append(mod)
    return out


def _check_not_overridden() -> None:
    """Subclasses vLLM instantiates must inherit the hooked base-class methods."""
    import importlib

    for module, cls, names in NOT_OVERRIDDEN:
        sub = getattr(importlib.import_module(module), cls)
        for name in names:
            if name in vars(sub):
                raise UnsupportedEngine(f"vLLM internals changed: {module}.{cls} overrides "
                                        f"{name}, which the plugin hooks on its base class",
                                        hint="unset FINESERVE_KVSLAB")


def _require(owner: Any, name: str, params: tuple[str, ...], exact: bool = False) -> Any:
    """The private function we hook must exist with the parameters we rely on."""
    fn = getattr(owner, name, None)
    where = f"{owner.__name__}.{name}"
    if fn is None:
        raise UnsupportedEngine(f"vLLM internals changed: {where} is missing",
                                hint="unset FINESERVE_KVSLAB")
    have = tuple(inspect.signature(fn).parameters)
    why = signature_problem(Hook(owner.__name__, "", name, params, exact), have)
    if why is not None:
        raise UnsupportedEngine(why, hint="unset FINESERVE_KVSLAB")
    return fn


def _wrap(owner: Any, name: str, params: tuple[str, ...], make: Any,
          exact: bool = False) -> Any:
    """Patch ``owner.name`` with ``make(orig)`` once per process; return what is installed."""
    orig = _require(owner, name, params, exact)
    if getattr(orig, "_fineserve_kvslab", False):
        return orig  # already patched in this process
    new = functools.wraps(orig)(make(orig))
    new._fineserve_kvslab = True
    setattr(owner, name, new)
    return new


def _makers() -> dict[Hook, Any]:
    """hook -> ``make(orig) -> replacement``."""
    return {WORKER_INIT: _init_from_config, V1_ALLOCATE: _v1_allocate,
            V2_ALLOCATE: _v2_allocate, V2_WARMUP: _v2_warmup, **_scheduler_makers()}


# -- worker side ------------------------------------------------------------------------------
def _init_from_config(orig: Any) -> Any:
    def f(self: Any, kv_cache_config: Any) -> Any:
        _STATE.vllm_config = self.vllm_config
        return orig(self, kv_cache_config)
    return f


def _v1_allocate(orig: Any) -> Any:
    """``GPUModelRunner._allocate_kv_cache_tensors(self, kv_cache_config)`` (V1 runner)."""
    def f(self: Any, kv_cache_config: Any) -> dict[str, Any]:
        return _allocate(kv_cache_config, self.device)
    return f


def _v2_allocate(orig: Any) -> Any:
    """``attn_utils._allocate_kv_cache(kv_cache_config, shared_layers, device)`` (V2 runner):
    ``shared_layers`` need no tensor of their own (vLLM aliases them to their target)."""
    def f(kv_cache_config: Any, shared_layers: Any, device: Any) -> dict[str, Any]:
        return _allocate(kv_cache_config, device)
    return f


def warmup_blocks(total_blocks: int, online_slabs: int, blocks_per_slab: int) -> int | None:
    """The block count V2's warm-up may see: the mapped blocks, or None if all are mapped."""
    mapped = online_slabs * blocks_per_slab
    return None if mapped >= total_blocks else mapped


def _v2_warmup(orig: Any) -> Any:
    """``warmup.warmup_kernels(model_runner, ...)`` (V2 runner).

    vLLM's warm-up hands block ids ``1 .. min(max_num_seqs, num_blocks - 1)`` straight to the
    runner, bypassing the block pool: past the floor those ids are unmapped (the first H100
    run died with an illegal address in FlashAttention-3). It sizes its batch from
    ``model_runner.kv_cache_config.num_blocks``, so it runs with that set to the mapped blocks
    (fewer warm-up requests; the kernels compiled are the same) and restored after.
    """
    def f(model_runner: Any, worker_execute_model: Any, worker_sample_tokens: Any) -> Any:
        lay, cfg = _STATE.layout, model_runner.kv_cache_config
        cap = None if lay is None else warmup_blocks(cfg.num_blocks, _STATE.online,
                                                      lay.blocks_per_slab)
        if cap is None:
            return orig(model_runner, worker_execute_model, worker_sample_tokens)
        full, cfg.num_blocks = cfg.num_blocks, cap
        log.info("KV Slab: V2 warm-up over the %d mapped blocks of %d", cap, full)
        try:
            return orig(model_runner, worker_execute_model, worker_sample_tokens)
        finally:
            cfg.num_blocks = full
    return f


def engine_facts(vcfg: Any, kv_cache_config: Any) -> EngineFacts:
    import vllm

    groups = kv_cache_config.kv_cache_groups
    return EngineFacts(
        vllm_version=vllm.__version__,
        tensor_parallel=vcfg.parallel_config.tensor_parallel_size,
        pipeline_parallel=vcfg.parallel_config.pipeline_parallel_size,
        sleep_mode=bool(getattr(vcfg.model_config, "enable_sleep_mode", False)),
        kv_groups=len(groups), spec_kind=type(groups[0].kv_cache_spec).__name__ if groups else "",
        kv_connector=getattr(vcfg, "kv_transfer_config", None) is not None,
        packed_kv=any(getattr(t, "block_stride", 0) for t in kv_cache_config.kv_cache_tensors))


def layout_of(vcfg: Any, kv_cache_config: Any, min_slab_granules: int) -> KvLayout:
    """Read the KV layout vLLM is about to allocate (one group, equal tensors)."""
    from vllm.config import get_layers_from_vllm_config, set_current_vllm_config
    from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase

    with set_current_vllm_config(vcfg):  # backends read the KV layout (NHD/HND) from it
        return _layout_of(vcfg, kv_cache_config, min_slab_granules, get_layers_from_vllm_config,
                          AttentionLayerBase)


def _layout_of(vcfg: Any, kv_cache_config: Any, min_slab_granules: int, get_layers: Any,
               layer_base: Any) -> KvLayout:
    spec = kv_cache_config.kv_cache_groups[0].kv_cache_spec
    names = list(kv_cache_config.kv_cache_groups[0].layer_names)
    layers = get_layers(vcfg, layer_base, names)
    backends = {layers[n].get_attn_backend() for n in names}
    if len(backends) != 1:
        raise UnsupportedEngine(f"KV Slab needs one attention backend for all layers, got "
                                f"{sorted(b.__name__ for b in backends)}")
    backend = backends.pop()
    dtype = vcfg.cache_config.cache_dtype
    shapes = [backend.get_kv_cache_shape(n, spec.block_size, spec.num_kv_heads, spec.head_size,
                                         cache_dtype_str=dtype) for n in _PROBE_BLOCKS]
    try:
        order = tuple(backend.get_kv_cache_stride_order())
    except (AttributeError, NotImplementedError):
        order = tuple(range(len(shapes[0])))
    page = spec.page_size_bytes  # padded pages included: blocks stay page-strided
    sizes = {t.size for t in kv_cache_config.kv_cache_tensors}
    if len(sizes) != 1 or next(iter(sizes)) % page:
        raise UnsupportedEngine(f"KV Slab needs equal KV tensors of whole pages, got {sizes}")
    return KvLayout(num_layers=len(kv_cache_config.kv_cache_tensors), page_bytes=page,
                    planes=planes_of(shapes[0], shapes[1], order),
                    num_blocks=next(iter(sizes)) // page, block_size=spec.block_size,
                    min_slab_granules=min_slab_granules)


def _allocate(kv_cache_config: Any, device: Any) -> dict[str, Any]:
    """Reserve, map slab 0 + the floor, and return vLLM's ``{layer: int8 tensor}``."""
    import torch

    from fineserve.runtime.kvslab.vmm import VmmMapper

    vcfg = _STATE.vllm_config
    if vcfg is None:
        from vllm.config import get_current_vllm_config
        vcfg = get_current_vllm_config()
    check_supported(engine_facts(vcfg, kv_cache_config))
    s = _STATE.settings
    layout = layout_of(vcfg, kv_cache_config, s.min_slab_granules)
    dev = torch.device(device)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    torch.cuda.set_device(index)
    torch.cuda.init()
    mapper = VmmMapper(layout, len(kv_cache_config.kv_cache_tensors), index)
    floor = max(1, math.ceil(s.floor_bytes / layout.slab_bytes))
    if floor > layout.num_slabs:
        raise UnsupportedEngine(f"floor of {floor} slabs exceeds the engine's virtual maximum "
                                f"of {layout.num_slabs}",
                                hint="raise --kv-cache-memory-bytes or lower the floor")
    _STATE.lease = _join_pool(layout, floor)
    for slab in range(floor):  # before warm-up and graph capture touch the cache
        mapper.map_slab(slab)
    tensors = mapper.tensors()  # DLPack: no pointer query, unlike __cuda_array_interface__
    out: dict[str, Any] = {}
    for t, kv in zip(tensors, kv_cache_config.kv_cache_tensors, strict=True):
        for name in kv.shared_by:
            out[name] = t
    _STATE.layout, _STATE.mapper, _STATE.online = layout, mapper, floor
    log.info("KV Slab: %d slabs of %d blocks (%.1f MiB), %d mapped, %d plane(s)",
             layout.num_slabs, layout.blocks_per_slab, layout.slab_bytes / 2**20, floor,
             layout.planes)
    return out


def _join_pool(layout: KvLayout, floor: int) -> Any:
    import os

    from fineserve.runtime.kvslab.lease import LedgerLease, LocalLease
    from fineserve.runtime.kvslab.ledger import EngineRegistration, Ledger
    from fineserve.runtime.kvslab.pool import ManagerConfig

    s = _STATE.settings
    if s.ledger is None:
        return LocalLease(layout.num_slabs, held=floor)
    lease = LedgerLease(Ledger(s.ledger), s.engine_id, publish_s=s.publish_s,
                        manager=ManagerConfig(tick_s=s.tick_s,
                                              heartbeat_timeout_s=s.heartbeat_timeout_s))
    lease.join(EngineRegistration(s.engine_id, os.getpid(), layout.bytes_per_token,
                                  layout.slab_bytes, floor, layout.num_slabs, s.slo_weight),
               floor, s.floor_wait_s)
    return lease


# -- scheduler side ---------------------------------------------------------------------------
def _scheduler_makers() -> dict[Hook, Any]:
    def init(orig: Any) -> Any:
        def f(self: Any, num_gpu_blocks: int, *a: Any, **k: Any) -> None:
            orig(self, num_gpu_blocks, *a, **k)
            lay = _STATE.layout
            if lay is not None and _STATE.engine is None and num_gpu_blocks == lay.num_blocks:
                _attach(self)
        return f

    def free(orig: Any) -> Any:
        def f(self: Any, ordered_blocks: Any) -> None:
            eng = _STATE.engine
            if eng is None or self is not _STATE.pool:
                return orig(self, ordered_blocks)
            with eng.lock:
                if not eng.slabs.draining:  # nothing to park: no per-block Python work
                    return orig(self, ordered_blocks)
                blocks = list(ordered_blocks)  # vLLM passes reversed(...) iterators too
                orig(self, blocks)
                eng.on_blocks_freed([b.block_id for b in blocks
                                     if b.ref_cnt == 0 and not b.is_null])
        return f

    def usage(orig: Any) -> Any:
        def f(self: Any) -> float:
            eng = _STATE.engine
            return orig(self) if eng is None or self is not _STATE.pool else eng.usage()
        return f

    def allocate(orig: Any) -> Any:
        def f(self: Any, *a: Any, **k: Any) -> Any:
            out = orig(self, *a, **k)
            if out is not None:  # called per request per step: nothing else on this path
                return out
            eng = _STATE.engine
            if eng is None or self.block_pool is not _STATE.pool:
                return out
            while out is None and eng.grow_sync():  # fallback: the lease bounds the loop
                out = orig(self, *a, **k)
            return out
        return f

    def schedule(orig: Any) -> Any:
        def f(self: Any, *a: Any, **k: Any) -> Any:
            eng = _STATE.engine
            if eng is None or self.kv_cache_manager.block_pool is not _STATE.pool:
                return orig(self, *a, **k)
            _STATE.scheduler = self
            with eng.lock:
                eng.service()
                if eng.slabs.draining and _STATE.settings.preempt_draining_first:
                    _pinning_last(self, eng)
                out = orig(self, *a, **k)
                if out.total_num_scheduled_tokens > 0:
                    eng.on_step_scheduled()
                return out
        return f

    def update(orig: Any) -> Any:
        def f(self: Any, scheduler_output: Any, model_runner_output: Any) -> Any:
            eng = _STATE.engine
            if eng is None or self.kv_cache_manager.block_pool is not _STATE.pool:
                return orig(self, scheduler_output, model_runner_output)
            with eng.lock:
                if scheduler_output.total_num_scheduled_tokens > 0:
                    eng.on_step_finished()  # its GPU work is done: the output was copied out
                return orig(self, scheduler_output, model_runner_output)
        return f

    return {POOL_INIT: init, POOL_FREE: free, POOL_USAGE: usage, ALLOCATE_SLOTS: allocate,
            SCHEDULE: schedule, UPDATE: update}


def _pinning_last(sched: Any, eng: SlabEngine) -> None:
    """Move the running requests that hold blocks of a DRAINING slab to the end of
    ``sched.running``, where vLLM's FCFS scheduler takes the request it preempts when a step
    does not fit (``self.running.pop()``).

    Why: an engine with a queue (a flooded engine at saturation) runs out of blocks every few
    steps and preempts its newest request anyway; preempting the ones that pin a drain
    instead returns the slab within a step or two, not after a request's lifetime. On the
    H100 (s5) the hot engine held 2-4 slabs above its target for whole 6 s phases (their
    requests ran ~15 s) while the cold engines' preempted requests waited for those slabs:
    2.5 % + 1.9 % of the pool idle at once. No effect unless a step needs a preemption, and
    none under the priority policy (it picks by priority).

    Host cost: the running requests' block ids are scanned once per set of DRAINING slabs
    (a set test per request, ~4 us each with vLLM's block-id lists); later steps only move
    the known ids, since vLLM appends new requests (whose blocks come from ONLINE slabs) at
    the end. Nothing while fewer than a slab plus one block per running request is free (no
    step can need a preemption soon)."""
    if getattr(getattr(sched, "policy", None), "value", None) != "fcfs":
        return
    if eng.view.num_free() >= eng.layout.blocks_per_slab + len(sched.running):
        return
    key = eng.draining_slabs()
    if key != _STATE.pin_key:
        blocks, mgr = eng.draining_blocks(), sched.kv_cache_manager
        _STATE.pin_ids = frozenset(r.request_id for r in sched.running
                                   if not blocks.isdisjoint(mgr.get_block_ids(r.request_id)[0]))
        _STATE.pin_key = key
    # a pinning request that left ``running`` (preempted: its drain blocks are parked, and
    # vLLM re-admits nobody in the step that preempted) comes back on ONLINE blocks
    pins = _STATE.pin_ids = _STATE.pin_ids & {r.request_id for r in sched.running}
    if not pins:
        return
    keep = [r for r in sched.running if r.request_id not in pins]
    if keep:
        sched.running[:] = keep + [r for r in sched.running if r.request_id in pins]


def _attach(pool: Any) -> None:
    layout, s = _STATE.layout, _STATE.settings
    assert layout is not None
    view = VllmBlockPoolView(pool)
    view.take_free(list(range(_STATE.online * layout.blocks_per_slab, layout.num_blocks)))
    eng = SlabEngine(layout, _STATE.mapper, view, _STATE.lease,
                     EngineConfig(grow_ahead_blocks=max(1, math.ceil(
                         s.grow_ahead_slabs * layout.blocks_per_slab))),
                     demand=_demand, online=_STATE.online)
    _STATE.pool, _STATE.engine = pool, eng
    threading.Thread(target=_background, args=(eng,), name="fineserve-kvslab",
                     daemon=True).start()


def _demand() -> tuple[int, int]:
    """(used tokens, tokens wanted by running + waiting requests) of this engine.

    The lists are copied under the lock (the scheduler changes them in ``schedule()``) and
    summed outside it, so the scheduler thread waits for two list copies at most."""
    eng, sched, lay = _STATE.engine, _STATE.scheduler, _STATE.layout
    if eng is None or lay is None:
        return 0, 0
    with eng.lock:
        used = eng.used_blocks() * lay.block_size  # draining slabs' running blocks included
        if sched is None:
            return used, used
        try:  # the engine core's input thread may append to `waiting` meanwhile
            reqs = list(sched.running) + list(sched.waiting)
        except RuntimeError:
            return used, used
    return used, sum(int(r.num_tokens) for r in reqs)


def _background(eng: SlabEngine) -> None:
    """Every ``poll_s`` while the engine is busy, else every ``idle_poll_s`` (heartbeats
    only) unless the scheduler wakes it: at 200 Hz with nothing to do, this thread took ~4 %
    of a core's GIL time from vLLM's scheduler (bench/kvslab_host.py)."""
    s = _STATE.settings
    failures, period = 0, s.poll_s
    while True:
        eng.wake.wait(period)
        eng.wake.clear()  # a wake after this runs the next round at once
        if _STATE.stop.is_set():
            return
        try:
            eng.background_once()
            period = s.poll_s if eng.busy() else max(s.poll_s, s.idle_poll_s)
            failures = 0
        except Exception:  # keep serving on the slabs we have; say why, not too often
            period = s.poll_s
            failures += 1
            if failures in (1, 10, 100) or failures % 1000 == 0:
                log.exception("KV Slab background step failed (%d in a row)", failures)
