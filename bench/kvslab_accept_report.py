"""What the acceptance bench reports: saturation summaries from the samples, the pool's
per-phase breakdown, memory errors in the engine logs, the verdict, the markdown table and
the result files."""

from __future__ import annotations

import json
from pathlib import Path

from bench.kvslab_accept_setup import Setup
from bench.kvslab_accept_trace import MIB, SLAB

MEMORY_ERRORS = ("out of memory", "OutOfMemoryError", "CUDA error", "illegal memory access",
                 "MapError", "KvSlabError", "KV Slab background step failed")
TRACEBACK = "Traceback (most recent call last)"  # counted, not a criterion (shutdown noise)


def saturation_summary(rows: list[dict], setup: Setup, pooled: bool) -> dict:
    """Per phase (hold window) and over phases: running summed, KV share of the memory."""
    phases = {}
    model_of = {f"{e.name}-0": e.name for e in setup.engines}
    for e in setup.engines:
        hold = [r for r in rows if r["label"] == f"sat:{e.name}:hold" and r["engines"]]
        if not hold:
            phases[e.name] = {"samples": 0}
            continue
        running = [sum(v["running"] for v in r["engines"].values()) for r in hold]
        waiting = [r["engines"].get(f"{e.name}-0", {}).get("waiting", 0) for r in hold]
        if pooled:
            share = [sum(x["used_kv_bytes"] for x in r.get("ledger", {}).values())
                     / max(1, r.get("pool_bytes", setup.kv_total)) for r in hold]
        else:
            share = [sum(v["usage"] * setup.static_kv[model_of[eid]]
                         for eid, v in r["engines"].items()) / setup.kv_total for r in hold]
        phases[e.name] = {"samples": len(hold), "running_sum": sum(running) / len(hold),
                          "kv_share": sum(share) / len(hold),
                          "hot_waiting": sum(waiting) / len(hold)}
        if pooled:  # where the rest of the pool was: held but empty, or not held at all
            phases[e.name]["pool"] = pool_breakdown(hold, setup)
    done = [p for p in phases.values() if p.get("samples")]
    out = {"phases": phases}
    if done:
        out["running_sum"] = sum(p["running_sum"] for p in done) / len(done)
        out["kv_share"] = sum(p["kv_share"] for p in done) / len(done)
    return out


def pool_breakdown(rows: list[dict], setup: Setup) -> dict:
    """Mean share of the pool per engine over ``rows``: used, held, target, wanted now; and
    the pool nobody held. Held - used is memory an engine has mapped but fills with no token
    (slab rounding, the slab mapped ahead, drains in progress)."""
    keys = ("used_kv_bytes", "held_bytes", "target_bytes", "demand_kv_bytes")
    out: dict = {}
    rows = [r for r in rows if r.get("ledger")]
    if not rows:
        return out
    for r in rows:
        pool = max(1, r.get("pool_bytes", setup.kv_total))
        for eid, v in r["ledger"].items():
            d = out.setdefault(eid, dict.fromkeys(keys, 0.0))
            for k in keys:
                d[k] += v.get(k, 0) / pool / len(rows)
    free = sum(1 - sum(v.get("held_bytes", 0) for v in r["ledger"].values())
               / max(1, r.get("pool_bytes", setup.kv_total)) for r in rows) / len(rows)
    return {"engines": {eid: {k.replace("_kv", "").replace("_bytes", ""): round(x, 4)
                              for k, x in d.items()} for eid, d in out.items()},
            "not_held": round(free, 4)}


SLACK_CAUSES = ("not_held", "ended", "draining", "admission_hole", "growth_room")


