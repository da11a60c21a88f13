"""Where a simulated engine's TPOT goes: every simulated step of one (config, rate) of a
results directory, under a calibration, split into the profile's decode step x the common
factor x the model's factor, the per-sequence term x the model's factor, the prefill chunk
carried by the step and the HBM-interference stretch; token-weighted (each decoding sequence
spends the whole step), so the sum is the simulated mean time per output token. Beside it the
simulated and measured running batch (vllm:num_requests_running, per second).

    PYTHONPATH=. python bench/e2e/results-r6/postrun/decompose.py bench/e2e/results-r6 b 3 \
        [CALIBRATION.json] [--factor KEY=VALUE ...]
"""
import statistics
import sys
from pathlib import Path

import bench.e2e.predict as P
from bench.e2e.results import Calibration, ResultsDir
from fineserve.profiles.composite import default_latency_model
from fineserve.sim.engine import EngineSim
from fineserve.sim.stepscale import EngineScaledLatency, ScaledLatency, per_seq_s, profiled

STEPS: list[tuple] = []
_orig = EngineSim.start_step


def _start(self: EngineSim, now: float) -> float:
    end = _orig(self, now)
    tokens = sum(t for _, t in self._pending)
    STEPS.append((self, now, end - now, self.decoding,
                  self.ctx_sum / max(self.decoding, 1), tokens,
                  len(self.prefilling), len(self.waiting)))
    return end


def parts(e: EngineSim, b: int, ctx: float, tokens: int) -> dict[str, float]:
    lat, f = e.latency, 1.0
    if isinstance(lat, EngineScaledLatency):
        f, lat = lat.factor(e.shape), lat.inner
    s, ps, by = 1.0, 0.0, False
    if isinstance(lat, ScaledLatency):
        s, ps, by = lat.decode_scale, lat.decode_s_per_seq, lat.per_seq_by_size
    prof = profiled(e.latency)
    model = prof.decode_step(e.shape, b, max(1.0, ctx), e.sm_pct).seconds if b else 0.0
    pre = (lat.prefill(e.shape, tokens, e.sm_pct).seconds if tokens else 0.0)
    return {"model": model, "x_common": model * (s - 1), "x_model": model * s * (f - 1),
            "per_seq": f * per_seq_s(ps, by, e.shape, b, e.sm_pct) if b else 0.0,
            "prefill": pre}


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    res, cfg, rate = ResultsDir(Path(args[0])), args[1], float(args[2])
    cal = Path(args[3]) if len(args) > 3 else None
    c = Calibration.load(cal or res.calibration_path())
    EngineSim.start_step = _start
    p = P.predict_one(res, cfg, rate, default_latency_model(), decode_scale=c.decode_scale,
                      decode_s_per_seq=c.decode_s_per_seq, calibration=cal, write=False)
    m = res.measured(cfg, rate)
    print(f"{res.root.name} ({cfg}) x{rate:g}")
    print("| engine | SM% | meas TPOT p50 | sim TPOT p50 | sim tok-wt step | model | "
          "x common | x model | per-seq | prefill | HBM | sim mean batch (tok-wt) | "
          "sim running (1/s) | meas running (1/s) | sim waiting | meas waiting |")
    print("|---|" + "---|" * 15)
    engines = sorted({s[0].name: s[0] for s in STEPS}.values(), key=lambda e: e.name)
    for e in engines:
        st = [s for s in STEPS if s[0] is e]
        acc = {k: 0.0 for k in ("model", "x_common", "x_model", "per_seq", "prefill", "hbm")}
        tok = 0
        for _, _, dur, b, ctx, tokens, _, _ in st:
            if not b:
                continue
            q = parts(e, b, ctx, tokens)
            # the remainder: HBM interference (and KV-growth debt)
            q["hbm"] = dur - sum(q.values())
            for k in acc:
                acc[k] += b * q[k]
            tok += b
        # per-second samples of running (decoding + prefilling) and waiting
        run, wait, t, i = [], [], 1.0, 0
        end = max(s[1] for s in st)
        while t < end:
            while i + 1 < len(st) and st[i + 1][1] <= t:
                i += 1
            run.append(st[i][3] + st[i][6])
            wait.append(st[i][7])
            t += 1.0
        rows = m.engine_series.get(e.name) or []
        mrun = [r[1] for r in rows]
        mwait = [r[2] for r in rows]
        model = e.name.rsplit("-", 1)[0]  # engine "<model>-<replica>"
        mt = m.summary["per_model"][model]["tpot_s"]["p50"]
        pt = p["summary"]["per_model"][model]["tpot_s"]["p50"]
        mb = sum(s[3] * s[3] for s in st) / max(1, sum(s[3] for s in st))
        ms = 1e3 / tok

        def mean(x: list) -> float:
            return statistics.fmean(x) if x else float("nan")
        print(f"| {model} | {e.sm_pct:g} | {mt * 1e3:.1f} | {pt * 1e3:.1f} | "
              f"{sum(acc.values()) * ms:.1f} | " + " | ".join(
                  f"{acc[k] * ms:.1f}" for k in ("model", "x_common", "x_model", "per_seq",
                                                   "prefill", "hbm"))
              + f" | {mb:.0f} | {mean(run):.0f} | {mean(mrun):.0f} | {mean(wait):.0f} | "
                f"{mean(mwait):.0f} |")


if __name__ == "__main__":
    main()
