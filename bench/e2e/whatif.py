"""What would raise a configuration's attainment: the simulator (as calibrated) on the committed
plan with some engines changed, the gateway's limit cap raised, or the plan made again on the
calibrated latency model - on the same traces as the measured runs. Nothing is written; the
rows print beside the measurement.

    python -m bench.e2e.whatif --out bench/e2e/results [--config c] [--rates 2,2.5,3]
        [--set chat-8b-fp8-0:max_batch=384 --set assist-7b-int4-0:sm_pct=10 ...]
        [--max-limit 384] [--replan | --plan FILE] [--as-run]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from bench.e2e.predict import calibrated_mps_terms, calibrated_terms, predict_one
from bench.e2e.results import ResultsDir
from fineserve.errors import FineserveError
from fineserve.planner.planfile import load_plan
from fineserve.planner.schema import Plan
from fineserve.profiles.latency import LatencyModel
from fineserve.scheduler import SchedulerConfig

FIELDS = ("sm_pct", "max_batch")  # engine fields a what-if may change


class WhatIfError(FineserveError):
    """A --set that names no engine or field of the plan, or a bad value."""


@dataclass(frozen=True, slots=True)
class EngineChange:
    engine_id: str
    field: str  # one of FIELDS
    value: int

    @classmethod
    def parse(cls, text: str) -> EngineChange:
        """``ENGINE:FIELD=INT``, e.g. ``chat-8b-fp8-0:max_batch=384``."""
        eid, _, rest = text.partition(":")
        name, _, value = rest.partition("=")
        if not eid or name not in FIELDS or not value.isdigit() or int(value) < 1:
            raise WhatIfError(f"--set {text!r}: expected ENGINE:FIELD=N with FIELD one of "
                              f"{', '.join(FIELDS)} and N >= 1")
        return cls(eid, name, int(value))


@dataclass(frozen=True, slots=True)
class WhatIfRow:
    scale: float
    measured: float | None  # SLO attainment
    predicted: float
    rejected_429: int
    per_model: dict[str, float]  # SLO attainment per model, predicted


def changed(plan: Plan, changes: tuple[EngineChange, ...], time_sliced: bool = False) -> Plan:
    """``plan`` with the engines' fields changed; SM shares on a GPU must still fit in 100%
    x the plan's ``sm_oversubscription`` (unless ``time_sliced``: every engine of (a) has
    the whole GPU in turns)."""
    ids = {e.engine_id for e in plan.engines}
    for c in changes:
        if c.engine_id not in ids:
            raise WhatIfError(f"--set: no engine {c.engine_id!r} in the plan "
                              f"({', '.join(sorted(ids))})")
    engines = list(plan.engines)
    for c in changes:
        engines = [replace(e, **{c.field: c.value}) if e.engine_id == c.engine_id else e
                   for e in engines]
    cap = 100 * plan.instance.settings.sm_oversubscription
    for gpu in () if time_sliced else {g for e in engines for g in e.gpus}:
        sm = sum(e.sm_pct for e in engines if gpu in e.gpus)
        if sm > cap + 1e-9:
            raise WhatIfError(f"--set: the engines on GPU {gpu} would take {sm}% of its SMs")
    return replace(plan, engines=tuple(engines))


def what_if(res: ResultsDir, cfg: str, rates: tuple[float, ...], latency: LatencyModel,
            plan: Plan, scheduler: SchedulerConfig | None,
            limit_ceiling: str | None = "max_batch") -> list[WhatIfRow]:
    """Each rate simulated with ``plan`` and ``scheduler``, on the gateway as it deploys
    now (``limit_ceiling`` max_batch; None: as each measured run had it)."""
    scale, per_seq = calibrated_terms(res)
    rows = []
    for rate in rates:
        p = predict_one(res, cfg, rate, latency, decode_scale=scale, write=False,
                        decode_s_per_seq=per_seq, plan=plan, scheduler=scheduler,
                        limit_ceiling=limit_ceiling)["summary"]
        m = res.measured(cfg, rate)
        rows.append(WhatIfRow(
            rate, None if m is None else m.summary["overall"].get("slo_attainment"),
            p["overall"]["slo_attainment"], int(p["overall"]["rejected_429"]),
            {k: g["slo_attainment"] for k, g in sorted(p["per_model"].items())}))
    return rows


def main(argv: list[str] | None = None) -> None:
    from bench.e2e.plans import CONFIG, KNOBS, make_config_plan
    from fineserve.profiles.composite import default_latency_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="results directory")
    ap.add_argument("--config", default="c", choices=("a", "b", "c"))
    ap.add_argument("--rates", default="2,2.5,3")
    ap.add_argument("--set", action="append", default=[], metavar="ENGINE:FIELD=N")
    ap.add_argument("--max-limit", type=int, default=None,
                    help="the gateway's in-flight limit cap (default: SchedulerConfig's)")
    ap.add_argument("--as-run", action="store_true",
                    help="simulate the gateway as each measured run had it (limit ceiling), "
                         "not as it deploys now")
    ap.add_argument("--plan", type=Path, default=None,
                    help="simulate this plan file instead of the committed one")
    ap.add_argument("--replan", action="store_true",
                    help="plan the configuration again on the calibrated latency model first")
    args = ap.parse_args(argv)
    try:
        res = ResultsDir(args.out)
        latency = default_latency_model()
        scale, per_seq = calibrated_terms(res)
        by_size, factors = calibrated_mps_terms(res)
        plan = (make_config_plan(res.load_bench(), args.config, latency,
                                 decode_scale=scale, decode_s_per_seq=per_seq,
                                 knobs=KNOBS[args.config], per_seq_by_size=by_size,
                                 mps_factors=factors)
                if args.replan else load_plan(args.plan or res.plan_path(args.config)))
        plan = changed(plan, tuple(EngineChange.parse(s) for s in args.set),
                       time_sliced=CONFIG[args.config].no_mps)
        sched = (None if args.max_limit is None else SchedulerConfig(
            max_limit=args.max_limit, initial_limit=min(args.max_limit, 8)))
        rates = tuple(float(x) for x in args.rates.split(",") if x)
    except (FineserveError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(" ".join(f"{e.engine_id} {e.sm_pct}% SMs, batch {e.max_batch};" for e in plan.engines))
    ceiling = None if args.as_run else "max_batch"
    for r in what_if(res, args.config, rates, latency, plan, sched, ceiling):
        meas = "-" if r.measured is None else f"{r.measured:.1%}"
        models = ", ".join(f"{k} {v:.1%}" for k, v in r.per_model.items())
        print(f"x{r.scale:g}: measured {meas}, predicted {r.predicted:.1%}, "
              f"{r.rejected_429} 429s ({models})")


if __name__ == "__main__":
    main()
