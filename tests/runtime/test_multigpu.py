"""Multi-GPU deployments: a TP=2 engine sharing both GPUs with TP=1 engines under MPS.

What is checked (no GPU: fake NVML, fake MPS control binary): one daemon per GPU group (the
GPUs a TP engine links share one daemon, since its rank processes inherit one pipe directory),
client device numbers relative to that daemon, TP flags, multicast off, the fault domain, and
KV Slab's static fallback for TP > 1 engines.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fineserve.runtime.engine_args import NO_MULTICAST
from fineserve.runtime.errors import DeployError
from fineserve.runtime.mps import MpsBinaries, MpsController, gpu_groups, make_group
from fineserve.runtime.prepare import prepare
from fineserve.runtime.state import Mode
from fineserve.runtime.supervisor import restart_scope

from .helpers import demand, engine, options, plan
from .test_nvml import FakeNvml

GIB = 2**30
EXCLUSIVE = 3  # FakeNvml's NVML_COMPUTEMODE_EXCLUSIVE_PROCESS


def _flag(argv, name):
    return argv[argv.index(name) + 1]


def _tp2_plan(gpus: int = 2, tp_gpus: tuple[int, int] = (0, 1),
              small_gpus: tuple[int, int] = (0, 1)):
    """big-0: Qwen2.5-32B TP=2 at 40 % SM; chat-0 / chat-1: Llama-3.1-8B TP=1 at 30 %."""
    big, chat = demand("big", ref="qwen2.5-32b"), demand("chat")
    return plan([big, chat], [engine("big-0", big, tp_gpus, sm=40, kv=6 * GIB),
                              engine("chat-0", chat, (small_gpus[0],), sm=30),
                              engine("chat-1", chat, (small_gpus[1],), sm=30)], gpus=gpus)


def _prepare(tmp_path, p, mode=Mode.MPS, gpus=2, port=9600, compute_mode=EXCLUSIVE, **kw):
    kw.setdefault("kv_pool", False)
    return prepare(p, options(tmp_path, mode, port=port, engine_port_base=port + 1, **kw),
                   nvml=FakeNvml([(compute_mode, 80 * GIB)] * gpus))


@pytest.fixture(autouse=True)
def _mps_binaries(monkeypatch):
    monkeypatch.setattr("fineserve.runtime.prepare.find_binaries", lambda: "BIN")


def test_tp2_engine_and_its_neighbours_share_one_daemon_with_relative_devices(tmp_path):
    prep = _prepare(tmp_path, _tp2_plan())
    assert [(g.name, g.gpus, g.uuids) for g in prep.mps_groups] == [
        ("gpu0-1", (0, 1), ("GPU-0000", "GPU-0001"))]
    assert prep.mps_group_of == {"big-0": "gpu0-1", "chat-0": "gpu0-1", "chat-1": "gpu0-1"}
    env = {x.engine_id: dict(x.env) for x in prep.launches}
    pipe = str(prep.mps_groups[0].pipe_dir)
    assert {e["CUDA_MPS_PIPE_DIRECTORY"] for e in env.values()} == {pipe}
    # positions in the daemon's device list: chat-1 runs on the group's second GPU
    assert env["big-0"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert env["chat-0"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert env["chat-1"]["CUDA_VISIBLE_DEVICES"] == "1"
    assert env["big-0"]["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "40"
    assert env["chat-1"]["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "30"


def test_tp2_command_line_and_multicast_off(tmp_path):
    prep = _prepare(tmp_path, _tp2_plan())
    big = next(x for x in prep.launches if x.engine_id == "big-0")
    assert _flag(big.argv, "--tensor-parallel-size") == "2"
    assert big.gpus == (0, 1)
    # per-rank sizes: vLLM's --kv-cache-memory-bytes is per GPU, like the plan's kv_bytes
    assert _flag(big.argv, "--kv-cache-memory-bytes") == str(6 * GIB)
    share = float(_flag(big.argv, "--gpu-memory-utilization"))
    assert share == pytest.approx(round(1.02 * big_memory() / (80 * GIB), 4))
    full = big.full_env({"CUDA_DEVICE_MAX_CONNECTIONS": "8", "NCCL_NVLS_ENABLE": "1",
                         "CUDA_MPS_PIPE_DIRECTORY": "/tmp/nvidia-mps", "PATH": "/bin"})
    for key, value in NO_MULTICAST:
        assert full[key] == value
    assert full["NCCL_NVLS_ENABLE"] == "0"
    assert full["CUDA_DEVICE_MAX_CONNECTIONS"] == "8"  # inherited, never set by us
    assert "CUDA_DEVICE_MAX_CONNECTIONS" not in dict(big.env)
    assert full["CUDA_MPS_PIPE_DIRECTORY"] == str(prep.mps_groups[0].pipe_dir)


def big_memory() -> int:
    """Planned bytes of big-0 on each of its GPUs."""
    return next(e.memory_bytes for e in _tp2_plan().engines if e.engine_id == "big-0")


def test_without_mps_tp2_uses_host_indices_and_restarts_alone(tmp_path):
    prep = _prepare(tmp_path, _tp2_plan(), mode=Mode.NO_MPS, port=9620, compute_mode=0)
    env = {x.engine_id: dict(x.env) for x in prep.launches}
    assert env["big-0"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert env["chat-1"]["CUDA_VISIBLE_DEVICES"] == "1"
    assert env["big-0"]["NCCL_NVLS_ENABLE"] == "0"
    assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE" not in env["big-0"]
    assert prep.mps_groups == ()
    assert restart_scope("big-0", prep.mps_group_of, Mode.NO_MPS) == ["big-0"]


def test_cpu_mode_sets_no_nccl_variables(tmp_path):
    prep = _prepare(tmp_path, _tp2_plan(), mode=Mode.CPU, port=9640)
    assert all("NCCL_NVLS_ENABLE" not in dict(x.env) for x in prep.launches)


def test_fault_domain_is_the_whole_group(tmp_path):
    prep = _prepare(tmp_path, _tp2_plan(), port=9660)
    assert restart_scope("chat-1", prep.mps_group_of, Mode.MPS) == ["big-0", "chat-0",
                                                                    "chat-1"]


def test_four_gpus_tp_group_on_2_3_and_a_lone_gpu0(tmp_path):
    p = _tp2_plan(gpus=4, tp_gpus=(2, 3), small_gpus=(0, 3))
    prep = _prepare(tmp_path, p, gpus=4, port=9680)
    assert [(g.name, g.uuids) for g in prep.mps_groups] == [
        ("gpu0", ("GPU-0000",)), ("gpu2-3", ("GPU-0002", "GPU-0003"))]
    env = {x.engine_id: dict(x.env) for x in prep.launches}
    assert env["big-0"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert env["chat-1"]["CUDA_VISIBLE_DEVICES"] == "1"  # GPU 3 = second of gpu2-3
    assert env["chat-0"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert env["chat-0"]["CUDA_MPS_PIPE_DIRECTORY"].endswith("mps/gpu0")
    assert env["chat-1"]["CUDA_MPS_PIPE_DIRECTORY"].endswith("mps/gpu2-3")
    assert restart_scope("chat-0", prep.mps_group_of, Mode.MPS) == ["chat-0"]


def test_client_devices_refuses_a_gpu_outside_the_group(tmp_path):
    g = make_group((2, 3), ("GPU-2", "GPU-3"), tmp_path)
    assert g.client_devices((3, 2)) == (1, 0)
    with pytest.raises(DeployError, match="MPS group gpu2-3 does not hold GPU 1"):
        g.client_devices((1, 2))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=3, unique=True),
                min_size=1, max_size=8))
def test_every_engine_gets_one_daemon_and_its_own_gpus(engines):
    """Each GPU belongs to exactly one group; an engine's GPUs lie in one group; its client
    device numbers point back at exactly its host GPUs through that daemon's device list."""
    groups = gpu_groups(tuple(e) for e in engines)
    used = [g for comp in groups for g in comp]
    assert sorted(used) == sorted({g for e in engines for g in e})  # a partition
    root = Path("/r")
    made = [make_group(c, tuple(f"GPU-{i}" for i in c), root) for c in groups]
    for e in engines:
        mine = [m for m in made if set(e) <= set(m.gpus)]
        assert len(mine) == 1
        devices = mine[0].client_devices(tuple(e))
        assert tuple(mine[0].uuids[d] for d in devices) == tuple(f"GPU-{i}" for i in e)


