"""Is (b)'s fp8 engine simulated too slowly because its simulated batch is larger than measured
(feedback) or because its step is too long at the same batch, and which part of the step?

For one or more (results dir, config, rate) under one calibration, for the chat-8b-fp8 engine:

* simulated: every step (duration, decoding batch, mean context, prefill tokens), split into
  parts by ``results-r6/postrun/decompose.py``'s ``parts`` (profile decode, x common, x model,
  per-sequence term, prefill chunk, remainder = HBM / KV-growth debt); and every completed
  request's TPOT beside the mean running batch (decoding + prefilling) over its decode life;
* measured: every completed request's TPOT (``*-requests.tgz``) beside the mean of the 1 s
  ``engine_series`` running samples over its decode life, plus KV usage and preemptions.

Per-request TPOT vs running is the same quantity on both sides, so its slope (ms per running
sequence, least squares over requests) and its level at the same batch compare the step
curves directly; the mean running batch compares the load each side sees.

    PYTHONPATH=. python bench/e2e/results-r7/postrun/fp8step.py CAL.json DIR:CFG:RATE ...
        [--bins] [--engine chat-8b-fp8-0]
"""
from __future__ import annotations

import bisect
import csv
import importlib.util
import io
import statistics
import sys
import tarfile
from pathlib import Path

import numpy as np

import bench.e2e.predict as P
from bench.e2e.results import Calibration, ResultsDir
from fineserve.profiles.composite import default_latency_model
from fineserve.sim.engine import EngineSim

_spec = importlib.util.spec_from_file_location(
    "decompose", Path(__file__).resolve().parents[2] / "results-r6/postrun/decompose.py")
D = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(D)

STEPS: list[tuple] = []  # (engine, start, dur, decoding, ctx, tokens, prefilling, waiting, kv)
DONE: list[tuple] = []  # (engine name, first_token_s, finished_s, output tokens)
_start0, _finish0 = EngineSim.start_step, EngineSim.finish_step


def _start(self: EngineSim, now: float) -> float:
    end = _start0(self, now)
    tokens = sum(t for _, t in self._pending)
    STEPS.append((self, now, end - now, self.decoding, self.ctx_sum / max(self.decoding, 1),
                  tokens, len(self.prefilling), len(self.waiting),
                  self.kv_used / max(self.kv_tokens, 1.0)))
    return end


def _finish(self: EngineSim, now: float) -> list:
    done = _finish0(self, now)
    DONE.extend((self.name, r.first_token_s, r.finished_s, r.output_tokens) for r in done)
    return done


def fit(x: list[float], y: list[float]) -> tuple[float, float]:
    """Least squares y = a + k x; (a, k)."""
    k, a = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    return float(a), float(k)


def life_mean(ts: list[float], vs: list[float], t0: float, t1: float) -> float:
    """Mean of a piecewise-constant series (value vs[i] from ts[i]) over [t0, t1]."""
    i = max(0, bisect.bisect_right(ts, t0) - 1)
    acc, t = 0.0, t0
    while t < t1:
        nxt = ts[i + 1] if i + 1 < len(ts) else t1
        seg = min(nxt, t1) - t
        acc += vs[i] * max(seg, 0.0)
        t = min(nxt, t1)
        i += 1
        if i >= len(ts):
            acc += vs[-1] * max(t1 - t, 0.0)
            break
    return acc / max(t1 - t0, 1e-9)


def measured_requests(res: ResultsDir, cfg: str, rate: float, model: str) -> list[dict]:
    tgz = res.root / f"{cfg}-requests.tgz"
    if not tgz.exists():
        return []
    name = f"{cfg}/r{rate:.2f}/requests.csv"
    with tarfile.open(tgz) as t:
        try:
            f = t.extractfile(name)
        except KeyError:
            return []
        rows = list(csv.DictReader(io.TextIOWrapper(f)))
    return [r for r in rows if r["model"] == model]


