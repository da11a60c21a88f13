"""bench/e2e/diagnose.py: an engine's root cause reaches the lane log, not only the last line
of its log (which for vLLM says only "See root cause above")."""

from __future__ import annotations

from bench.e2e import diagnose as D

# the shape of a vLLM 0.26 engine log when the engine core runs out of memory at start-up
VLLM_OOM = """INFO 11-26 08:00:00 [api_server.py:1] vLLM API server version 0.26.0
WARNING 11-26 08:00:01 [utils.py:2] some warning
INFO 11-26 08:00:30 [gpu_model_runner.py:3] Capturing CUDA graphs (decode, FULL)
ERROR 11-26 08:00:40 [core.py:708] EngineCore failed to start.
(EngineCore_DP0 pid=7) Traceback (most recent call last):
(EngineCore_DP0 pid=7)   File "/x/vllm/v1/engine/core.py", line 699, in run_engine_core
""" + "".join(f'(EngineCore_DP0 pid=7)   File "/x/f{i}.py", line {i}, in g{i}\n'
              for i in range(120)) + """(EngineCore_DP0 pid=7) torch.OutOfMemoryError: CUDA out \
of memory. Tried to allocate 2.00 GiB
(EngineCore_DP0 pid=7) during CUDA graph capture
Traceback (most recent call last):
  File "/x/vllm/entrypoints/openai/api_server.py", line 1, in <module>
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""


def test_the_first_traceback_is_kept_to_its_exception_line():
    got = D.first_cause(VLLM_OOM.splitlines())
    assert got[0].startswith("WARNING")  # a few lines of context before it
    assert any("EngineCore failed to start" in ln for ln in got)
    assert any("torch.OutOfMemoryError: CUDA out of memory" in ln for ln in got)
    assert not any("See root cause above" in ln for ln in got)  # the second traceback
    assert len(got) <= D.MOST + 1 and any("lines left out" in ln for ln in got)
    assert D.first_cause(["INFO all well", "INFO serving"]) == []


def test_engine_failures_name_each_failed_engine_log(tmp_path):
    logs = tmp_path / "run" / "logs"
    logs.mkdir(parents=True)
    (logs / "engine-chat-8b.log").write_text(VLLM_OOM)
    (logs / "engine-edge-3b.log").write_text("INFO started\nINFO serving\n")
    (logs / "gateway.log").write_text("ValueError: not an engine\n")
    got = D.engine_failures(tmp_path / "run")
    assert got[0] == f"--- {logs / 'engine-chat-8b.log'}: from its first error ---"
    assert sum(ln.startswith("---") for ln in got) == 1
    assert any("OutOfMemoryError" in ln for ln in got)


def test_no_nvidia_smi_no_lines(monkeypatch):
    monkeypatch.setattr(D.shutil, "which", lambda name: None)
    assert D.gpu_processes() == []