def test_group_daemon_sees_both_uuids(tmp_path):
    calls = []

    def fake(argv, input=None, env=None, **_):
        calls.append((argv, env))
        pipe = Path(env["CUDA_MPS_PIPE_DIRECTORY"])
        if argv[1:] == ["-d"]:
            (pipe / "control").touch()
        return subprocess.CompletedProcess(argv, 0 if (pipe / "control").exists() else 1,
                                           "", "")

    ctl = MpsController(MpsBinaries(Path("/nv/c"), Path("/nv/s")), run=fake)
    g = make_group((0, 1), ("GPU-a", "GPU-b"), tmp_path)
    assert ctl.start(g) is True
    env = next(e for a, e in calls if a[1:] == ["-d"])
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-a,GPU-b"
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == str(tmp_path / "mps" / "gpu0-1")


def test_kv_pool_keeps_tp2_engines_static_and_says_so(tmp_path):
    prep = _prepare(tmp_path, _tp2_plan(), port=9700, kv_pool=True)
    env = {x.engine_id: dict(x.env) for x in prep.launches}
    assert not any(k.startswith("FINESERVE_KVSLAB") for k in env["big-0"])
    big = next(x for x in prep.launches if x.engine_id == "big-0")
    assert _flag(big.argv, "--kv-cache-memory-bytes") == str(6 * GIB)  # the plan's static KV
    assert env["chat-0"]["FINESERVE_KVSLAB"] == "1" and env["chat-1"]["FINESERVE_KVSLAB"] == "1"
    assert [p.engine_ids for p in prep.kv_pools] == [("chat-0",), ("chat-1",)]
    assert any("TP > 1 engines keep a static KV cache: big-0" in n for n in prep.notes)
    # the TP engine's whole footprint comes off each of its GPUs' pools
    assert all(p.pool_bytes < int(80 * GIB * 0.92) - big_memory() for p in prep.kv_pools)


