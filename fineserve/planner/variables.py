"""Scaled ILP data and the decision-variable container (notation of docs/planner.md).

CP-SAT needs integer coefficients, so quantities are scaled once, conservatively: traffic and
capacity in milli-requests/s (capacity rounded down, rates up), memory in KiB (rounded up),
headroom in thousandths. PuLP solves the very same integers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from fineserve.planner.builder import Builder
from fineserve.planner.options import EngineOption, TpGroup, tp_groups, usable_bytes
from fineserve.planner.schema import GpuSlot, Instance, KVMode

MILLI = 1000  # traffic and capacity unit: 1/1000 request per second
KIB = 1024  # memory unit
H_SCALE = 1000  # headroom unit: 1/1000 (bounds)
U_SCALE = 10**6  # utilisation unit: 1/1e6; headroom = U_SCALE / U

OptKey = tuple[str, int]  # (model name m, option index i)
VarKey = tuple[str, int, int]  # (m, i, k): option i of model m on TP group k of its size


@dataclass(frozen=True)
class IlpData:
    """The instance in the ILP's integer units. Symbols as in docs/planner.md."""

    inst: Instance
    models: tuple[str, ...]  # M
    options: dict[str, tuple[EngineOption, ...]]  # O_m
    groups: dict[int, tuple[TpGroup, ...]]  # U_t: TP groups of size t
    gpus: tuple[GpuSlot, ...]  # G
    lam: dict[str, int]  # lambda_m, milli-rps (rounded up)
    mu: dict[OptKey, int]  # mu_o, milli-rps (rounded down)
    w: dict[OptKey, int]  # w_o, fixed KiB per rank (weights + overhead [+ static KV])
    kappa: dict[OptKey, int]  # kappa_o, pooled KV KiB per milli-rps per rank (rounded up)
    sm: dict[OptKey, int]  # s_o, SM share in percent
    mem_cap: dict[int, int]  # M_g, usable KiB
    cost: dict[int, int]  # c_g, cost in units of the cheapest GPU, x 1000
    cost_unit: float  # user cost of the cheapest GPU: c_g / 1000 x this = user cost
    sm_cap: int  # S: percent, 100 x oversubscription
    h_min: int  # H_min x 1000
    h_cap: int  # headroom upper bound x 1000
    u_min: int  # U_min = U_SCALE / headroom cap: utilisation below it counts as it

    @property
    def pooled(self) -> bool:
        return self.inst.settings.kv_mode is KVMode.POOLED

    def groups_for(self, o: EngineOption) -> tuple[tuple[int, TpGroup], ...]:
        return tuple(
            (k, u) for k, u in enumerate(self.groups[o.tp]) if u.gpu_type == o.gpu_type
        )


