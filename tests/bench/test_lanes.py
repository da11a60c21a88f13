"""bench/e2e/lanes.py: configurations side by side on one host share no GPU, port, core,
run directory, MPS pipe or KV ledger (checked on the real deploy preparation, dry run)."""

from __future__ import annotations

import os
import shutil
import signal
import tarfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.e2e import lanes as L
from bench.e2e import run as e2e_run
from bench.e2e.plans import as_deployed, on_gpu
from bench.e2e.results import ResultsDir
from fineserve.planner.planfile import load_plan
from fineserve.runtime import prepare as prepare_mod
from fineserve.runtime.options import DeployOptions, Mode
from fineserve.runtime.prepare import prepare

RESULTS = Path(__file__).resolve().parents[2] / "bench/e2e/results"


def test_lane_specs_parse_and_refuse_shared_configs_or_gpus():
    assert L.parse_lanes("c@0; a,b@1") == (L.LaneSpec(("c",), 0), L.LaneSpec(("a", "b"), 1))
    for bad, why in [("c@0;c@1", "two lanes"), ("a@0;b@0", "GPU 0 in two"),
                     ("x@0", "names x"), ("a", "CONFIGS@GPU"), ("a@-1", "CONFIGS@GPU"),
                     ("", "no lane")]:
        with pytest.raises(L.LaneError, match=why):
            L.parse_lanes(bad)


def test_cores_parse_and_refuse_too_few_per_lane():
    """The split itself is fineserve/profiles/measure/cores.py's (tests/profiles/measure/
    test_cores.py); the lanes add their flag's messages and a floor of 4 cores a lane."""
    assert L.parse_cores("0-3,8,10-11") == (0, 1, 2, 3, 8, 10, 11)
    with pytest.raises(L.LaneError, match="needs at least 4"):
        L.lane_blocks(tuple(range(6)), 2)
    with pytest.raises(L.LaneError, match="needs at least 4"):
        L.lane_blocks((0,), 2)  # fewer cores than lanes: no split at all
    with pytest.raises(L.LaneError, match="needs at least 4"):  # 3 physical cores: 2 CPUs each
        L.lane_blocks(tuple(range(6)), 2, {c: (c % 3, c % 3 + 3) for c in range(6)})
    smt4 = {c: (c % 4, c % 4 + 4) for c in range(8)}
    assert [len(b) for b in L.lane_blocks(tuple(range(8)), 2, smt4)] == [4, 4]
    with pytest.raises(L.LaneError, match="--cores: 'a-3' is not N or N-M"):
        L.parse_cores("a-3")


@given(n_cores=st.integers(8, 128), n_lanes=st.integers(1, 2), base=st.integers(1024, 60000))
def test_lanes_never_share_a_core_port_or_directory(n_cores, n_lanes, base):
    specs = L.parse_lanes(";".join(f"{c}@{i}" for i, c in enumerate("abc"[:n_lanes])))
    lanes = L.allocate(specs, tuple(range(n_cores)), base, Path("/w"), Path("/o"))
    cores = [c for lane in lanes for c in lane.cores]
    assert len(cores) == len(set(cores))
    assert len({len(lane.cores) for lane in lanes}) == 1  # equal shares: no lane favoured
    ports = [p for lane in lanes for p in lane.ports(engines=8)]
    assert len(ports) == len(set(ports)) and max(ports) <= 65535
    dirs = [d for lane in lanes for d in (lane.work, lane.out)]
    assert len(dirs) == len(set(dirs))


