"""Terminal tables for plans and plan comparisons (rich)."""

from __future__ import annotations

from rich.table import Table

from fineserve.planner.schema import Plan

GIB = 2**30


def gpu_table(plan: Plan) -> Table:
    t = Table(title=f"Placement ({plan.kv_mode.value} KV) - {len(plan.gpus_used)} of "
                    f"{plan.cluster.num_gpus} GPUs", title_justify="left")
    for col in ("GPU", "engine", "tp", "SM %", "max batch", "weights GiB", "KV GiB",
                "req/s / capacity"):
        if col in ("GPU", "engine"):
            t.add_column(col, overflow="fold")
        else:
            t.add_column(col, justify="right")
    for g in plan.cluster.gpus:
        on = plan.engines_on(g.gpu_id)
        if not on:
            continue
        for k, e in enumerate(on):
            mark = "*" if e.estimated else ""
            t.add_row(
                f"{g.node}/gpu{g.local_index}" if k == 0 else "", e.engine_id + mark,
                str(e.tp), str(e.sm_pct), str(e.max_batch), f"{e.weight_bytes / GIB:.1f}",
                f"{e.kv_bytes / GIB:.1f}", f"{e.rate_rps:.2f} / {e.capacity_rps:.2f}",
            )
        mem = sum(x.memory_bytes for x in on) / GIB
        t.add_row("", "[dim]total[/dim]", "", f"[dim]{sum(x.sm_pct for x in on)}[/dim]", "",
                  "", f"[dim]{mem:.1f} GiB in all[/dim]", "", end_section=True)
    return t


def model_table(plan: Plan) -> Table:
    t = Table(title="Models", title_justify="left")
    for col in ("model", "precision", "SLO TTFT/TPOT ms", "rate", "capacity", "headroom",
                "engines", "latency"):
        left = col in ("model", "precision", "latency")
        t.add_column(col, justify="left" if left else "right",
                     overflow="fold" if left else "ellipsis")
    unplaced = {u.model: u for u in plan.unplaced}
    for m in plan.models:
        engines = plan.engines_of(m.name)
        source = "estimated" if any(e.estimated for e in engines) else "measured"
        head = plan.headroom_of(m.name)
        style = "red" if m.name in unplaced else ("yellow" if head < 1.2 else "")
        t.add_row(
            m.name, m.spec.precision.name,
            f"{m.slo.ttft_s * 1e3:.0f} / {m.slo.tpot_s * 1e3:.0f}", f"{m.rate_rps:.2f}",
            f"{plan.capacity_of(m.name):.2f}", f"[{style}]{head:.2f}x[/{style}]" if style
            else f"{head:.2f}x", str(len(engines)), source if engines else "-",
        )
    return t


def summary_line(plan: Plan) -> str:
    r = plan.report
    gap = (", gap unknown" if r.stages else "") if r.gap != r.gap else f", gap {r.gap:.2%}"
    stages = ", ".join(f"{s.name}={s.objective:g} ({s.status.lower()})" for s in r.stages)
    text = (f"{r.method}: {r.status.lower()}{gap} in {r.seconds:.2f} s; {len(plan.gpus_used)} "
            f"GPUs, cost {plan.cost:g}, min headroom {plan.min_headroom:.2f}x")
    if stages:
        text += f" [{stages}]"
    if r.note:
        text += f"\n{r.note}"
    return text


def compare_table(plans: list[Plan]) -> Table:
    t = Table(title="Plan comparison", title_justify="left")
    for col in ("method", "status", "GPUs", "cost", "min headroom", "unplaced req/s",
                "solve s", "gap"):
        t.add_column(col, justify="left" if col in ("method", "status") else "right")
    for p in plans:
        gap = p.report.gap
        t.add_row(p.report.method, p.report.status.lower(), str(len(p.gpus_used)),
                  f"{p.cost:g}", f"{p.min_headroom:.2f}x",
                  f"{sum(u.rate_rps for u in p.unplaced):.2f}", f"{p.report.seconds:.2f}",
                  "-" if gap != gap or not p.report.stages else f"{gap:.2%}")
    return t