def scale(inst: Instance, options: dict[str, tuple[EngineOption, ...]]) -> IlpData:
    st = inst.settings
    kv = st.kv_mode
    lam = {m.name: math.ceil(m.rate_rps * MILLI) for m in inst.models}
    mu, w, kappa, sm = {}, {}, {}, {}
    for m, opts in options.items():
        for i, o in enumerate(opts):
            mu[m, i] = math.floor(o.capacity_rps * MILLI)
            w[m, i] = math.ceil(o.fixed_bytes(kv) / KIB)
            per_milli = o.kv_bytes_per_rps * (1 + st.pool_burst_margin) / MILLI / KIB
            kappa[m, i] = math.ceil(per_milli) if kv is KVMode.POOLED else 0
            sm[m, i] = o.sm_pct
    tps = sorted({o.tp for opts in options.values() for o in opts})
    gpus = inst.cluster.gpus
    return IlpData(
        inst=inst,
        models=tuple(m.name for m in inst.models),
        options=options,
        groups={t: tp_groups(inst.cluster, t) for t in tps},
        gpus=gpus,
        lam=lam, mu=mu, w=w, kappa=kappa, sm=sm,
        mem_cap={g.gpu_id: usable_bytes(g.spec, st.memory_utilization) // KIB for g in gpus},
        # in units of the cheapest GPU (x1000): tiny absolute prices cannot round to zero
        cost={g.gpu_id: round(g.cost / min(x.cost for x in gpus) * 1000) for g in gpus},
        cost_unit=min(x.cost for x in gpus),
        sm_cap=math.floor(100 * st.sm_oversubscription + 1e-9),
        h_min=math.ceil(st.min_headroom * H_SCALE),
        h_cap=math.ceil(st.headroom_cap * H_SCALE),
        u_min=math.floor(U_SCALE / st.headroom_cap),
    )


def min_headroom(d: IlpData, caps: dict[str, int], models: list[str] | None = None) -> int:
    """Capacity-based H in thousandths for capacities ``caps`` (milli-rps per model): the
    smallest 1000 x capacity / rate over ``models`` (default all), at most the cap. An upper
    bound on the routed headroom: the aggregate's bound for relax-and-pack."""
    names = d.models if models is None else models
    return min([d.h_cap] + [H_SCALE * caps[m] // d.lam[m] for m in names])


def utilisation(d: IlpData, flows: dict[VarKey, int]) -> int:
    """U for integer flows (milli-rps per engine): the busiest engine's routed rate over its
    capacity, in millionths, rounded up, at least ``u_min``."""
    busiest = [-(-U_SCALE * f // d.mu[m, i]) for (m, i, _), f in flows.items() if f > 0]
    return max([d.u_min, *busiest])


def u_for_headroom(h_thousandths: float) -> int:
    """The smallest U compatible with a headroom bound (thousandths): a bound on U."""
    if h_thousandths <= 0:
        return U_SCALE
    return math.ceil(U_SCALE * H_SCALE / h_thousandths - 1e-9)


def headroom_of_u(u: float) -> float:
    """Headroom (a plain number) for U in millionths."""
    return U_SCALE / u if u > 0 else math.inf


@dataclass
class PlacementVars:
    """x[m,i,k] place option i of model m on group k; f[m,i,k] its traffic; y[g] GPU g used;
    p[m] placed traffic of m; U the busiest engine's utilisation (1 / minimum headroom)."""

    x: dict[VarKey, Any] = field(default_factory=dict)
    f: dict[VarKey, Any] = field(default_factory=dict)
    y: dict[int, Any] = field(default_factory=dict)
    p: dict[str, Any] = field(default_factory=dict)
    U: Any = None
    on_gpu: dict[int, list[VarKey]] = field(default_factory=dict)  # keys whose group holds g
    of_model: dict[str, list[VarKey]] = field(default_factory=dict)  # keys of model m

    @classmethod
    def create(cls, b: Builder, d: IlpData) -> PlacementVars:
        v = cls(on_gpu={g.gpu_id: [] for g in d.gpus}, of_model={m: [] for m in d.models})
        for m in d.models:
            for i, o in enumerate(d.options[m]):
                for k, u in d.groups_for(o):
                    v.x[m, i, k] = b.bool_var(f"x[{o.label},g{'+'.join(map(str, u.gpus))}]")
                    v.f[m, i, k] = b.flow_var(min(d.mu[m, i], d.lam[m]), f"f[{m},{i},{k}]")
                    v.of_model[m].append((m, i, k))
                    for g in u.gpus:
                        v.on_gpu[g].append((m, i, k))
            v.p[m] = b.int_var(0, d.lam[m], f"p[{m}]")
        for g in d.gpus:
            v.y[g.gpu_id] = b.bool_var(f"y[gpu{g.gpu_id}]")
        v.U = b.int_var(d.u_min, U_SCALE, "U")
        return v

    def group_of(self, d: IlpData, key: VarKey) -> TpGroup:
        m, i, k = key
        return d.groups[d.options[m][i].tp][k]
