"""Search trace shapes for the KV Slab acceptance with the calibrated simulator (no GPU).

Each shape is a preset with some fields replaced; every combination of the ``--grid`` values
is simulated in both modes (static best split, pool) at each ``--scales`` step-latency factor
with co-location interference on (``kvslab_accept_predict.simulated``). A shape qualifies when,
at every scale, static attainment <= ``--static-max`` and pooled / static >= ``--ratio-min``;
qualifying shapes are listed by their worst ratio, then the rest by how close they came.

    python bench/kvslab_accept_search.py --grid prompt_mean=1024,1536 output_mean=256,512 \\
        hot_factor=2,3 --out /tmp/kvslab-search.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.kvslab_accept_predict import simulated  # noqa: E402
from bench.kvslab_accept_setup import GPU, make_setup  # noqa: E402
from bench.kvslab_accept_trace import PRESETS, TraceShape, shape_from  # noqa: E402
from fineserve.profiles.gpus import gpu_spec  # noqa: E402


@dataclass(frozen=True, slots=True)
class Outcome:
    """One shape at one scale: attainment per mode, its ratio, the simulated span (s)."""

    scale: float
    static: float
    pooled: float
    span_s: float
    static_per_model: dict[str, float]
    pooled_per_model: dict[str, float]

    @property
    def ratio(self) -> float:
        return self.pooled / max(self.static, 1e-9)


def evaluate(shape: TraceShape, scales: list[float], seed: int) -> list[Outcome]:
    setup = make_setup(shape, seed, gpu_spec(GPU).memory_bytes)
    out = []
    for s in scales:
        r = simulated(setup, s)
        out.append(Outcome(s, r["static"]["slo_attainment"], r["pooled"]["slo_attainment"],
                           max(r["static"]["span_s"], r["pooled"]["span_s"]),
                           r["static"]["per_model"], r["pooled"]["per_model"]))
    return out


def parse_grid(items: list[str]) -> dict[str, list[float]]:
    fields = set(TraceShape.__dataclass_fields__)
    grid = {}
    for item in items:
        name, _, values = item.partition("=")
        if name not in fields or not values:
            raise SystemExit(f"--grid {item!r}: want FIELD=V1,V2 with FIELD one of "
                             f"{', '.join(sorted(fields))}")
        cast = int if isinstance(getattr(PRESETS["kv-bound"], name), int) else float
        grid[name] = [cast(v) for v in values.split(",")]
    return grid


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="kv-bound")
    ap.add_argument("--grid", nargs="*", default=[], help="FIELD=V1,V2 ... (TraceShape fields)")
    ap.add_argument("--scales", default="1.3,1.7")
    ap.add_argument("--seeds", default="0", help="trace seeds; the worst outcome counts")
    ap.add_argument("--static-max", type=float, default=0.60)
    ap.add_argument("--ratio-min", type=float, default=1.5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    grid = parse_grid(args.grid)
    scales = [float(x) for x in args.scales.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    rows = []
    for combo in itertools.product(*grid.values()):
        over = dict(zip(grid, combo, strict=True))
        try:
            shape = shape_from(args.preset, **over)
        except ValueError as exc:
            print(f"skip {over}: {exc}", flush=True)
            continue
        t0 = time.monotonic()
        res = [o for seed in seeds for o in evaluate(shape, scales, seed)]
        worst = min(res, key=lambda o: o.ratio)
        ok = all(o.static <= args.static_max and o.ratio >= args.ratio_min for o in res)
        rows.append({"over": over, "ok": ok, "worst_ratio": round(worst.ratio, 3),
                     "max_static": max(o.static for o in res),
                     "outcomes": [asdict(o) | {"ratio": round(o.ratio, 3)} for o in res]})
        print(f"{'OK ' if ok else '   '}{over} " + " ".join(
            f"x{o.scale}: {o.static:.2f}->{o.pooled:.2f} ({o.ratio:.2f}, {o.span_s:.0f}s)"
            for o in res) + f"  [{time.monotonic() - t0:.1f}s]", flush=True)
    rows.sort(key=lambda r: (not r["ok"], -r["worst_ratio"]))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
