"""calibrate.fit_protocol on the given results dirs with the SimOptions fields named in FLAGS
(comma list, e.g. FLAGS=demand_from_profile) switched on; writes the calibration to argv[1].

    FLAGS=demand_from_profile PYTHONPATH=. python bench/e2e/results-r4/postrun3/fit_protocol.py \
        /tmp/cal.json bench/e2e/results bench/e2e/results-r3
"""
import os
import sys
from dataclasses import replace
from pathlib import Path

import bench.e2e.predict as P
from bench.e2e.calibrate import _source_name, fit_protocol
from bench.e2e.results import ResultsDir
from fineserve.profiles.composite import default_latency_model

flags = [f for f in os.environ.get("FLAGS", "").split(",") if f]
_opts = P.sim_options
P.sim_options = lambda *a, **k: replace(_opts(*a, **k), **dict.fromkeys(flags, True))
out, dirs = Path(sys.argv[1]), [Path(d) for d in sys.argv[2:]]
cal = fit_protocol(tuple(ResultsDir(d) for d in dirs), default_latency_model(),
                   " + ".join(_source_name(d) for d in dirs))
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(cal.to_json())