def one(cal: Path, spec: str, engine: str, bins: bool) -> dict:
    d, cfg, rate = spec.split(":")
    res, rate = ResultsDir(Path(d)), float(rate)
    c = Calibration.load(cal)
    STEPS.clear()
    DONE.clear()
    EngineSim.start_step, EngineSim.finish_step = _start, _finish
    try:
        p = P.predict_one(res, cfg, rate, default_latency_model(), decode_scale=c.decode_scale,
                          decode_s_per_seq=c.decode_s_per_seq, calibration=cal, write=False)
    finally:
        EngineSim.start_step, EngineSim.finish_step = _start0, _finish0
    m = res.measured(cfg, rate)
    model = engine.rsplit("-", 1)[0]
    st = [s for s in STEPS if s[0].name == engine]
    e = st[0][0]
    out: dict = {"run": f"{res.root.name} ({cfg}) x{rate:g}", "sm": e.sm_pct}
    # -- simulated step parts, token-weighted, and their slopes vs the decoding batch
    keys = ("model", "x_common", "x_model", "per_seq", "prefill", "hbm")
    acc = {k: 0.0 for k in keys}
    tok = 0
    xs, ys, pre_tok = [], [], 0.0
    per = {k: [] for k in keys}
    for _, _, dur, b, ctx, tokens, _, _, _ in st:
        if not b:
            continue
        q = D.parts(e, b, ctx, tokens)
        q["hbm"] = dur - sum(q.values())
        for k in keys:
            acc[k] += b * q[k]
            per[k].append(q[k])
        tok += b
        xs.append(b)
        ys.append(dur)
        pre_tok += b * tokens
    out["sim_parts"] = {k: acc[k] / tok * 1e3 for k in keys}
    out["sim_step"] = sum(out["sim_parts"].values())
    out["sim_batch_tokwt"] = sum(b * b for b in xs) / tok
    out["sim_ctx_tokwt"] = sum(s[3] * s[4] for s in st) / tok
    out["sim_prefill_tok"] = pre_tok / tok
    # slope of each part vs the decoding batch (ms per sequence), over steps
    out["sim_part_slope"] = {k: fit(xs, per[k])[1] * 1e3 for k in keys}
    # per-second series: running (decoding + prefilling), waiting, KV use
    ts = [s[1] for s in st]
    run = [s[3] + s[6] for s in st]
    sec = np.arange(1.0, max(ts), 1.0)
    idx = [max(0, bisect.bisect_right(ts, t) - 1) for t in sec]
    out["sim_running"] = statistics.fmean(run[i] for i in idx)
    out["sim_waiting"] = statistics.fmean(st[i][7] for i in idx)
    out["sim_kv"] = statistics.fmean(st[i][8] for i in idx)
    out["sim_preempt"] = e.preemptions
    out["sim_cancelled"] = e.cancelled
    pm = p["summary"]["per_model"][model]
    out["sim_tpot"] = pm["tpot_s"]["p50"] * 1e3
    out["sim_errors"] = pm.get("errors", 0)
    # simulated per request: TPOT vs mean running over its decode life
    sreq = []
    for name, f0, f1, n in DONE:
        if name == engine and n > 1 and f1 > f0:
            sreq.append((life_mean(ts, run, f0, f1), (f1 - f0) / (n - 1) * 1e3))
    a, k = fit([r[0] for r in sreq], [r[1] for r in sreq])
    out["sim_req_fit"] = (a, k)
    out["sim_req"] = sreq
    # -- measured
    rows = m.engine_series.get(engine) or []
    mts = [r[0] for r in rows]
    mrun = [r[1] for r in rows]
    out["meas_running"] = statistics.fmean(mrun) if rows else float("nan")
    out["meas_waiting"] = statistics.fmean(r[2] for r in rows) if rows else float("nan")
    out["meas_kv"] = statistics.fmean(r[3] for r in rows) if rows else float("nan")
    out["meas_preempt"] = (rows[-1][4] - rows[0][4]) if rows else float("nan")
    g = m.summary["per_model"][model]
    out["meas_tpot"] = g["tpot_s"]["p50"] * 1e3
    out["meas_errors"] = g.get("errors", 0)
    mreq = []
    if rows:
        for r in measured_requests(res, cfg, rate, model):
            if r["ok"] != "True" or not r["tpot_s"]:
                continue
            f0, f1, n = float(r["first_token_s"]), float(r["finished_s"]), int(r["output_tokens"])
            if n > 1 and f1 > f0:
                mreq.append((life_mean(mts, mrun, f0, f1), float(r["tpot_s"]) * 1e3))
    out["meas_req"] = mreq
    out["meas_req_fit"] = fit([r[0] for r in mreq], [r[1] for r in mreq]) if len(mreq) > 2 \
        else (float("nan"), float("nan"))
    return out


