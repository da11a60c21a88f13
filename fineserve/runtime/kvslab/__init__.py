"""KV Slab: one elastic KV cache pool per GPU shared by the vLLM engines on it.

Modules (docs/kv-slab.md):
  policy.py    pure: where the pool's slabs go (targets), in SLO-meeting tokens per byte
  stats.py     pure: demand statistics an engine publishes (EWMA mean and spread)
  ledger.py    cross-process pool state in /dev/shm under an fcntl lock: leases, targets, deaths
  pool.py      pool sizing and the manager tick (reap, policy, targets)
  layout.py    pure: block <-> slab <-> byte-range arithmetic for vLLM's KV tensors
  slabmap.py   pure: per-engine slab states and drain bookkeeping
  engine.py    engine side: ledger + slab map + mapper + block pool, background grow/shrink
  vmm.py       CUDA driver virtual memory (reserve once, map/unmap 2 MiB granules)
  tensorwrap.py  torch tensors over raw device ranges (hand-built DLPack capsule)
  hooks.py     pure: the vLLM 0.26.0 functions hooked and their exact parameters
  blockpool.py parking blocks in vLLM's BlockPool free queue
  plugin.py    vLLM 0.26.0 general plugin (FINESERVE_KVSLAB=1)
  deploy_pool.py  fineserve deploy on the pool: pool sizes, ledgers, engine variables
"""
