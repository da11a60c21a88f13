"""Deploying on the KV pool: pool per GPU, floors and virtual maxima in whole slabs, the
engine variables, ledger files, and the plugin record vLLM's entry-point discovery finds."""

import os
import subprocess
import sys

import pytest

from fineserve.runtime.kvslab.deploy_pool import (
    create_ledgers,
    engine_pythonpath,
    engine_slab_bytes,
    ledger_path,
    plan_pools,
    remove_ledgers,
    write_plugin_dist,
)
from fineserve.runtime.kvslab.errors import FloorsExceedPool
from fineserve.runtime.kvslab.layout import GRANULE
from fineserve.runtime.kvslab.ledger import Ledger
from fineserve.runtime.kvslab.settings import PluginSettings

from ..helpers import demand, engine

GIB = 1 << 30
MIB = 1 << 20


def _plan(engines, models, total=80 * GIB, util=0.92):
    return plan_pools(engines, {m.name: m.spec for m in models},
                      lambda e: e.gpus, dict.fromkeys(range(4), total), util,
                      lambda g: f"/dev/shm/test-gpu{g}.json")


def test_slabs_follow_vllm_page_sizes():
    bf16, fp8 = demand("a"), demand("b", weights="fp8", kv="fp8")
    # Llama-3.1-8B: 64 KiB bf16 pages (32 KiB fp8) x 32 layers, one plane: 2 MiB per layer
    assert engine_slab_bytes(bf16.spec) == 32 * 64 * 1024 * 32 == 64 * MIB
    assert engine_slab_bytes(fp8.spec) == 64 * 32 * 1024 * 32 == 64 * MIB
    assert bf16.spec.page_size_bytes() == 64 * 1024


def test_pool_floors_and_virtual_maxima_are_whole_slabs():
    a, b = demand("a"), demand("b", weights="fp8", kv="fp8")
    ea, eb = engine("a-0", a, kv=4 * GIB + 1), engine("b-0", b, kv=3 * GIB)
    out = _plan([ea, eb], [a, b])
    (pool,) = out.pools
    non_kv = ea.weight_bytes + ea.overhead_bytes + eb.weight_bytes + eb.overhead_bytes
    assert pool.pool_bytes == (int(80 * GIB * 0.92) - non_kv) // GRANULE * GRANULE
    assert pool.engine_ids == ("a-0", "b-0") and pool.ledger == "/dev/shm/test-gpu0.json"
    pa = out.engine("a-0")
    assert pa.floor_slabs == 4 * GIB // (64 * MIB) + 1  # rounded up: the plan's floor holds
    assert pa.virtual_bytes % pa.slab_bytes == 0 and pa.virtual_bytes <= pool.pool_bytes
    assert pool.pool_bytes - pa.virtual_bytes < pa.slab_bytes
    assert out.engine("b-0").floor_bytes == 3 * GIB


def test_engine_variables_round_trip_through_the_plugin_settings():
    a = demand("a")
    pe = _plan([engine("a-0", a)], [a]).engine("a-0")
    env = dict(pe.env("/x"))
    s = PluginSettings.from_env(env)
    assert (s.enabled, s.ledger, s.engine_id, s.floor_bytes) == (
        True, pe.ledger, "a-0", pe.floor_bytes)
    assert env["PYTHONPATH"] == "/x"


def test_tp2_engines_stay_static_and_count_whole():
    a = demand("a")
    e2 = engine("a-tp", a, gpus=(0, 1), kv=8 * GIB)
    e1 = engine("a-1", a, gpus=(1,))
    out = _plan([e2, e1], [a])
    assert [p.gpu_index for p in out.pools] == [1] and out.engine("a-tp") is None
    assert any("TP > 1" in n and "a-tp" in n for n in out.notes)
    non_kv = e2.memory_bytes + e1.weight_bytes + e1.overhead_bytes
    assert out.pools[0].pool_bytes == (int(80 * GIB * 0.92) - non_kv) // GRANULE * GRANULE


def test_floors_that_do_not_fit_name_the_gpu():
    a = demand("a")
    with pytest.raises(FloorsExceedPool, match="GPU 0: KV floors of a-0, a-1"):
        _plan([engine("a-0", a, kv=30 * GIB), engine("a-1", a, kv=30 * GIB)], [a])


def test_ledgers_are_created_fresh_and_removed(tmp_path):
    from fineserve.runtime.kvslab.deploy_pool import GpuPool

    path = ledger_path(tmp_path / "run", 3, directory=str(tmp_path))
    assert path.startswith(str(tmp_path)) and path.endswith("-gpu3.json")
    assert ledger_path(tmp_path / "run", 3, str(tmp_path)) == path  # stable per run dir
    assert ledger_path(tmp_path / "other", 3, str(tmp_path)) != path
    Ledger.create(path, GIB)  # stale
    pools = (GpuPool(3, path, 2 * GIB, ("a-0",)),)
    create_ledgers(pools)
    assert Ledger(path).snapshot().pool_bytes == 2 * GIB
    remove_ledgers(pools)
    assert not os.path.exists(path) and not os.path.exists(path + ".lock")
    remove_ledgers(pools)  # idempotent


def test_the_plugin_record_is_a_vllm_general_plugin_on_pythonpath(tmp_path):
    write_plugin_dist(tmp_path / "kvslab-plugin")
    pp = engine_pythonpath(tmp_path, "/inherited")
    assert pp.split(os.pathsep)[0] == str(tmp_path / "kvslab-plugin")
    assert pp.split(os.pathsep)[-1] == "/inherited"
    code = ("import importlib.metadata as m; "
            "e = [x for x in m.entry_points(group='vllm.general_plugins') "
            "if x.name == 'fineserve_kvslab']; "
            "assert e and e[0].load().__name__ == 'register', e")
    subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": pp},
                   check=True)
