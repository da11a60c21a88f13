"""Co-located engines under MPS on the GPU host: decode and TTFT slowdown against running
alone, at planner-like SM shares, and the fitted slowdown model (docs/profiler.md).

Resumable (finished scenarios are skipped) and bounded by ``--budget-s``. Writes
``OUT/interference.{csv,jsonl,log}`` and ``OUT/interference-fit.json``. Example (~3 minutes):

    PYTHONPATH=$PWD:$PYTHONPATH python bench/interference_h100.py \\
        --scenarios pair-50-50,triple-33 --out /tmp/fs-intf --budget-s 200
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fineserve.errors import FineserveError  # noqa: E402
from fineserve.profiles.measure.interference import (  # noqa: E402
    InterferenceRequest,
    Member,
    Scenario,
    run_interference,
)
from fineserve.profiles.measure.records import LoadSpec  # noqa: E402
from fineserve.profiles.measure.runner import DEFAULT_CACHE, parse_precision  # noqa: E402

# name -> SM shares of the members (the planner's typical splits)
SHARES = {
    "pair-50-50": (50, 50),
    "pair-30-70": (30, 70),
    "pair-40-60": (40, 60),
    "triple-33": (33, 33, 33),
    "triple-20-30-50": (20, 30, 50),
}


def scenarios(names: str, models: list[str], precisions: list[str]) -> tuple[Scenario, ...]:
    out = []
    for name in names.split(","):
        if name not in SHARES:
            raise FineserveError(f"--scenarios: unknown {name!r}",
                                 hint=f"use some of {', '.join(SHARES)}")
        members = tuple(
            Member(chr(ord("a") + i), models[i % len(models)],
                   parse_precision(precisions[i % len(precisions)]), float(sm))
            for i, sm in enumerate(SHARES[name])
        )
        out.append(Scenario(name, members))
    return tuple(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", default="pair-50-50,pair-30-70,triple-33")
    p.add_argument("--models", default="llama-3.1-8b", help="members' models, cycled")
    p.add_argument("--precisions", default="bf16", help="members' precisions, cycled")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--probe-tokens", type=int, default=1024, help="TTFT probe prompt")
    p.add_argument("--phase-s", type=float, default=10.0)
    p.add_argument("--quick", action="store_true", help="pair-50-50 only, 6 s phases")
    p.add_argument("--gpu", default="H100-SXM-80GB")
    p.add_argument("--out", default="/tmp/fs-intf")
    p.add_argument("--budget-s", type=float, default=None)
    p.add_argument("--engine-python", default=None)
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE))
    args = p.parse_args()
    t0 = time.time()
    try:
        names = "pair-50-50" if args.quick else args.scenarios
        request = InterferenceRequest(
            scenarios=scenarios(names, args.models.split(","), args.precisions.split(",")),
            out=Path(args.out),
            load=LoadSpec(args.batch, args.prompt_tokens, args.output_tokens, args.probe_tokens),
            phase_s=6.0 if args.quick else args.phase_s, gpu=args.gpu, budget_s=args.budget_s,
            engine_python=args.engine_python, cache_dir=Path(args.cache_dir),
        )  # fmt: skip
        fit = run_interference(request, lambda m: print(f"[{time.time() - t0:6.0f}s] {m}",
                                                        flush=True))
    except FineserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print((Path(args.out) / "interference.csv").read_text())
    print(fit.to_json() if fit else "no complete scenario yet: rerun to continue")
    return 0


if __name__ == "__main__":
    sys.exit(main())
