"""What-ifs (no refit, runtime patches only; nothing in fineserve/ is changed) on the fp8
engine's simulated step, against the measured TPOT median, running batch and time-outs:

* ``flat256``: the profile's decode step for the fp8 8B held at its batch-256 value beyond
  256 (the roofline extension's compute-bound growth removed, leaving the fitted per-sequence
  term as the only growth with the batch);
* ``prefill-marginal``: a prefill chunk carried by a step that also decodes costs its prefill
  time less the prefill floor (the prefill of 1 token: weights read and host floor of a
  separate forward, which vLLM's chunked prefill shares with the decode forward);
* both.

    PYTHONPATH=. python bench/e2e/results-r7/postrun/whatif_fp8.py CAL.json DIR:CFG:RATE ...
"""
from __future__ import annotations

import sys
from pathlib import Path

import bench.e2e.predict as P
from bench.e2e.results import Calibration, ResultsDir
from fineserve.profiles.composite import ProfiledLatency, default_latency_model
from fineserve.sim.engine import EngineSim

ENGINE, MODEL = "chat-8b-fp8-0", "chat-8b-fp8"
_decode0, _prefill0 = ProfiledLatency.decode_step, EngineSim._prefill_s
RUNNING: list = []


def _is_fp8(shape) -> bool:
    return "fp8" in shape.model.key


def _flat(self, engine, batch, context_tokens, sm_pct):
    if _is_fp8(engine) and batch > 256:
        batch = 256
    return _decode0(self, engine, batch, context_tokens, sm_pct)


def _marginal(self: EngineSim, tokens: int, sm: float | None = None) -> float:
    t = _prefill0(self, tokens, sm)
    if self.decoding and _is_fp8(self.shape):
        t = max(0.0, t - _prefill0(self, 1, sm))
    return t


def run(cal: Path, spec: str, variant: str) -> tuple[float, int, float]:
    d, cfg, rate = spec.split(":")
    res, rate = ResultsDir(Path(d)), float(rate)
    c = Calibration.load(cal)
    ProfiledLatency.decode_step = _flat if "flat" in variant else _decode0
    EngineSim._prefill_s = _marginal if "marg" in variant else _prefill0
    try:
        p = P.predict_one(res, cfg, rate, default_latency_model(), decode_scale=c.decode_scale,
                          decode_s_per_seq=c.decode_s_per_seq, calibration=cal, write=False)
    finally:
        ProfiledLatency.decode_step, EngineSim._prefill_s = _decode0, _prefill0
    g = p["summary"]["per_model"][MODEL]
    tot = sum(v["output_tokens_per_s"] for v in p["summary"]["per_model"].values())
    return g["tpot_s"]["p50"] * 1e3, g.get("errors", 0), tot


def main() -> None:
    cal, specs = Path(sys.argv[1]), sys.argv[2:]
    variants = ("default", "flat256", "prefill-marginal", "flat256+marginal")
    print(f"calibration {cal}; fp8 TPOT p50 ms / time-outs / all models' output tok/s\n")
    print("| run | measured | " + " | ".join(variants) + " |")
    print("|---|---|" + "---|" * len(variants))
    for s in specs:
        d, cfg, rate = s.split(":")
        m = ResultsDir(Path(d)).measured(cfg, float(rate))
        g = m.summary["per_model"][MODEL]
        tot = sum(v["output_tokens_per_s"] for v in m.summary["per_model"].values())
        cells = [f"{g['tpot_s']['p50'] * 1e3:.1f} / {g.get('errors', 0)} / {tot:.0f}"]
        for v in variants:
            t, e, thr = run(cal, s, v)
            cells.append(f"{t:.1f} / {e} / {thr:.0f}")
        print(f"| {Path(d).name} ({cfg}) x{float(rate):g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
