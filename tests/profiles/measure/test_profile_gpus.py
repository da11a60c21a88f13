"""bench/profile_h100.py over several GPUs: one child per GPU, shard folders, the merge, the
GPU-kind check. Engines are a stand-in speaking the worker's file protocol (no GPU needed)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fineserve.errors import SpecError
from fineserve.profiles.measure.cores import host_siblings, physical_groups
from fineserve.profiles.measure.fanout import Child, run_children
from fineserve.profiles.measure.mps_daemon import MpsError
from fineserve.profiles.measure.shards import merge_shard
from fineserve.profiles.schema import load_profile
from fineserve.runtime import nvml
from fineserve.runtime.nvml import GpuInfo
from tests.profiles.measure.standin import stand_in_python

REPO = Path(__file__).resolve().parents[3]
H100_BYTES = 81559 << 20  # NVML's memory total of an H100 SXM
SCRIPT = REPO / "bench" / "profile_h100.py"

STAND_IN = r'''
import json, os, sys
from fineserve.profiles.measure.records import (EngineRecord, PointRecord, ProfileJob,
                                                append, read_job)
job = read_job(sys.argv[-1], ProfileJob)
with open(os.environ["STAND_IN_LOG"], "a") as f:
    f.write(json.dumps({"sm": job.label.sm_pct, "weights": job.label.weights,
                        "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
                        "cpus": sorted(os.sched_getaffinity(0)),
                        "compile_threads": os.environ.get("TORCHINDUCTOR_COMPILE_THREADS"),
                        "points": len(job.points)}) + "\n")
append(job.results, EngineRecord(job.label, 1.0, True, vllm_version="stand-in"))
for p in job.points:
    t = 0.001 * p.batch * p.tokens / job.label.sm_pct
    append(job.results, PointRecord(job.label, p.phase, p.batch, p.tokens, (t, t), "stand-in"))
'''

GRID = ["--sm", "100,50", "--prefill-tokens", "64,128", "--prefill-batches", "1",
        "--decode-batches", "1,2", "--decode-contexts", "64", "--repeats", "2",
        "--decode-tokens", "8", "--decode-repeats", "2", "--prefill-samples", "1",
        "--decode-samples", "1"]


def profile(tmp_path: Path, python: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(SCRIPT), "--model", "llama-3.1-8b", "--precisions",
               "bf16,fp8", "--gpu", "h100", "--no-mps", "--sequential", "--engine-python",
               str(python), "--out", str(tmp_path / "out"), "--cache-dir",
               str(tmp_path / "cache"), *GRID, *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False,
                          env={**_env(), "STAND_IN_LOG": str(tmp_path / "calls.jsonl")})


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}


def calls(tmp_path: Path) -> list[dict]:
    path = tmp_path / "calls.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_two_gpus_measure_a_precision_each_and_merge_into_one_output(tmp_path):
    cpus = tuple(sorted(os.sched_getaffinity(0)))
    python = stand_in_python(tmp_path, STAND_IN)
    run = profile(tmp_path, python, "--gpus", "2")
    assert run.returncode == 0, run.stdout + run.stderr
    seen = calls(tmp_path)
    assert sorted((c["weights"], c["sm"]) for c in seen) == \
        [("bf16", 50), ("bf16", 100), ("fp8", 50), ("fp8", 100)]
    gpus = {c["weights"]: {x["gpu"] for x in seen if x["weights"] == c["weights"]} for c in seen}
    assert gpus["bf16"] != gpus["fp8"] and all(len(g) == 1 for g in gpus.values())
    folder = tmp_path / "out" / "H100-SXM-80GB" / "llama-3.1-8b"
    for precision in ("bf16.kv-bf16", "fp8.kv-bf16"):
        table = load_profile(folder / f"{precision}.csv")
        assert {p.sm_pct for p in table} == {50.0, 100.0}
        assert "stand-in" in (folder / f"{precision}.meta.json").read_text()
    assert "[gpu0]" in run.stdout and "[gpu1]" in run.stdout
    if len(physical_groups(cpus, host_siblings(cpus))) >= 2:  # each GPU its own host cores
        cores = {c["weights"]: tuple(c["cpus"]) for c in seen}
        assert not set(cores["bf16"]) & set(cores["fp8"])
        assert all(c["compile_threads"] == str(len(c["cpus"])) for c in seen)
    assert not (tmp_path / "out.shards").exists() or not any((tmp_path / "out.shards").iterdir())
    again = profile(tmp_path, python, "--gpus", "2")  # resumable: nothing left to measure
    assert again.returncode == 0 and len(calls(tmp_path)) == 4


def test_a_bad_gpu_count_is_a_one_line_error(tmp_path):
    python = stand_in_python(tmp_path, STAND_IN)
    run = profile(tmp_path, python, "--gpus", "two")
    assert run.returncode == 2 and "--gpus: 'two'" in run.stderr and calls(tmp_path) == []


def _script():
    spec = importlib.util.spec_from_file_location("profile_h100", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("names", "message"), [
    (["NVIDIA H100 80GB HBM3", "NVIDIA H200"], "mixes GPU kinds"),
    (["NVIDIA H200", "NVIDIA H200"], "H100-SXM-80GB: stopped before measuring"),
])
def test_the_reference_set_stops_on_a_host_that_is_not_all_h100(monkeypatch, names, message):
    module = _script()
    host = [GpuInfo(i, f"GPU-{i}", n, "default", (143771 if "H200" in n else 81559) << 20, 1)
            for i, n in enumerate(names)]
    monkeypatch.setattr(nvml, "probe_gpus", lambda: host)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    args = module.parser().parse_args(["--reference-set", "--gpus", "all"])
    args.expect_gpu = "H100-SXM-80GB"
    with pytest.raises(SpecError, match=message):
        module.gpu_count(args)


def test_all_gpus_of_one_kind_are_used(monkeypatch):
    module = _script()
    host = [GpuInfo(i, f"GPU-{i}", "NVIDIA H100 80GB HBM3", "default", H100_BYTES, 1)
            for i in range(2)]
    monkeypatch.setattr(nvml, "probe_gpus", lambda: host)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    args = module.parser().parse_args(["--reference-set", "--gpus", "all"])
    args.expect_gpu = "H100-SXM-80GB"
    n, devices, label = module.gpu_count(args)
    assert (n, [d.uuid for d in devices], label) == (2, ["GPU-0", "GPU-1"], "H100-SXM-80GB")


def test_children_are_interleaved_by_line_and_killed_at_the_deadline(tmp_path):
    import io
    import time

    sink = io.StringIO()
    quick = Child("a", (sys.executable, "-c", "print('one'); print('two')"), {})
    stuck = Child("b", (sys.executable, "-c", "import time; print('up', flush=True); "
                                              "time.sleep(600)"), {})
    codes = run_children([quick, stuck], time.time() + 3, sink)
    assert codes[0] == 0 and codes[1] < 0  # the stuck one was killed, not waited for
    lines = sink.getvalue().splitlines()
    assert "[a] one" in lines and "[a] two" in lines and "[b] up" in lines


SLOW_STAND_IN = r'''
import os, sys, time
from fineserve.profiles.measure.records import (EngineRecord, PointRecord, ProfileJob,
                                                append, read_job)
job = read_job(sys.argv[-1], ProfileJob)
with open(os.environ["STAND_IN_PIDS"], "a") as f:
    f.write(f"{os.getpid()}\n")
append(job.results, EngineRecord(job.label, 1.0, True, vllm_version="stand-in"))
p = job.points[0]
append(job.results, PointRecord(job.label, p.phase, p.batch, p.tokens, (0.01, 0.01), "stand-in"))
time.sleep(600)  # an engine stuck measuring
'''


def test_sigterm_stops_every_gpu_and_keeps_what_was_measured(tmp_path):
    import signal
    import time

    python = stand_in_python(tmp_path, SLOW_STAND_IN)
    pids = tmp_path / "pids"
    command = [sys.executable, str(SCRIPT), "--model", "llama-3.1-8b", "--precisions",
               "bf16,fp8", "--gpu", "h100", "--no-mps", "--sequential", "--engine-python",
               str(python), "--out", str(tmp_path / "out"), "--cache-dir",
               str(tmp_path / "cache"), "--gpus", "2", *GRID]
    parent = subprocess.Popen(command, env={**_env(), "STAND_IN_PIDS": str(pids)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(600):  # both engines up (bounded wait, not a timing assertion)
            if pids.exists() and len(pids.read_text().split()) == 2:
                break
            time.sleep(0.1)
        assert pids.exists() and len(pids.read_text().split()) == 2
        parent.send_signal(signal.SIGTERM)  # what `timeout` sends at the step's limit
        output, _ = parent.communicate(timeout=120)
    finally:
        if parent.poll() is None:
            parent.kill()
    for pid in map(int, pids.read_text().split()):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # no engine left running
    folder = tmp_path / "out" / "H100-SXM-80GB" / "llama-3.1-8b"
    for precision in ("bf16.kv-bf16", "fp8.kv-bf16"):  # each GPU's first point, merged
        assert '"stand-in"' in (folder / f"{precision}.jsonl").read_text()
    assert "merged 2 shard folders" in output


def test_a_job_goes_back_to_the_gpu_whose_caches_hold_its_model(tmp_path):
    module = _script()
    cache = tmp_path / "cache"
    job = module.Job("llama-3.1-8b", ("fp8",), None)
    assert module.cache_home(cache, job, 2) is None  # nothing cached yet
    (tmp_path / "cache-gpu1" / "models" / "llama-3.1-8b-fp8").mkdir(parents=True)
    assert module.cache_home(cache, job, 2) == 1
    assert module.cache_home(cache, job, 1) is None  # GPU 1 is not in this run
    (tmp_path / "cache-gpu0" / "models" / "llama-3.1-8b-fp8").mkdir(parents=True)
    assert module.cache_home(cache, job, 2) is None  # warm on both: the balance decides
    for precision, k in (("bf16", 1), ("fp8", 0)):  # the reverse of the longest-first split
        folder = tmp_path / f"cache-gpu{k}" / "models" / f"llama-3.1-8b-{precision}"
        folder.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cache-gpu1" / "models" / "llama-3.1-8b-fp8").rmdir()
    run = profile(tmp_path, stand_in_python(tmp_path, STAND_IN), "--gpus", "2")
    assert run.returncode == 0, run.stdout + run.stderr
    assert {(c["weights"], c["gpu"]) for c in calls(tmp_path)} == {("bf16", "1"), ("fp8", "0")}


def test_a_shard_killed_while_copying_merges_nothing_twice(tmp_path, monkeypatch):
    module = _script()
    source = tmp_path / "results" / "H100-SXM-80GB" / "llama-3.1-8b"
    source.mkdir(parents=True)
    for precision in ("bf16.kv-bf16", "fp8.kv-bf16"):
        (source / f"{precision}.jsonl").write_text('{"old": 1}\n')
    shard = tmp_path / "out.shards" / "0"
    jobs = [module.Job("llama-3.1-8b", ("bf16", "fp8"), None)]
    real = module.shutil.copyfile
    copies = []

    def copy_then_die(src, dst):
        if copies:
            raise KeyboardInterrupt  # the kill lands on the second copy
        copies.append(dst)
        return real(src, dst)

    monkeypatch.setattr(module.shutil, "copyfile", copy_then_die)
    with pytest.raises(KeyboardInterrupt):
        module.resume_from(tmp_path / "results", shard, jobs)
    out = tmp_path / "out"
    (out / "H100-SXM-80GB" / "llama-3.1-8b").mkdir(parents=True)
    for precision in ("bf16.kv-bf16", "fp8.kv-bf16"):
        (out / "H100-SXM-80GB" / "llama-3.1-8b" / f"{precision}.jsonl").write_text('{"old": 1}\n')
    assert merge_shard(shard, out) == ()  # the copies are not new records
    for precision in ("bf16.kv-bf16", "fp8.kv-bf16"):
        text = (out / "H100-SXM-80GB" / "llama-3.1-8b" / f"{precision}.jsonl").read_text()
        assert text == '{"old": 1}\n'


def test_one_gpu_of_two_pins_the_daemon_and_engines_to_it(monkeypatch, tmp_path):
    module = _script()
    host = [GpuInfo(i, f"GPU-{i}", "NVIDIA H100 80GB HBM3", "default", H100_BYTES, 1)
            for i in range(2)]
    monkeypatch.setattr(nvml, "probe_gpus", lambda: host)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # restored after: main() sets it
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(module.signal, "signal", lambda *a: None)  # pytest's own handlers
    seen = []

    def daemon(root):
        seen.append(os.environ.get("CUDA_VISIBLE_DEVICES"))
        raise MpsError("stop here")

    monkeypatch.setattr(module.mps_daemon, "ensure_daemon", daemon)
    monkeypatch.setattr(sys, "argv", ["profile_h100.py", "--gpus", "1", "--out",
                                      str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")])
    assert module.main() == 2
    assert seen == ["GPU-0"]  # not every GPU of the host (unset: the daemon takes both)