def test_dry_run_needs_no_gpu_binaries_or_free_ports(tmp_path, monkeypatch):
    def no_nvml(_=None):
        raise AssertionError("a dry run must not probe NVML")

    def no_binaries():
        raise AssertionError("a dry run must not look for MPS binaries")

    monkeypatch.setattr("fineserve.runtime.prepare.probe_gpus", no_nvml)
    monkeypatch.setattr("fineserve.runtime.prepare.find_binaries", no_binaries)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        prep = prepare(_tp2_plan(), options(tmp_path, Mode.MPS, port=port,
                                            engine_port_base=port + 1, kv_pool=False),
                       dry_run=True)
    assert prep.mps_binaries is None
    assert [g.uuids for g in prep.mps_groups] == [("GPU-planned-0", "GPU-planned-1")]
    env = {x.engine_id: dict(x.env) for x in prep.launches}
    assert env["big-0"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert env["chat-1"]["CUDA_VISIBLE_DEVICES"] == "1"


def test_dry_run_still_checks_memory_against_the_gpu_type(tmp_path):
    big = demand("big", ref="qwen2.5-32b")
    p = plan([big], [engine("big-0", big, (0,), kv=60 * GIB)])  # 65 GB of weights on one GPU
    with pytest.raises(DeployError, match="GPU 0 has .* GiB free"):
        prepare(p, options(tmp_path, Mode.MPS, port=9720, engine_port_base=9721),
                dry_run=True)


def test_inherited_kv_slab_switches_never_reach_a_tp2_engine(tmp_path):
    prep = _prepare(tmp_path, _tp2_plan(), port=9740, kv_pool=True)
    inherited = {"FINESERVE_KVSLAB": "1", "FINESERVE_KVSLAB_LEDGER": "/dev/shm/other",
                 "PATH": "/bin"}
    envs = {x.engine_id: x.full_env(inherited) for x in prep.launches}
    assert not any(k.startswith("FINESERVE_KVSLAB") for k in envs["big-0"])
    assert envs["big-0"]["PATH"] == "/bin"
    pools = {p.gpu_index: p.ledger for p in prep.kv_pools}
    assert envs["chat-1"]["FINESERVE_KVSLAB_LEDGER"] == pools[1]  # its own pool, not inherited
