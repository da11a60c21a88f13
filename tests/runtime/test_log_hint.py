"""The start-failure hint quotes a log's root cause, not vLLM's closing line."""

from __future__ import annotations

from pathlib import Path

from fineserve.runtime.gateway_process import log_hint
from fineserve.runtime.worker import ManagedProcess, ProcessSpec

VLLM_OOM = """\
INFO 11-26 07:01:02 [model_runner.py:1] Loading model
(EngineCore_DP0 pid=123) ERROR [core.py:708] EngineCore failed to start.
(EngineCore_DP0 pid=123) ERROR [core.py:708] Traceback (most recent call last):
(EngineCore_DP0 pid=123) ERROR [core.py:708]   File "core.py", line 699, in run
(EngineCore_DP0 pid=123) ERROR [core.py:708]     engine_core = EngineCoreProc(*a)
(EngineCore_DP0 pid=123) ERROR [core.py:708] torch.OutOfMemoryError: CUDA out of memory.
Traceback (most recent call last):
  File "api_server.py", line 10, in <module>
RuntimeError: Engine core initialization failed. See root cause above.
"""


def _proc(tmp_path: Path, text: str) -> ManagedProcess:
    log = tmp_path / "engine.log"
    log.write_text(text)
    return ManagedProcess(ProcessSpec("engine-x", ("true",), {}, log, 8001))


def test_hint_names_the_first_exception_after_a_traceback(tmp_path: Path) -> None:
    hint = log_hint(_proc(tmp_path, VLLM_OOM))
    assert "torch.OutOfMemoryError: CUDA out of memory" in hint
    assert "See root cause above" not in hint


def test_hint_without_traceback_is_the_last_line(tmp_path: Path) -> None:
    assert log_hint(_proc(tmp_path, "starting\nport 8001 already in use\n")).endswith(
        "port 8001 already in use")


def test_hint_for_an_empty_log_points_at_it(tmp_path: Path) -> None:
    assert log_hint(_proc(tmp_path, "")).startswith("see ")
