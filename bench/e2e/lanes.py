"""Configurations side by side on one multi-GPU host: each lane is one `bench/e2e/run.py`
on its own GPU, with its own gateway and engine ports, work (run, MPS pipe, KV ledger) and
results directories, and its own host cores, all lanes replaying the same traces at once.

    python -m bench.e2e.lanes --lanes "c@0;a,b@1" --merge-into bench/e2e/results -- \\
        --rates 1,2,2.5,3 --budget-s 520

A lane is ``CONFIGS@GPU`` or ``CONFIGS@GPU:SUBDIR``; its configurations run one after the other
on that GPU; a SUBDIR lane merges into RESULTS/SUBDIR instead (a control: the same configuration
measured again beside the main lanes, say on the other GPU, to see what the lane, the GPU and
the run-to-run noise alone do; or a variant: a plan of its own in RESULTS/SUBDIR/plan-CFG.yaml,
`run.py --plan-only --variant SUBDIR`). The arguments after ``--`` go to every lane's run.py.
Each lane is pinned (``sched_setaffinity`` in the child before it starts run.py, inherited by
everything it starts) to an equal, disjoint block of whole physical cores, near its GPU where
NVML separates the GPUs (fineserve/profiles/measure/cores.py), so one configuration's host work
(vLLM's schedulers, the gateway, the replay client) cannot take CPU from another's; ports are
``--base-port + 100 x lane`` (gateway) and the next ones (engines). Each call starts from empty
lane folders (an earlier call's deployments stopped), each lane resumes from a copy of the
results directory, and its new result files are merged back at the end - also after a SIGTERM,
which stops the lanes within ``GRACE_S``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.e2e.plans import CONFIGS  # noqa: E402
from fineserve.profiles.measure import cores as host_cores  # noqa: E402
from fineserve.runtime.children import Child, ChildStartError, Stop, run_children  # noqa: E402

GRACE_S = 5.0  # a stopped lane's time to stop its deployment before it is killed
JOIN_S = 2.0  # the output readers after the lanes exit. After a SIGTERM the merge starts
#               GRACE_S + JOIN_S (~7 s) later, inside `timeout --kill-after=15`; only a lane
#               stuck in the kernel past its SIGKILL (children.KILL_WAIT_S, 10 s) can push it out
PORT_STRIDE = 100  # a lane's gateway and engines use base + 100 x lane .. + 99
SEEDED = ("bench.json", "calibration.json")  # besides plan-*.yaml and the lane's results
MIN_CORES = 4  # a lane's engines, gateway and replay client
Block = host_cores.Block  # a lane's CPUs, sorted


class LaneError(ValueError):
    """A --lanes specification that cannot run (one-line message)."""


@dataclass(frozen=True, slots=True)
class LaneSpec:
    configs: tuple[str, ...]
    gpu: int
    subdir: str = ""  # results go to RESULTS/subdir ("" = RESULTS itself)


@dataclass(frozen=True, slots=True)
class Lane:
    """Everything one lane owns; no two lanes share a GPU, port, core or directory."""

    index: int
    configs: tuple[str, ...]
    gpu: int
    subdir: str
    port: int  # gateway; engines take port + 1 ..
    cores: Block
    work: Path  # deploy run dirs (state, logs, MPS pipes), per-rate request logs
    out: Path  # the lane's results directory

    @property
    def label(self) -> str:
        where = f":{self.subdir}" if self.subdir else ""
        return f"{','.join(self.configs)}@gpu{self.gpu}{where}"

    def target(self, results: Path) -> Path:
        return results / self.subdir if self.subdir else results

    def ports(self, engines: int) -> range:
        return range(self.port, self.port + 1 + engines)


def parse_lanes(text: str) -> tuple[LaneSpec, ...]:
    """``"c@0;a,b@1"`` -> lanes; each configuration once per results directory, each GPU in
    one lane."""
    specs: list[LaneSpec] = []
    seen_cfg: set[tuple[str, str]] = set()
    seen_gpu: set[int] = set()
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        cfgs, sep, where = part.partition("@")
        gpu, _, subdir = where.partition(":")
        if not sep or not gpu.strip().isdigit():
            raise LaneError(f"--lanes: {part!r} is not CONFIGS@GPU[:SUBDIR] (e.g. a,b@1)")
        subdir = subdir.strip()
        if subdir and not subdir.replace("-", "").replace("_", "").isalnum():
            raise LaneError(f"--lanes: {part!r}: SUBDIR must be a plain name")
        configs = tuple(c.strip() for c in cfgs.split(",") if c.strip())
        bad = [c for c in configs if c not in CONFIGS]
        if not configs or bad:
            raise LaneError(f"--lanes: {part!r} names {', '.join(bad) or 'no configuration'}; "
                            f"use {', '.join(CONFIGS)}")
        keyed = {(c, subdir) for c in configs}
        dup = seen_cfg.intersection(keyed)
        if dup:
            raise LaneError(f"--lanes: configuration {', '.join(sorted(c for c, _ in dup))} "
                            "in two lanes of one results directory (both would write its "
                            "result files)")
        if int(gpu) in seen_gpu:
            raise LaneError(f"--lanes: GPU {int(gpu)} in two lanes")
        seen_cfg.update(keyed)
        seen_gpu.add(int(gpu))
        specs.append(LaneSpec(configs, int(gpu), subdir))
    if not specs:
        raise LaneError("--lanes: no lane given")
    return tuple(specs)


def parse_cores(text: str) -> Block:
    """``"0-7,16-23"`` -> cores (the kernel's cpu-list syntax)."""
    try:
        return host_cores.parse_cpus(text)
    except ValueError as exc:
        raise LaneError(f"--cores: {exc}") from None


def lane_blocks(cores: Sequence[int], lanes: int, siblings: Mapping[int, Block] | None = None,
                near: Sequence[Block] = ()) -> tuple[Block, ...]:  # fmt: skip
    """Each lane's cores (``core_blocks``: whole physical cores, near its GPU where ``near``
    separates the GPUs into sets no smaller than an even split's); refused where a lane
    would get fewer than ``MIN_CORES``."""
    blocks = host_cores.core_blocks(cores, lanes, siblings or {}, near)
    if not blocks or min(len(b) for b in blocks) < MIN_CORES:
        raise LaneError(f"--cores: {len(cores)} cores for {lanes} lanes; each lane needs at "
                        f"least {MIN_CORES} (engines, gateway, replay client)")
    return blocks


def allocate(specs: tuple[LaneSpec, ...], cores: Sequence[int], base_port: int,
             work_root: Path, out_root: Path, near: Sequence[Block] = (),
             siblings: Mapping[int, Block] | None = None) -> tuple[Lane, ...]:
    """Ports, directories and cores of each lane (``near``: per lane, the cores NVML calls
    near its GPU; () splits evenly)."""
    blocks = lane_blocks(cores, len(specs), siblings, near)
    if base_port < 1024 or base_port + PORT_STRIDE * len(specs) > 65535:
        raise LaneError(f"--base-port: {base_port} leaves no room for {len(specs)} lanes")
    return tuple(Lane(i, s.configs, s.gpu, s.subdir, base_port + PORT_STRIDE * i, blocks[i],
                      work_root / f"lane{i}-gpu{s.gpu}", out_root / f"lane{i}-gpu{s.gpu}")
                 for i, s in enumerate(specs))


def lane_argv(lane: Lane, python: str, run_args: list[str]) -> list[str]:
    return [python, str(ROOT / "bench/e2e/run.py"),
            "--configs", ",".join(lane.configs), "--gpu", str(lane.gpu),
            "--port", str(lane.port), "--lane", lane.label, "--work", str(lane.work),
            "--out", str(lane.out), *run_args]


def lane_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """CUDA numbers GPUs as NVML does (the deploy binds by NVML index; CUDA's default
    order is fastest-first), so a --no-mps lane's CUDA_VISIBLE_DEVICES names its GPU."""
    env = dict(os.environ if base is None else base)
    env.update(CUDA_DEVICE_ORDER="PCI_BUS_ID", PYTHONUNBUFFERED="1")
    return env


def stop_deployments(work: Path, wait_s: float = 60.0) -> list[str]:
    """Stop every deployment recorded under a lane's work directory (``WORK/CFG/run*``) that
    still runs or left processes behind: a lane killed past its limit leaves its engines
    holding the GPU and the ports, and the next call on the same machine would collide.
    Returns one line per run directory that had something to stop."""
    from fineserve.runtime.control import stop_run
    from fineserve.runtime.errors import DeployError

    done = []
    for state in sorted(work.glob("*/run*/state.json")):
        try:
            line = stop_run(state.parent, wait_s)
        except (DeployError, OSError) as exc:
            line = f"could not stop: {exc}"
        if "nothing left" not in line:
            done.append(f"{state.parent}: {line}")
    return done


def reset(lane: Lane) -> None:
    """An empty lane: leftover deployments stopped, the work and results folders of an
    earlier call removed (its result files would read as this call's - a control's
    ``a-r*.json`` as the main (a) - and its requests.csv would be packed again)."""
    for line in stop_deployments(lane.work):
        print(f"lane {lane.index}: {line}", flush=True)
    for d in (lane.work, lane.out):
        shutil.rmtree(d, ignore_errors=True)


def seed(lane: Lane, results: Path) -> None:
    """The lane's results directory: the workload, the plans, the calibration and the lane's
    own earlier result files (so run.py resumes instead of measuring them again). A SUBDIR
    lane's plans in RESULTS/SUBDIR replace the root's (a variant planned otherwise: run.py
    --plan-only --variant); the workload and the calibration are always the root's."""
    lane.out.mkdir(parents=True, exist_ok=True)
    own = lane.target(results)
    plans = {p.name: p for p in results.glob("plan-*.yaml")}
    if lane.subdir:
        plans.update((p.name, p) for p in own.glob("plan-*.yaml"))
    files = [results / n for n in SEEDED] + sorted(plans.values())
    for cfg in lane.configs:
        files += [*own.glob(f"{cfg}-r*.json"), own / f"{cfg}-requests.tgz"]
    for f in files:
        if f.is_file():
            shutil.copy2(f, lane.out / f.name)


def merge(lane: Lane, results: Path, since: float) -> list[Path]:
    """Copy the lane's files written after ``since`` into ``results`` (its SUBDIR there);
    returns them."""
    got = []
    results = lane.target(results)
    results.mkdir(parents=True, exist_ok=True)
    for cfg in lane.configs:
        for p in [*lane.out.glob(f"{cfg}-r*.json"), lane.out / f"{cfg}-requests.tgz",
                  *lane.out.glob(f"plan-{cfg}*.yaml")]:
            if p.is_file() and p.stat().st_mtime > since:
                shutil.copy2(p, results / p.name)
                got.append(results / p.name)
    return got


def pack(files: list[Path], root: Path, path: Path) -> None:
    """``files`` (under ``root``) in one .tgz, with their paths relative to ``root``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for f in files:
            tar.add(f, arcname=str(f.relative_to(root)))


def lane_stop(grace_s: float) -> Stop:
    """SIGTERM / Ctrl-C of the lanes: the first one passes SIGINT on to every lane (run.py
    then stops its deployment); ``grace_s`` later the lanes' process groups are killed, so
    the merge and the pack still happen inside `timeout --kill-after`."""
    return Stop(signal.SIGINT, grace_s, trap=True,
                stopping="lanes: stopping (SIGINT to every lane)",
                killing=f"lanes: still running {grace_s:.0f} s after the stop; killing them")


def run_lanes(lanes: tuple[Lane, ...], python: str, run_args: list[str], results: Path,
              grace_s: float = GRACE_S) -> tuple[int, list[Path]]:
    """Start every lane, wait for all (a SIGTERM or Ctrl-C stops them: ``lane_stop``), merge
    what they wrote. Returns the worst exit code and the files merged into ``results``; the
    caller stops what a killed lane left running (``stop_deployments``) after packing."""
    since = time.time()
    for lane in lanes:
        reset(lane)
        seed(lane, results)
        lane.work.mkdir(parents=True, exist_ok=True)
    children = []
    for lane in lanes:
        argv = lane_argv(lane, python, run_args)
        cpus = host_cores.format_cpus(lane.cores)
        print(f"lane {lane.index} ({lane.label}, cores {cpus}, port {lane.port}): "
              f"{' '.join(argv)}", flush=True)
        children.append(Child(lane.label, tuple(argv), lane_env(), cwd=ROOT, cores=lane.cores,
                              log=lane.work / "lane.log"))
    codes = run_children(children, stop=lane_stop(grace_s), join_s=JOIN_S)
    merged: list[Path] = []
    for lane, code in zip(lanes, codes, strict=True):
        got = merge(lane, results, since)
        merged += got
        print(f"lane {lane.index} ({lane.label}): exit {code}; merged "
              f"{', '.join(p.name for p in got) or 'nothing'}", flush=True)
    return max((c if c >= 0 else 1 for c in codes), default=0), merged


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    run_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lanes", required=True, help='e.g. "c@0;a,b@1" (CONFIGS@GPU;...)')
    ap.add_argument("--merge-into", type=Path, default=ROOT / "bench/e2e/results",
                    help="results directory the lanes resume from and write back to")
    ap.add_argument("--cores", default="", help="cores to split (default: this process's)")
    ap.add_argument("--base-port", type=int, default=8000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/fineserve-e2e-lanes"))
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--dry-run", action="store_true", help="print the lanes' command lines")
    ap.add_argument("--pack", type=Path, default=None,
                    help="also write every merged file into this .tgz, paths relative to "
                         "--merge-into (one file to bring back from a GPU host)")
    args = ap.parse_args(own)
    bad = {"--configs", "--gpu", "--port", "--work", "--out", "--lane"}.intersection(run_args)
    if bad:
        ap.error(f"after --: {', '.join(sorted(bad))} is set per lane by lanes.py")
    try:
        cores = parse_cores(args.cores) if args.cores else tuple(sorted(os.sched_getaffinity(0)))
        specs = parse_lanes(args.lanes)
        near = () if args.dry_run else host_cores.nvml_near(tuple(s.gpu for s in specs))
        lanes = allocate(specs, cores, args.base_port, args.work, args.work / "results",
                         near, host_cores.host_siblings(cores))
    except LaneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        for lane in lanes:
            print(f"cores {host_cores.format_cpus(lane.cores)}: "
                  f"{' '.join(lane_argv(lane, args.python, run_args))}")
        return 0
    try:
        code, got = run_lanes(lanes, args.python, run_args, args.merge_into)
    except ChildStartError as exc:  # the lanes already started were stopped
        print(f"error: {exc}", file=sys.stderr)
        code, got = exc.exit_code, None
    if args.pack is not None and got is not None:
        pack(got, args.merge_into, args.pack)
    for lane in lanes:  # a lane killed mid-deployment leaves its engines running
        for line in stop_deployments(lane.work, wait_s=GRACE_S):
            print(f"lane {lane.index}: {line}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
