"""Convert FineServe's published apex cost table into the shipped profile data.

Writes ``fineserve/profiles/data/{gpu}/{model}/{precision.name}.csv``, one file per model and
precision with every TP degree inside. Re-runnable: it rewrites the files it owns.

    python bench/import_fineserve.py [--source ../shared/data/fineserve-costs/apex-cost.csv]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fineserve.profiles.fineserve_import import DEFAULT_GPU, import_fineserve_costs
from fineserve.profiles.schema import LatencyPoint, ProfileTable, save_profile

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "fineserve-costs" / "apex-cost.csv"
DEFAULT_OUT = REPO / "fineserve" / "profiles" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="FineServe cost CSV")
    parser.add_argument("--gpu", default=DEFAULT_GPU, help="GPU the file was measured on")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="profile data folder")
    args = parser.parse_args()

    table, report = import_fineserve_costs(args.source, gpu=args.gpu)
    print(report.summary())
    groups: dict[Path, list[LatencyPoint]] = {}
    for point in table:
        target = args.out / point.gpu / point.model / f"{point.engine.precision.name}.csv"
        groups.setdefault(target, []).append(point)
    for target, points in sorted(groups.items()):
        save_profile(ProfileTable(points), target)
        print(f"wrote {len(points):4d} points to {target.relative_to(args.out)}")


if __name__ == "__main__":
    main()
