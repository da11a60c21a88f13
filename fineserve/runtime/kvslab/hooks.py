"""The vLLM 0.26.0 internals the plugin relies on, as data (pure: no vLLM import).

One table serves two checkers: ``plugin.register`` verifies every entry against the imported
vLLM before patching anything (``inspect``), and ``tests/runtime/kvslab/test_vllm_source.py``
verifies it against the vLLM 0.26.0 source tree without a GPU (``ast``). A mismatch is one
``UnsupportedEngine`` line naming the function, never a half-patched engine.

Read from vLLM 0.26.0 (paths relative to the ``vllm`` package):
- ``v1/worker/gpu_worker.py``: ``Worker.initialize_from_config(self, kv_cache_config)``.
- ``v1/worker/gpu_model_runner.py``: the V1 runner (MoE models, or
  ``VLLM_USE_V2_MODEL_RUNNER=0``) allocates in
  ``GPUModelRunner._allocate_kv_cache_tensors(self, kv_cache_config)``.
- ``v1/worker/gpu/attn_utils.py``: Model Runner V2 - 0.26's default for every dense
  generative model, Llama included (``VllmConfig._is_default_v2_model_runner_model``: the
  listed architectures *or* ``not is_moe``) - allocates in the module function
  ``_allocate_kv_cache(kv_cache_config, shared_layers, device)``, looked up at call time by
  ``init_kv_cache``; it must return every ``shared_by`` layer (``shared_layers`` are the
  KV-sharing layers, aliased later).
- ``v1/worker/gpu/warmup.py``: ``warmup_kernels(model_runner, worker_execute_model,
  worker_sample_tokens)``, called by ``Worker.compile_or_warm_up_model`` through the name
  ``gpu_worker`` imported, runs real steps on block ids ``1 ..`` up to
  ``kv_cache_config.num_blocks`` (the virtual maximum) without asking the scheduler: on
  unmapped slabs that is an illegal memory access (the first H100 run with V2 died so).
- ``v1/core/block_pool.py``, ``v1/core/kv_cache_utils.py``: ``BlockPool`` (``blocks``,
  ``free_block_queue``, ``null_block``, ``_maybe_evict_cached_block``), the doubly linked
  ``FreeKVCacheBlockQueue`` (``remove``, ``append_n``, ``num_free_blocks``) and
  ``KVCacheBlock`` (``block_id``, ``ref_cnt``, ``prev_free_block``, ``is_null``).
- ``v1/core/kv_cache_manager.py``: ``KVCacheManager.allocate_slots(self, request, ...)``
  returns ``None`` when the free blocks are short.
- ``v1/core/sched/scheduler.py``: ``Scheduler.schedule(self, throttle_prefills=False)`` and
  ``update_from_output(self, scheduler_output, model_runner_output)``;
  ``AsyncScheduler`` (the default) overrides neither.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Hook:
    """A vLLM function the plugin wraps, with the parameters it relies on."""

    module: str  # dotted module path
    owner: str  # class name; "" for a module-level function
    name: str
    params: tuple[str, ...]
    exact: bool = False  # all parameters, not just a prefix (the wrapper names them all)
    imported_by: tuple[str, ...] = ()  # modules that bind the function by name: patched too

    @property
    def where(self) -> str:
        return f"{self.module}.{self.owner + '.' if self.owner else ''}{self.name}"


WORKER_INIT = Hook("vllm.v1.worker.gpu_worker", "Worker", "initialize_from_config",
                   ("self", "kv_cache_config"), exact=True)
V1_ALLOCATE = Hook("vllm.v1.worker.gpu_model_runner", "GPUModelRunner",
                   "_allocate_kv_cache_tensors", ("self", "kv_cache_config"), exact=True)
V2_ALLOCATE = Hook("vllm.v1.worker.gpu.attn_utils", "", "_allocate_kv_cache",
                   ("kv_cache_config", "shared_layers", "device"), exact=True)
V2_WARMUP = Hook("vllm.v1.worker.gpu.warmup", "", "warmup_kernels",
                 ("model_runner", "worker_execute_model", "worker_sample_tokens"), exact=True,
                 imported_by=("vllm.v1.worker.gpu_worker",))
POOL_INIT = Hook("vllm.v1.core.block_pool", "BlockPool", "__init__",
                 ("self", "num_gpu_blocks", "enable_caching", "hash_block_size"))
POOL_FREE = Hook("vllm.v1.core.block_pool", "BlockPool", "free_blocks",
                 ("self", "ordered_blocks"), exact=True)
POOL_USAGE = Hook("vllm.v1.core.block_pool", "BlockPool", "get_usage", ("self",), exact=True)
ALLOCATE_SLOTS = Hook("vllm.v1.core.kv_cache_manager", "KVCacheManager", "allocate_slots",
                      ("self", "request", "num_new_tokens"))
SCHEDULE = Hook("vllm.v1.core.sched.scheduler", "Scheduler", "schedule", ("self",))
UPDATE = Hook("vllm.v1.core.sched.scheduler", "Scheduler", "update_from_output",
              ("self", "scheduler_output", "model_runner_output"), exact=True)

HOOKS = (WORKER_INIT, V1_ALLOCATE, V2_ALLOCATE, V2_WARMUP, POOL_INIT, POOL_FREE, POOL_USAGE,
         ALLOCATE_SLOTS, SCHEDULE, UPDATE)

# (module, class, attributes) the plugin reads or calls besides the hooks
ATTRIBUTES = (
    ("vllm.v1.core.block_pool", "BlockPool",
     ("blocks", "free_block_queue", "null_block", "_maybe_evict_cached_block")),
    ("vllm.v1.core.kv_cache_utils", "FreeKVCacheBlockQueue",
     ("remove", "append_n", "num_free_blocks")),
    ("vllm.v1.core.kv_cache_utils", "KVCacheBlock",
     ("block_id", "ref_cnt", "prev_free_block", "next_free_block", "is_null")),
    ("vllm.v1.core.sched.scheduler", "Scheduler", ("running", "waiting", "policy",
                                                   "kv_cache_manager")),
    ("vllm.v1.core.kv_cache_manager", "KVCacheManager", ("get_block_ids",)),
    ("vllm.v1.request", "Request", ("request_id", "num_tokens")),
    ("vllm.v1.core.sched.output", "SchedulerOutput", ("total_num_scheduled_tokens",)),
    ("vllm.v1.kv_cache_interface", "KVCacheTensor",
     ("size", "shared_by", "offset", "block_stride")),
)

# subclasses that must not override a hooked method (the hook sits on the base class)
NOT_OVERRIDDEN = (("vllm.v1.core.sched.async_scheduler", "AsyncScheduler",
                   ("schedule", "update_from_output")),)


def signature_problem(hook: Hook, have: tuple[str, ...]) -> str | None:
    """None if ``have`` (the function's parameter names) fits ``hook``, else why not."""
    ok = have == hook.params if hook.exact else have[: len(hook.params)] == hook.params
    if ok:
        return None
    return (f"vLLM internals changed: {hook.where}{have}, expected "
            f"{'exactly ' if hook.exact else ''}parameters {hook.params}")