def slack_by_cause(samples: list[dict], hot: str, slab_bytes: int = SLAB) -> dict:
    """Where a phase's pool was not holding KV (pooled hold samples, means as pool shares;
    they sum to 1 - KV share). Per sample and engine, ``held - used`` goes to the first cause
    that applies:

    * ``ended``: the engine's flood ended inside the window (running fell below half the
      window's most, nothing waiting): memory of finished requests not yet moved;
    * ``draining``: held above target (a drain the engine's running requests pin);
    * ``admission_hole``: the engine has a queue: its free blocks are fewer than the next
      (or a preempted) request needs to enter;
    * ``growth_room``: no queue: room its running requests grow into, and grow-ahead.

    ``not_held`` is the pool no engine held (growth not yet asked for, e.g. a hot engine
    still prefilling its flood). The ledger's used tokens lag by up to a slab's tokens or
    the lease's refresh (0.5 s); that lag lands in the causes above."""
    rows = [r for r in samples if r.get("label") == f"sat:{hot}:hold" and r.get("ledger")]
    out = dict.fromkeys(SLACK_CAUSES, 0.0)
    if not rows:
        return {"samples": 0, **out}
    peak = {eid: max(r["engines"].get(eid, {}).get("running", 0) for r in rows)
            for eid in rows[0]["ledger"]}
    for r in rows:
        pool = max(1, r.get("pool_bytes", 0) or 96 * slab_bytes)
        out["not_held"] += 1 - sum(v["held_bytes"] for v in r["ledger"].values()) / pool
        for eid, v in r["ledger"].items():
            vl = r["engines"].get(eid, {"running": 0, "waiting": 0})
            slack = max(0, v["held_bytes"] - v["used_kv_bytes"]) / pool
            above = max(0, v["held_bytes"] - v["target_bytes"]) / pool
            if vl["waiting"] == 0 and 2 * vl["running"] < peak[eid]:
                out["ended"] += slack
                continue
            d = min(slack, above)
            out["draining"] += d
            out["admission_hole" if vl["waiting"] > 0 else "growth_room"] += slack - d
    return {"samples": len(rows), **{k: round(x / len(rows), 4) for k, x in out.items()}}


def compact_rows(rows: list[dict], t0: float) -> list[dict]:
    """The sampler's rows for the results file: time from the mode's start, rounded."""
    out = []
    for r in rows:
        c = {"t": round(r["t"] - t0, 2), "label": r["label"],
             "engines": {k: {"running": v["running"], "waiting": v["waiting"],
                             "usage": round(v["usage"], 4)} for k, v in r["engines"].items()}}
        if "ledger" in r:
            c["ledger"] = {k: {f: int(x) for f, x in v.items()} for k, v in r["ledger"].items()}
        if "pool_bytes" in r:  # the share's denominator: without it a saved file's report
            c["pool_bytes"] = int(r["pool_bytes"])  # fell back to a 96-slab pool
        out.append(c)
    return out


def scan_logs(run_dir: Path) -> dict:
    """Memory errors in the engines' logs (counts, first lines) and tracebacks (counted)."""
    out = {}
    for path in sorted((run_dir / "logs").glob("engine-*.log")):
        lines = path.read_text(errors="replace").splitlines()
        hits = [ln.rstrip()[:300] for ln in lines if any(p in ln for p in MEMORY_ERRORS)]
        out[path.stem] = {"errors": len(hits), "first": hits[:5],
                          "tracebacks": sum(TRACEBACK in ln for ln in lines)}
    return out


def verdict(modes: dict) -> dict:
    st, po = modes.get("static", {}), modes.get("pooled", {})
    if "saturation" not in st or "saturation" not in po:
        return {"ok": False, "why": "a mode failed"}
    s_att = st["trace"]["overall"].get("slo_attainment", 0.0)
    p_att = po["trace"]["overall"].get("slo_attainment", 0.0)
    ratio_seq = po["saturation"].get("running_sum", 0) / max(
        1e-9, st["saturation"].get("running_sum", 0))
    v = {"kv_share": po["saturation"].get("kv_share", 0.0),
         "kv_share_ok": po["saturation"].get("kv_share", 0.0) >= 0.95,
         "seq_ratio": ratio_seq, "seq_ratio_ok": ratio_seq >= 1.5,
         "static_attainment": s_att, "static_premise_ok": s_att <= 0.60,
         "pooled_attainment": p_att, "attainment_ratio": p_att / max(1e-9, s_att),
         "pooled_lost": po["trace"]["lost"], "pooled_memory_errors": po["memory_errors"],
         "pool_bytes": po.get("pool_bytes"), "static_bytes": st.get("kv_bytes")}
    v["same_memory"] = (v["pool_bytes"] is not None and v["static_bytes"] is not None
                        and 0 <= v["pool_bytes"] - v["static_bytes"] <= 2 * MIB)
    v["attainment_ok"] = v["attainment_ratio"] >= 1.5
    v["ok"] = all((v["same_memory"], v["kv_share_ok"], v["seq_ratio_ok"], v["static_premise_ok"],
                   v["attainment_ok"], v["pooled_lost"] == 0, v["pooled_memory_errors"] == 0))
    return v


