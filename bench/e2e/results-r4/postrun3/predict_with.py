"""bench.e2e.predict's CLI with the SimOptions fields named in FLAGS (comma list) switched on.

    FLAGS=demand_from_profile PYTHONPATH=. python bench/e2e/results-r4/postrun3/predict_with.py \
        --out bench/e2e/results-r4 --calibration CAL.json --pred-dir /tmp/pred --force
"""
import os
import sys
from dataclasses import replace

import bench.e2e.predict as P

flags = [f for f in os.environ.get("FLAGS", "").split(",") if f]
_opts = P.sim_options
P.sim_options = lambda *a, **k: replace(_opts(*a, **k), **dict.fromkeys(flags, True))
P.main(sys.argv[1:])