def binned(reqs: list[tuple[float, float]], edges: list[float]) -> list[str]:
    cells = []
    for lo, hi in zip(edges, edges[1:], strict=False):
        v = [t for b, t in reqs if lo <= b < hi]
        cells.append(f"{statistics.median(v):.0f} ({len(v)})" if len(v) >= 5 else "-")
    return cells


def main() -> None:
    argv = sys.argv[1:]
    bins = "--bins" in argv
    engine = "chat-8b-fp8-0"
    if "--engine" in argv:
        engine = argv[argv.index("--engine") + 1]
        argv.remove(engine)
    args = [a for a in argv if not a.startswith("--")]
    cal, specs = Path(args[0]), args[1:]
    print(f"calibration {cal}, engine {engine}\n")
    print("| run | SM% | TPOT p50 meas / sim | sim tok-wt step | model | x common | x model "
          "| per-seq | prefill | HBM | running meas / sim | waiting meas / sim | KV use meas "
          "/ sim | preempt meas / sim | errors meas / sim | sim tok-wt batch / ctx |")
    print("|---|" + "---|" * 15)
    outs = []
    for s in specs:
        o = one(cal, s, engine, bins)
        outs.append(o)
        q = o["sim_parts"]
        print(f"| {o['run']} | {o['sm']:g} | {o['meas_tpot']:.1f} / {o['sim_tpot']:.1f} | "
              f"{o['sim_step']:.1f} | " + " | ".join(f"{q[k]:.1f}" for k in q)
              + f" | {o['meas_running']:.0f} / {o['sim_running']:.0f} | "
                f"{o['meas_waiting']:.0f} / {o['sim_waiting']:.0f} | {o['meas_kv']:.2f} / "
                f"{o['sim_kv']:.2f} | {o['meas_preempt']:.0f} / {o['sim_preempt']} | "
                f"{o['meas_errors']} / {o['sim_errors']} | {o['sim_batch_tokwt']:.0f} / "
                f"{o['sim_ctx_tokwt']:.0f} |")
    print("\nPer-request TPOT (ms) = a + k x mean running over the request's decode life "
          "(least squares over completed requests); sim step-part slopes vs decoding batch "
          "(ms/seq)\n")
    print("| run | meas a / k | sim a / k | sim slope: model | x common+model | per-seq | "
          "prefill | HBM |")
    print("|---|---|---|---|---|---|---|---|")
    for o in outs:
        ma, mk = o["meas_req_fit"]
        sa, sk = o["sim_req_fit"]
        sl = o["sim_part_slope"]
        print(f"| {o['run']} | {ma:.1f} / {mk:.3f} | {sa:.1f} / {sk:.3f} | {sl['model']:.3f} "
              f"| {sl['x_common'] + sl['x_model']:.3f} | {sl['per_seq']:.3f} | "
              f"{sl['prefill']:.3f} | {sl['hbm']:.3f} |")
    if bins:
        edges = [0, 100, 200, 300, 350, 400, 450, 500, 550, 600, 700, 1100]
        print("\nMedian per-request TPOT ms (requests) by mean running over its life\n")
        print("| run | side | " + " | ".join(f"{a}-{b}" for a, b in
                                              zip(edges, edges[1:], strict=False)) + " |")
        print("|---|---|" + "---|" * (len(edges) - 1))
        for o in outs:
            for side in ("meas", "sim"):
                print(f"| {o['run']} | {side} | " + " | ".join(binned(o[f"{side}_req"], edges))
                      + " |")


if __name__ == "__main__":
    main()