def _criteria(v: dict) -> list[str]:
    yes = {True: "yes", False: "**no**"}
    clean = v["pooled_lost"] == 0 and v["pooled_memory_errors"] == 0
    return ["", "| criterion | value | met |", "| --- | ---: | --- |",
            f"| pool memory holding KV at saturation >= 95 % | {v['kv_share']:.3f} | "
            f"{yes[v['kv_share_ok']]} |",
            f"| sequences held pooled / static >= 1.5 | {v['seq_ratio']:.2f} | "
            f"{yes[v['seq_ratio_ok']]} |",
            f"| static SLO attainment <= 60 % (premise) | {v['static_attainment']:.3f} | "
            f"{yes[v['static_premise_ok']]} |",
            f"| pooled / static attainment >= 1.5 | {v['attainment_ratio']:.2f} | "
            f"{yes[v['attainment_ok']]} |",
            f"| pooled: requests lost / memory errors = 0 | {v['pooled_lost']} / "
            f"{v['pooled_memory_errors']} | {yes[clean]} |"]


def markdown(res: dict) -> str:
    c, v = res["config"], res.get("verdict", {})
    lines = ["# KV Slab acceptance on one H100 (`bench/kvslab_accept.py`)", "",
             f"Device: {res['device']}. Runner: {c['runner']}. KV memory {c['kv_gib']} GiB; "
             f"static split `{c['split']}` {c['static_kv_gib']} GiB (scores "
             f"{c['split_scores']}); pooled floors {c['floors_gib']} GiB. Trace "
             f"`{c.get('trace', '?')}` {c.get('duration_s', 0):.0f} s, "
             f"{c.get('requests', 0)} requests, prompt / output mean "
             f"{c.get('prompt_mean', '?')} / {c.get('output_mean', '?')} tokens, Gamma cv "
             f"{c['cv']}, hot x{c['hot_factor']}; CUDA graphs "
             f"{'off' if c['enforce_eager'] else 'on'}; wall {res.get('wall_s', 0):.0f} s.", "",
             "| mode | start-up s | running at saturation | KV share | SLO att. | lost | "
             "memory errors |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for mode, m in res["modes"].items():
        if "saturation" not in m:
            lines.append(f"| {mode} | failed: {m.get('error', '?')} | | | | | |")
            continue
        sat, tr = m["saturation"], m["trace"]
        lines.append(f"| {mode} | {m['startup_s']:.0f} | {sat.get('running_sum', 0):.1f} | "
                     f"{sat.get('kv_share', 0):.3f} | "
                     f"{tr['overall'].get('slo_attainment', 0):.3f} | {tr['lost']} | "
                     f"{m['memory_errors']} |")
    if v.get("kv_share") is not None and "why" not in v:
        lines += _criteria(v)
    return "\n".join(lines) + "\n"


def write_results(res: dict, out: Path) -> None:
    """kvslab_accept.json, .md and -logs.txt (the error lines found in the engine logs)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "kvslab_accept.json").write_text(json.dumps(res, indent=1, default=str))
    (out / "kvslab_accept.md").write_text(markdown(res))
    with (out / "kvslab_accept-logs.txt").open("w") as f:
        for mode, m in res["modes"].items():
            for name, hit in m.get("logs", {}).items():
                f.write(f"== {mode} {name}: {hit['errors']} error line(s)\n")
                f.writelines(ln + "\n" for ln in hit["first"])


def explain(res: dict) -> str:
    """Where each saturation phase's pool went (pooled): per engine the mean share of the
    pool used / held / targeted / wanted, the pool nobody held, and the hold window's samples
    as 'used/held/target' slabs per engine - the reclaim lag and the slabs held but empty."""
    po = res.get("modes", {}).get("pooled", {})
    phases = po.get("saturation", {}).get("phases", {})
    slab = SLAB
    lines = []
    for hot, ph in phases.items():
        lines.append(f"== {hot} hot: KV share {ph.get('kv_share', 0):.3f}, running "
                     f"{ph.get('running_sum', 0):.1f}, not held "
                     f"{ph.get('pool', {}).get('not_held', 0):.3f}")
        for eid, d in ph.get("pool", {}).get("engines", {}).items():
            lines.append(f"   {eid:20s} " + " ".join(f"{k} {v:.3f}" for k, v in d.items()))
        sl = slack_by_cause(po.get("samples", []), hot, slab)
        lines.append("   slack by cause: " + " ".join(f"{k} {sl[k]:.3f}" for k in SLACK_CAUSES))
        for r in po.get("samples", []):
            if r["label"] == f"sat:{hot}:hold" and r.get("ledger"):
                lines.append(f"   t={r['t']:7.2f} " + "  ".join(
                    f"{eid.split('-0')[0]} {v['used_kv_bytes'] / slab:.1f}/"
                    f"{v['held_bytes'] // slab}/{v['target_bytes'] // slab}"
                    for eid, v in r["ledger"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    _res = json.loads(Path(sys.argv[1]).read_text())
    print(markdown(_res))
    print(explain(_res))