def test_lane_command_line_pins_cores_and_names_everything_it_owns():
    lane = L.allocate(L.parse_lanes("a,b@1"), tuple(range(16)), 8000, Path("/w"),
                      Path("/o"))[0]
    argv = L.lane_argv(lane, "py", ["--rates", "1"])
    assert argv[0] == "py" and argv[1].endswith("bench/e2e/run.py")
    pairs = dict(zip(argv[2::2], argv[3::2], strict=False))
    assert pairs["--configs"] == "a,b" and pairs["--gpu"] == "1" and pairs["--port"] == "8000"
    assert pairs["--work"] == "/w/lane0-gpu1" and pairs["--out"] == "/o/lane0-gpu1"
    assert argv[-2:] == ["--rates", "1"]
    assert L.lane_env({})["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_per_lane_options_are_refused_after_the_separator(capsys):
    with pytest.raises(SystemExit):
        L.main(["--lanes", "a@0", "--", "--port", "9000"])
    assert "set per lane" in capsys.readouterr().err


def test_dry_run_prints_one_command_per_lane(capsys, monkeypatch):
    monkeypatch.setattr(L.host_cores, "host_siblings", lambda cores: {})  # this host's SMT aside
    assert L.main(["--lanes", "c@0;a,b@1", "--cores", "0-31", "--dry-run", "--", "--quick"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "0-15" in lines[0] and "16-31" in lines[1]
    assert all(ln.endswith("--quick") for ln in lines)


def _prepared(tmp_path: Path, cfg: str, lane: L.Lane):
    plan = on_gpu(load_plan(RESULTS / f"plan-{cfg}.yaml"), lane.gpu)
    opts = DeployOptions(run_dir=lane.work / cfg / "run",
                         mode=Mode.NO_MPS if cfg == "a" else Mode.MPS, port=lane.port,
                         engine_port_base=lane.port + 1, dummy_weights=True,
                         kv_pool=cfg == "c")
    return plan, prepare(plan, opts, dry_run=True)


def test_two_lanes_deploy_on_their_own_gpu_ports_mps_daemon_and_kv_ledger(tmp_path):
    c_lane, b_lane = L.allocate(L.parse_lanes("c@0;b@1"), tuple(range(32)), 8000,
                                tmp_path / "w", tmp_path / "o")
    c_plan, c = _prepared(tmp_path, "c", c_lane)
    b_plan, b = _prepared(tmp_path, "b", b_lane)
    assert c_plan.gpus_used == (0,) and b_plan.gpus_used == (1,)
    # one MPS daemon each, on its own GPU and its own pipe directory
    assert [g.uuids for g in c.mps_groups] == [("GPU-planned-0",)]
    assert [g.uuids for g in b.mps_groups] == [("GPU-planned-1",)]
    assert c.mps_groups[0].pipe_dir != b.mps_groups[0].pipe_dir
    for prep, group in ((c, c.mps_groups[0]), (b, b.mps_groups[0])):
        for x in prep.launches:
            env = dict(x.env)
            assert env["CUDA_MPS_PIPE_DIRECTORY"] == str(group.pipe_dir)
            assert env["CUDA_VISIBLE_DEVICES"] == "0"  # the daemon's own (only) device
    ports = [x.port for p in (c, b) for x in p.launches] + [c_lane.port, b_lane.port]
    assert len(ports) == len(set(ports))
    assert [p.gpu_index for p in c.kv_pools] == [0] and not b.kv_pools


def test_a_time_sliced_lane_on_gpu1_names_gpu1(tmp_path, monkeypatch):
    real = prepare_mod.planned_gpus  # a host in DEFAULT compute mode, as (a) needs

    def default_mode(plan, node):
        return [replace(g, compute_mode="default") for g in real(plan, node)]

    monkeypatch.setattr(prepare_mod, "planned_gpus", default_mode)
    lane = L.allocate(L.parse_lanes("a@1"), tuple(range(8)), 8100, tmp_path / "w",
                      tmp_path / "o")[0]
    _, a = _prepared(tmp_path, "a", lane)
    assert not a.mps_groups
    assert {dict(x.env)["CUDA_VISIBLE_DEVICES"] for x in a.launches} == {"1"}


def test_on_gpu_keeps_the_plan_and_refuses_what_it_cannot_move():
    plan = load_plan(RESULTS / "plan-c.yaml")
    assert on_gpu(plan, 0) is plan
    moved = on_gpu(plan, 1)
    assert moved.cluster.num_gpus == 2
    assert [(e.sm_pct, e.kv_bytes) for e in moved.engines] == [
        (e.sm_pct, e.kv_bytes) for e in plan.engines]
    with pytest.raises(ValueError, match="only a one-node plan"):
        on_gpu(moved, 1)


def test_seed_and_merge_move_only_the_lanes_own_new_files(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for name in ("bench.json", "plan-a.yaml", "a-r2.00.json", "c-r2.00.json"):
        (results / name).write_text(name)
    lane = L.allocate(L.parse_lanes("a@1"), tuple(range(8)), 8000, tmp_path / "w",
                      tmp_path / "o")[0]
    L.seed(lane, results)
    assert sorted(p.name for p in lane.out.iterdir()) == ["a-r2.00.json", "bench.json",
                                                          "plan-a.yaml"]
    since = (lane.out / "a-r2.00.json").stat().st_mtime
    (lane.out / "a-r1.00.json").write_text("new")
    (lane.out / "c-r1.00.json").write_text("not this lane's")
    os.utime(lane.out / "a-r1.00.json", (since + 5, since + 5))
    got = L.merge(lane, results, since + 1)
    assert [p.name for p in got] == ["a-r1.00.json"]
    assert not (results / "c-r1.00.json").exists()


def test_pack_logs_keeps_rates_not_measured_again(tmp_path):
    res = ResultsDir(tmp_path / "res")
    res.root.mkdir()
    old = tmp_path / "old"
    for tag in ("r2.00", "r3.00"):
        (old / tag).mkdir(parents=True)
        (old / tag / "requests.csv").write_text(f"old {tag}")
    e2e_run.pack_logs(res, "a", old)
    new = tmp_path / "new"
    for tag in ("r1.00", "r3.00"):
        (new / tag).mkdir(parents=True)
        (new / tag / "requests.csv").write_text(f"new {tag}")
    e2e_run.pack_logs(res, "a", new)
    with tarfile.open(res.logs_path("a")) as tar:
        got = {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers()}
    assert got == {"a/r1.00/requests.csv": "new r1.00", "a/r2.00/requests.csv": "old r2.00",
                   "a/r3.00/requests.csv": "new r3.00"}


def test_run_records_the_gpu_and_refuses_a_negative_one():
    args = e2e_run.parse_args(["--configs", "b", "--gpu", "1", "--lane", "b@gpu1"])
    dep = e2e_run.deployed_as("b", args)
    assert (dep.gpu, dep.lane) == (1, "b@gpu1")
    with pytest.raises(SystemExit):
        e2e_run.parse_args(["--gpu", "-1"])


def test_a_control_lane_may_repeat_a_configuration_into_its_own_directory(tmp_path):
    specs = L.parse_lanes("b@0;c@1:control")
    assert specs[1] == L.LaneSpec(("c",), 1, "control")
    with pytest.raises(L.LaneError, match="plain name"):
        L.parse_lanes("c@1:../x")
    results = tmp_path / "results"
    (results / "control").mkdir(parents=True)
    (results / "plan-c.yaml").write_text("plan")
    (results / "c-r2.00.json").write_text("main run")
    lanes = L.allocate(specs, tuple(range(8)), 8000, tmp_path / "w", tmp_path / "o")
    L.seed(lanes[1], results)  # the plan from RESULTS, no result file: control is empty
    assert sorted(p.name for p in lanes[1].out.iterdir()) == ["plan-c.yaml"]
    since = (lanes[1].out / "plan-c.yaml").stat().st_mtime
    (lanes[1].out / "c-r2.00.json").write_text("control run")
    os.utime(lanes[1].out / "c-r2.00.json", (since + 5, since + 5))
    got = L.merge(lanes[1], results, since + 1)
    assert got == [results / "control" / "c-r2.00.json"]
    assert (results / "c-r2.00.json").read_text() == "main run"
    L.pack(got, results, tmp_path / "back.tgz")
    with tarfile.open(tmp_path / "back.tgz") as tar:
        assert tar.getnames() == ["control/c-r2.00.json"]


def test_each_lane_gets_the_cores_near_its_gpu_when_numa_separates_them():
    """``near`` is per lane, in lane order (``nvml_near`` of the lanes' GPUs)."""
    cores = tuple(range(32))
    lanes = L.allocate(L.parse_lanes("a@1;c@0"), cores, 8000, Path("/w"), Path("/o"),
                       (tuple(range(16, 32)), tuple(range(16))))
    assert lanes[0].cores == tuple(range(16, 32)) and lanes[1].cores == tuple(range(16))
    one_node = L.allocate(L.parse_lanes("a@1;c@0"), cores, 8000, Path("/w"), Path("/o"),
                          (cores, cores))
    assert [lane.cores for lane in one_node] == [tuple(range(16)), tuple(range(16, 32))]


def test_hyperthread_siblings_stay_in_one_lane():
    """Linux's usual numbering: CPU c and c + 16 are the two threads of core c."""
    cores = tuple(range(32))
    sib = {c: (c % 16, c % 16 + 16) for c in cores}
    a, b = (lane.cores for lane in L.allocate(L.parse_lanes("a@0;c@1"), cores, 8000,
                                               Path("/w"), Path("/o"), siblings=sib))
    assert a == (*range(8), *range(16, 24)) and b == (*range(8, 16), *range(24, 32))
    for c in a:
        assert not set(sib[c]) & set(b)  # no physical core in both lanes
    assert L.lane_blocks(cores, 2) == (tuple(range(16)), tuple(range(16, 32)))  # no data


FAKE_RUN = """#!/usr/bin/env python3
import os, sys
args = sys.argv[2:]  # argv[1] is bench/e2e/run.py
get = lambda k: args[args.index(k) + 1]
for cfg in get("--configs").split(","):
    with open(os.path.join(get("--out"), f"{cfg}-r1.00.json"), "w") as f:
        f.write(f"{get('--gpu')} {get('--port')} {os.environ['CUDA_DEVICE_ORDER']}")
print("affinity", sorted(os.sched_getaffinity(0)))
sys.exit(3 if get("--gpu") == "1" else 0)
"""


def _fake_run(tmp_path: Path, script: str) -> tuple[Path, Path]:
    """An executable standing in for the lane's python (``script``) and an empty results
    directory."""
    fake = tmp_path / "fake-python"
    fake.write_text(script)
    fake.chmod(0o755)
    results = tmp_path / "results"
    results.mkdir()
    return fake, results


def test_run_lanes_starts_each_lane_pinned_and_merges_what_it_wrote(tmp_path, capsys):
    """The orchestration alone: a stand-in for run.py that writes one result file and exits
    (3 on GPU 1), so the lanes' start, pinning, merge and exit code can be checked."""
    fake, results = _fake_run(tmp_path, FAKE_RUN)
    (results / "bench.json").write_text("{}")
    cpu = min(os.sched_getaffinity(0))
    lanes = tuple(L.Lane(i, cfgs, gpu, sub, 8000 + 100 * i, (cpu,), tmp_path / f"w{i}",
                         tmp_path / f"o{i}")
                  for i, (cfgs, gpu, sub) in enumerate([(("a",), 0, ""), (("c",), 1, "ctl")]))
    code, got = L.run_lanes(lanes, str(fake), [], results)
    assert code == 3  # the worst lane's exit code
    assert sorted(p.relative_to(results).as_posix() for p in got) == [
        "a-r1.00.json", "ctl/c-r1.00.json"]
    assert (results / "a-r1.00.json").read_text() == "0 8000 PCI_BUS_ID"
    assert (results / "ctl" / "c-r1.00.json").read_text() == "1 8100 PCI_BUS_ID"
    out = capsys.readouterr().out
    assert f"[a@gpu0] affinity [{cpu}]" in out and f"[c@gpu1:ctl] affinity [{cpu}]" in out


def test_each_lane_keeps_its_own_output_unprefixed_in_its_work_folder(tmp_path, capsys):
    """lane.log beside the lane's deployments: what run.py printed, as it printed it."""
    fake, results = _fake_run(tmp_path, FAKE_RUN)
    cpu = min(os.sched_getaffinity(0))
    lane = L.Lane(0, ("a",), 0, "", 8000, (cpu,), tmp_path / "w0", tmp_path / "o0")
    L.run_lanes((lane,), str(fake), [], results)
    assert (lane.work / "lane.log").read_text() == f"affinity [{cpu}]\n"
    assert f"[a@gpu0] affinity [{cpu}]" in capsys.readouterr().out.splitlines()


def test_a_lane_that_cannot_start_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(L.host_cores, "nvml_near", lambda gpus: ())
    monkeypatch.setattr(L.host_cores, "host_siblings", lambda cores: {})
    code = L.main(["--lanes", "a@0", "--cores", "0-3", "--work", str(tmp_path / "w"),
                   "--merge-into", str(tmp_path / "results"), "--python",
                   str(tmp_path / "no-python")])
    assert code == 2
    assert "error: could not start a@gpu0" in capsys.readouterr().err


def test_the_report_sets_a_control_lane_beside_the_main_one(tmp_path, latency):
    from bench.e2e.predict import deployed_default, predict_one
    from bench.e2e.report import control_lines
    from bench.e2e.results import Measured
    from bench.e2e.workload import H100_SET
    from tests.bench.helpers import config_plans, results_dir

    small = replace(H100_SET, duration_s=4.0, rate_scales=(1.0,))
    res = results_dir(tmp_path, small, config_plans(small, latency))
    pred = predict_one(res, "a", 1.0, latency, write=False)
    ctl = ResultsDir(res.root / "control")
    ctl.root.mkdir()
    assert control_lines(res) == []
    for where, lane, att in ((res, "a@gpu0", 0.9), (ctl, "a@gpu1:control", 0.85)):
        summary = {**pred["summary"], "overall": {**pred["summary"]["overall"],
                                                  "slo_attainment": att}}
        where.save_measured(Measured("a", 1.0, pred["trace_digest"],
                                     replace(deployed_default("a"), lane=lane), summary, {}))
    text = "\n".join(control_lines(res))
    assert "| (a) | 1 | a@gpu0 | a@gpu1:control | 90.0% / 85.0% (-5.0 pt) |" in text


RESUMING_RUN = """#!/usr/bin/env python3
import os, sys
args = sys.argv[2:]
get = lambda k: args[args.index(k) + 1]
for cfg in get("--configs").split(","):
    out = os.path.join(get("--out"), f"{cfg}-r1.00.json")
    if not os.path.exists(out):  # run.py resumes: a result file present is not measured
        with open(out, "w") as f:
            f.write(get("--lane"))
"""


def test_a_later_call_on_the_same_machine_starts_from_empty_lane_folders(tmp_path):
    """Call 2 runs (a) as a control in lane 1; call 3 runs the main (a) in lane 1 again: the
    control's result file left in the lane's folder must not pass for the main run's."""
    fake, results = _fake_run(tmp_path, RESUMING_RUN)
    cpu = min(os.sched_getaffinity(0))

    def lane(subdir: str) -> L.Lane:
        return L.Lane(1, ("a",), 1, subdir, 8100, (cpu,), tmp_path / "w1", tmp_path / "o1")

    stale = tmp_path / "w1" / "a" / "r1.00" / "requests.csv"
    _, got = L.run_lanes((lane("control"),), str(fake), [], results)
    assert [p.relative_to(results).as_posix() for p in got] == ["control/a-r1.00.json"]
    stale.parent.mkdir(parents=True)
    stale.write_text("the control's requests")
    _, got = L.run_lanes((lane(""),), str(fake), [], results)
    assert [p.relative_to(results).as_posix() for p in got] == ["a-r1.00.json"]
    assert (results / "a-r1.00.json").read_text() == "a@gpu1"
    assert not stale.exists()  # run.py would pack it into a-requests.tgz


def test_near_gpu_cores_only_when_no_lane_gets_fewer_than_an_even_split():
    """A host whose process sees cores 0-31 while NVML puts GPU 1 near 28-55: its near set
    here is 4 cores, so the lanes split 0-31 evenly instead of 4 cores each."""
    cores = tuple(range(32))
    lopsided = (tuple(range(28)), tuple(range(28, 56)))
    lanes = L.allocate(L.parse_lanes("a@0;c@1"), cores, 8000, Path("/w"), Path("/o"),
                       lopsided)
    assert [lane.cores for lane in lanes] == [tuple(range(16)), tuple(range(16, 32))]


STUBBORN_RUN = """#!/usr/bin/env python3
import os, signal, sys, time
args = sys.argv[2:]
get = lambda k: args[args.index(k) + 1]
signal.signal(signal.SIGINT, signal.SIG_IGN)  # a lane slow to stop its deployment
out = get("--out")
with open(os.path.join(out, "a-r1.00.json"), "w") as f:
    f.write("measured before the stop")
open(os.path.join(out, "ready"), "w").close()
time.sleep(30)
open(os.path.join(out, "late"), "w").close()
"""


def test_a_stop_kills_lanes_that_outlive_the_grace_and_still_merges(tmp_path):
    """`timeout` SIGTERMs lanes.py and SIGKILLs it 15 s later: the lanes must be gone and
    their results merged well before then, or nothing comes back from the GPU host."""
    fake, results = _fake_run(tmp_path, STUBBORN_RUN)
    lane = L.Lane(0, ("a",), 0, "", 8000, tuple(sorted(os.sched_getaffinity(0))),
                  tmp_path / "w", tmp_path / "o")

    def terminate_when_ready():
        while not (lane.out / "ready").exists():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=terminate_when_ready, daemon=True).start()
    code, got = L.run_lanes((lane,), str(fake), [], results, grace_s=0.5)
    assert code == 1  # killed
    assert got == [results / "a-r1.00.json"]
    assert not (lane.out / "late").exists()
    assert signal.getsignal(signal.SIGTERM) == before  # lanes.py's handler removed



def test_reset_stops_an_engine_a_killed_lane_left_running(tmp_path):
    """A lane killed past its limit leaves an engine (its own process group) running; the
    next call stops it through the run directory's state before emptying the folders."""
    import sys

    from fineserve.runtime import procs
    from fineserve.runtime.state import DeployState, EngineRecord, Mode, Phase, ProcRecord, RunDir

    lane = L.Lane(0, ("a",), 0, "", 8000, (0,), tmp_path / "w", tmp_path / "o")
    run = RunDir(lane.work / "a" / "run")
    child = procs.spawn([sys.executable, "-c", "import time; time.sleep(60)"],
                        dict(os.environ), tmp_path / "e.log")
    try:
        eng = procs.identify(child.pid)
        dead = ProcRecord(pid=child.pid, start_ticks=eng.start_ticks + 7)  # the killed deploy
        run.create()
        run.write_state(DeployState(
            mode=Mode.CPU, phase=Phase.RUNNING, deploy=dead, gateway_url="http://127.0.0.1:1",
            engines=[EngineRecord(engine_id="a-0", model="a", port=1, gpus=[0], sm_pct=50,
                                  log="x.log", proc=ProcRecord.of(eng))], mps=[]))
        lane.out.mkdir(parents=True)
        (lane.out / "a-r1.00.json").write_text("an earlier call's")
        L.reset(lane)
        assert child.wait(10) is not None  # stopped, not left holding the GPU
        assert not lane.work.exists() and not lane.out.exists()
        assert L.stop_deployments(lane.work) == []  # nothing left: nothing to say
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)


def test_a_variant_lane_deploys_its_own_plan_with_the_roots_workload(tmp_path):
    """``c@1:oversub`` takes RESULTS/oversub/plan-c.yaml when it exists (bench.json and
    calibration.json from RESULTS); the main lane and a control without one take the root's."""
    results = tmp_path / "results"
    (results / "oversub").mkdir(parents=True)
    (results / "control").mkdir()
    for name in ("bench.json", "calibration.json", "plan-a.yaml", "plan-c.yaml"):
        (results / name).write_text(f"root {name}")
    (results / "oversub" / "plan-c.yaml").write_text("variant plan-c")
    (results / "oversub" / "bench.json").write_text("not the workload a lane takes")
    lanes = L.allocate(L.parse_lanes("c@0;c@1:oversub;c@2:control"), tuple(range(12)), 8000,
                       tmp_path / "w", tmp_path / "o")
    for lane in lanes:
        L.seed(lane, results)
    got = [{p.name: p.read_text() for p in lane.out.iterdir()} for lane in lanes]
    root = {n: f"root {n}" for n in ("bench.json", "calibration.json", "plan-a.yaml",
                                     "plan-c.yaml")}
    assert got[0] == root == got[2]
    assert got[1] == {**root, "plan-c.yaml": "variant plan-c"}
    # what the variant lane merges back goes to its own folder; its seeded plan is not new
    since = (lanes[1].out / "plan-c.yaml").stat().st_mtime
    (lanes[1].out / "c-r3.00.json").write_text("variant run")
    os.utime(lanes[1].out / "c-r3.00.json", (since + 5, since + 5))
    assert L.merge(lanes[1], results, since + 1) == [results / "oversub" / "c-r3.00.json"]
    assert (results / "plan-c.yaml").read_text() == "root plan-c.yaml"


# the next H100 call (results-r4): E2E_RESULTS=bench/e2e/results-r4 E2E_RATES=R4_RATES
# bash bench/gpu_session.sh "e2e-lanes:R4_LANES"
R4 = RESULTS.parent / "results-r4"
R4_LANES = "a@0;c@1;b@2;c@3:oversub"
R4_RATES = "1,2,2.5,2.75,3,3.5"


def test_the_results_r4_call_seeds_plans_deploys_and_merges_every_lane(tmp_path, monkeypatch):
    """Preflight of the GPU call on the committed results-r4: each lane's run.py arguments,
    workload and seeded plan as run.py reads them (none planned again), the deployment each
    lane prepares on its own GPU (MPS shares, KV pool, time slicing), and where its result
    files land - so the call cannot fail on a typo in the lanes, the rates or a plan."""
    real = prepare_mod.planned_gpus  # the H100 host runs its GPUs in DEFAULT compute mode
    monkeypatch.setattr(prepare_mod, "planned_gpus", lambda plan, node: [
        replace(g, compute_mode="default") for g in real(plan, node)])
    lanes = L.allocate(L.parse_lanes(R4_LANES), tuple(range(64)), 8000, tmp_path / "w",
                       tmp_path / "o")
    results = tmp_path / "results-r4"
    shutil.copytree(R4, results)
    since = time.time()
    sm = {}
    for lane in lanes:
        L.seed(lane, results)
        argv = L.lane_argv(lane, "python", ["--rates", R4_RATES, "--budget-s", "520"])
        args = e2e_run.parse_args(argv[2:])
        res = ResultsDir(lane.out)
        bench = e2e_run.check_bench(res, e2e_run.choose_bench(args))
        assert bench.rate_scales == args.only_scales == (1, 2, 2.5, 2.75, 3, 3.5)
        (cfg,) = lane.configs
        seeded = res.plan_path(cfg).read_text()
        plan = e2e_run.config_plan(res, bench, cfg, cpu=False)
        assert res.plan_path(cfg).read_text() == seeded  # loaded, not planned again
        dep = e2e_run.deployed_as(cfg, args)
        moved = on_gpu(as_deployed(plan, dep.kv_pool), lane.gpu)
        opts = DeployOptions(run_dir=lane.work / cfg / "run", port=lane.port,
                             mode=Mode.NO_MPS if dep.no_mps else Mode.MPS,
                             engine_port_base=lane.port + 1, dummy_weights=True,
                             kv_pool=dep.kv_pool, scheduler_policy=dep.policy)
        prep = prepare(moved, opts, dry_run=True)
        envs = {x.engine_id: dict(x.env) for x in prep.launches}
        assert len(envs) == 4 and {x.gpus for x in prep.launches} == {(lane.gpu,)}
        sm[lane.label] = {e: int(env.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", 100))
                          for e, env in envs.items()}
        assert [p.gpu_index for p in prep.kv_pools] == ([lane.gpu] if cfg == "c" else [])
        (lane.out / f"{cfg}-r3.00.json").write_text(lane.label)
        os.utime(lane.out / f"{cfg}-r3.00.json", (since + 5, since + 5))
    assert set(sm["a@gpu0"].values()) == {100}  # time-sliced, no MPS share
    assert sum(sm["c@gpu1"].values()) == 100 and 97 <= sum(sm["b@gpu2"].values()) <= 100
    assert sum(sm["c@gpu3:oversub"].values()) == 135
    assert sm["c@gpu3:oversub"]["chat-8b-fp8-0"] > sm["c@gpu1"]["chat-8b-fp8-0"]
    got = [p for lane in lanes for p in L.merge(lane, results, since + 1)]
    L.pack(got, results, tmp_path / "e2e-lanes.tgz")
    with tarfile.open(tmp_path / "e2e-lanes.tgz") as tar:
        assert sorted(tar.getnames()) == ["a-r3.00.json", "b-r3.00.json", "c-r3.00.json",
                                          "oversub/c-r3.00.json"]
    assert (results / "c-r3.00.json").read_text() == "c@gpu1"
    assert (results / "oversub" / "c-r3.00.json").read_text() == "c@gpu3:oversub"
