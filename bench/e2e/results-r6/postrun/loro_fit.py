"""One leave-one-run-out fit: ``calibrate.fit_protocol`` on the given results directories
(never the one then predicted), with the simulator's latency model as committed (``default``)
or with the roofline calibrated to the measured H100 profiles for all the profiles lack
(``h100``: ``default_latency_model(calibrated=True)``) or for the unprofiled int4 7B only
(``h100-unprofiled``): ``Calibration.estimator``.

    PYTHONPATH=. python bench/e2e/results-r6/postrun/loro_fit.py VARIANT OUT.json \
        bench/e2e/results bench/e2e/results-r3 ...
"""
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench.e2e.calibrate import _source_name, fit_protocol
from bench.e2e.predict import over_estimator
from bench.e2e.results import ResultsDir
from fineserve.profiles.composite import default_latency_model


def main() -> None:
    variant, out, dirs = sys.argv[1], Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]]
    estimator = {"default": ""}.get(variant, variant)
    t0 = time.time()
    latency = over_estimator(default_latency_model(), estimator)
    cal = fit_protocol(tuple(ResultsDir(p) for p in dirs), latency,
                       " + ".join(_source_name(p) for p in dirs))
    cal = replace(cal, estimator=estimator)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(cal.to_json())
    print(f"{out}: {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
