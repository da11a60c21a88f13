"""The engine worker: ``python -m fineserve.profiles.measure.worker {profile|load} JOB.json``.

One process per engine, because MPS fixes a process's SM share when it initialises CUDA. It
starts the engine, appends an ``EngineRecord``, then one record per measured point (or per
interference phase), and stops cleanly before the job's deadline. Exit codes: 0 done or out of
time, 3 the engine did not start (the record says why; also when the memory it needs did
not become free: ``wait_for_memory``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fineserve.profiles.measure import engine as eng
from fineserve.profiles.measure.records import (
    DECODE,
    LATE_NOTE,
    PREFILL,
    EngineArgs,
    EngineRecord,
    InterferenceJob,
    LoadRecord,
    PointRecord,
    PointSpec,
    ProfileJob,
    append,
    method_name,
    read_job,
)
from fineserve.profiles.measure.stats import SPREAD_TARGET, medians_of, rel_spread
from fineserve.profiles.measure.telemetry import GpuProbe, Sample, summarize
from fineserve.profiles.measure.timing import MIN_DECODE_TOKENS, window_tokens
from fineserve.runtime.engine_report import HIGH_RATIO

SAFETY_S = 5.0  # kept free before the deadline for shutting the engine down
CHECK_RUNS = 3  # lone-prompt runs per cross-check (median)
MEMORY_WAIT_S = 45.0  # longest wait for the planned memory to be free before starting
GIB = 1 << 30


def wait_for_memory(need: int, until: float, free: Callable[[], int | None],
                    poll_s: float = 1.0) -> str | None:
    """Wait until ``free()`` bytes >= ``need`` or ``until`` (epoch seconds). None: go
    ahead (enough free, no need, or no NVML); else why not, for the engine record."""
    while True:
        have = free()
        if not need or have is None or have >= need:
            return None
        if time.time() + poll_s > until:
            return (f"not enough free device memory to start: {have / GIB:.1f} GiB free, "
                    f"{need / GIB:.1f} GiB planned")
        time.sleep(poll_s)


def _start(job: ProfileJob | InterferenceJob) -> tuple[Any, EngineRecord]:
    """Start the engine and describe it; on failure the record carries the error."""
    device = eng.device_identity(job.device)
    record = EngineRecord(
        label=job.label, start_s=0.0, cuda_graphs=not job.engine.enforce_eager,
        device_name=device.name, driver=device.driver, device_uuid=device.uuid,
        host_cpus=len(os.sched_getaffinity(0)),
        date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **eng.versions(),
    )  # fmt: skip
    if isinstance(job, ProfileJob) and job.memory_bytes:
        until = min(time.time() + MEMORY_WAIT_S, job.deadline - SAFETY_S)
        short = wait_for_memory(job.memory_bytes, until,
                                lambda: eng.device_memory_free(job.device))
        if short is not None:
            return None, replace(record, error=short)
    # NVML's used memory is the device's: in a wave, engines start side by side and the
    # difference would count theirs too, so no footprint there (torch's figure still sizes it)
    base = None if getattr(job, "control", "") else eng.device_memory_used(job.device)
    t0 = time.perf_counter()
    try:
        llm = eng.start_engine(job.engine, job.device)
    except Exception as exc:  # noqa: BLE001 - any start failure is reported, not raised
        return None, replace(record, start_s=time.perf_counter() - t0,
                             error=f"{type(exc).__name__}: {exc}"[:500])
    start_s = time.perf_counter() - t0
    info = eng.probe(llm)
    used = eng.device_memory_used(job.device)
    footprint = used - base if used is not None and base is not None else None
    weights, kv = info.get("weight_bytes"), info.get("kv_cache_bytes")
    overhead = footprint - weights - kv if None not in (footprint, weights, kv) else None
    return llm, replace(
        record, start_s=start_s, block_size=info.get("spec_block_size") or info.get("block_size"),
        num_blocks=info.get("num_blocks"), page_size_bytes=info.get("page_size_bytes"),
        kv_bytes_per_token=info.get("kv_bytes_per_token"), kv_cache_bytes=kv,
        weight_bytes=weights, footprint_bytes=footprint, overhead_bytes=overhead,
        torch_reserved_bytes=info.get("torch_reserved_bytes"),
        async_scheduling=info.get("async_scheduling"), probe_error=info.get("probe_error"),
    )  # fmt: skip


def wrong_weights(held: int | None, planned: int) -> str | None:
    """Why an engine holding ``held`` weight bytes is not the planned precision: the int4
    engines of 2026-11-26 held 15 GiB (fp16, unquantized) for 5.3 GiB planned and were
    measured as int4 for a day. None: as planned, or nothing to compare."""
    if not planned or not held or held <= planned * HIGH_RATIO:
        return None
    return (f"engine holds {held / GIB:.1f} GiB of weights, {planned / GIB:.1f} GiB planned: "
            "not the planned precision (quantization not applied?)")


@dataclass(slots=True)
class LeadReference:
    """The blocker's step on an idle engine (``engine.lead_reference``), lowered to any
    shorter one seen since: a late stamp only lengthens it (``timing.late_lead``)."""

    seconds: float | None = None

    def see(self, lead: float | None, late: bool) -> None:
        if lead is not None and not late and self.seconds is not None:
            self.seconds = min(self.seconds, lead)


def _measure(
    llm: Any, prompts: eng.Prompts, job: ProfileJob, point: PointSpec, floor: float | None,
    lead: LeadReference | None = None, timed: bool = False, probe: GpuProbe | None = None,
) -> PointRecord:  # fmt: skip
    """One untimed run of the point's shape (caches, allocator, clocks settle), then
    ``repeats`` timed repeats of ``samples`` runs each (a repeat is their median).
    ``timed``: prefill steps are timed on the device (``engine.time_steps``), switched on
    for the point's runs only. ``probe``: the GPU is read after every run (telemetry.py)."""
    timed = timed and point.phase == PREFILL
    if timed:
        timed = eng.time_steps(llm, True)
    try:
        return _runs(llm, prompts, job, point, floor, lead, timed, probe)
    finally:
        if timed:
            modes = ", ".join(f"{k} x{n}" for k, n in sorted(eng.graph_modes(llm).items()))
            print(f"{job.label} prefill {point.batch} x {point.tokens}: CUDA-graph modes "
                  f"{modes or '?'}", file=sys.stderr, flush=True)
            eng.time_steps(llm, False)


def _runs(
    llm: Any, prompts: eng.Prompts, job: ProfileJob, point: PointSpec, floor: float | None,
    lead: LeadReference | None, timed: bool, probe: GpuProbe | None = None,
) -> PointRecord:  # fmt: skip
    runs, leads, stamp_runs, methods, notes = [], [], [], set(), []
    readings: list[Sample] = []
    blocker = blocker_tokens(job.engine)
    samples = max(1, point.samples)
    lead = lead if lead is not None else LeadReference()
    tokens = job.decode_tokens  # decode: sized from the untimed run where a window is asked
    if point.phase == DECODE and job.decode_window_s > 0:
        tokens = min(MIN_DECODE_TOKENS, job.decode_tokens)
    if point.phase == PREFILL and timed:  # step-ev/2 (records.PREFILL_METHOD)
        _settle(llm, prompts, point, blocker, lead)
    for i in range(point.repeats * samples + 1):
        if point.phase == PREFILL:
            t = eng.prefill(llm, prompts, point.batch, point.tokens, blocker, lead.seconds,
                            timed)
            lead.see(t.lead_s, t.late)
            if i and t.stamp_s is not None:
                stamp_runs.append(t.stamp_s)
            if i and t.steps > 1:
                notes.append(f"split over {t.steps} steps")
            if i and t.late:
                notes.append(LATE_NOTE)
            if i and t.lead_s is not None:
                leads.append(t.lead_s)
        else:
            t, consistent = eng.decode_step(llm, prompts, point.batch, point.tokens, tokens)
            if i and not consistent:
                notes.append("decode steps not as expected")
            if not i and job.decode_window_s > 0:
                step = t.seconds if t.method != "wall" else 0.0
                tokens = window_tokens(step, job.decode_window_s, point.batch, point.tokens,
                                       job.engine.max_num_batched_tokens, job.decode_tokens)
        if probe is not None:
            readings.append(probe.sample())  # the untimed run's too: the clock it settled at
        if i:
            runs.append(t.seconds)
            methods.add(t.method)
    method = method_name(methods.pop() if len(methods) == 1 else "mixed", point.phase,
                         samples, tokens)
    check = None
    if point.batch == 1 and point.phase == PREFILL and floor is not None:
        walls = [eng.lone_ttft(llm, prompts, point.tokens)[0] for _ in range(CHECK_RUNS)]
        check = min(walls) - floor  # noise only adds time: the fastest run
    elif point.batch == 1 and point.phase == DECODE:
        check = eng.lone_decode(llm, prompts, point.tokens, tokens)
    return PointRecord(job.label, point.phase, point.batch, point.tokens,
                       medians_of(runs, samples), method, "; ".join(sorted(set(notes))), check,
                       tuple(runs) if samples > 1 else (), leads=tuple(leads),
                       lead_reference=lead.seconds if leads and lead.seconds else None,
                       stamp_runs=tuple(stamp_runs), telemetry=summarize(readings))


SETTLE_RUNS = 6  # untimed prefill runs at most before a point's first untimed run
SETTLE_TOLERANCE = 0.05


def _settle(llm: Any, prompts: eng.Prompts, point: PointSpec, blocker: int,
            lead: LeadReference) -> None:  # fmt: skip
    """Untimed prefill runs of the point's shape until two in a row agree within 5% (at most
    ``SETTLE_RUNS``): after the previous point the GPU's clock and the host's caches take a
    few runs to settle (session 7: the 3B's 4 ms step at SM 100 read 10 ms for its first
    two or three runs), and a short step has no later runs to outvote them."""
    last = None
    for _ in range(SETTLE_RUNS):
        t = eng.prefill(llm, prompts, point.batch, point.tokens, blocker, lead.seconds, True)
        if last is not None and abs(t.seconds - last) <= SETTLE_TOLERANCE * last:
            return
        last = t.seconds


def device_timing(llm: Any, prompts: eng.Prompts, blocker: int, tokens: int = 128) -> bool:
    """Whether this engine's prefill steps are timed on the device (``steptimer``): a probe
    run behind the blocker must find the batch's step and a blocker step within its stamps
    (``engine.probe_device_timing``). Otherwise prefill is read from the engine-core stamps,
    as before: a vLLM whose runner or step structure differs must not cost 6 tries a run,
    nor time kernel launches. The log says which."""
    why = eng.probe_device_timing(llm, prompts, blocker, tokens)
    print(f"prefill steps timed on the device: {'yes' if why is None else 'no, ' + why}",
          file=sys.stderr, flush=True)
    return why is None


def _floor(llm: Any, prompts: eng.Prompts) -> float | None:
    """The fixed cost of a request outside its engine step (submit, IPC, outputs): median
    over a few 16-token prompts of wall-clock TTFT minus the engine step."""
    gaps = [wall - step for wall, step in
            (eng.lone_ttft(llm, prompts, 16) for _ in range(2 * CHECK_RUNS))]
    gaps = [g for g in gaps if g == g]  # NaN: no engine timestamps
    return statistics.median(gaps) if gaps else None


def blocker_tokens(args: EngineArgs) -> int:
    """Tokens of the prompt that goes ahead of a measured prefill batch (engine.prefill): a
    whole step's budget, so that no request of the batch can share the blocker's step."""
    return max(1, min(args.max_model_len - 8, args.max_num_batched_tokens))


def _guess(done: list[tuple[PointSpec, float]], point: PointSpec,
           estimates: dict[tuple[str, int, int], float] | None = None) -> float:
    """Seconds the point will take, from the measured points. With the parent's
    ``estimates`` (``ProfileJob.point_seconds``): this point's estimate times the largest
    ratio of measured to estimated time among the measured points (of its phase where there
    are some). Without: the slowest measured point of its phase, scaled by the square root
    of the size ratio when this one is larger. Both grow far slower than batch x tokens
    (fixed costs, the blocker, ~constant decode steps); the size rule took a 70B prefill of
    2048 tokens for 4x its 128-token point, blocker-bound like it, and stopped a point that
    would have fit (session 6)."""
    estimates = estimates or {}
    if estimates.get(point.key, 0) > 0:
        ratios = [(p.phase == point.phase, t / estimates[p.key]) for p, t in done
                  if estimates.get(p.key, 0) > 0]
        same = [r for phase, r in ratios if phase]
        if ratios:
            return estimates[point.key] * max(same or [r for _, r in ratios])
    size = point.batch * point.tokens * (point.repeats * point.samples + 1)
    guesses = [t * max(1.0, size / (p.batch * p.tokens * (p.repeats * p.samples + 1))) ** 0.5
               for p, t in done if p.phase == point.phase]
    return max(guesses, default=0.0)


def wait_for_go(control: Path, tag: str, deadline: float, poll_s: float = 0.05) -> bool:
    """Announce readiness, then wait for this engine's turn; False: stop or out of time."""
    (control / f"{tag}.ready").write_text("")
    while time.time() < deadline:
        if (control / f"{tag}.go").exists():
            return True
        if (control / "stop").exists():
            return False
        time.sleep(poll_s)
    return False


def run_profile(job: ProfileJob) -> int:
    llm, record = _start(job)
    wrong = wrong_weights(record.weight_bytes, job.weight_bytes) if llm is not None else None
    if wrong is not None:
        llm, record = None, replace(record, error=wrong)  # the engine ends with this process
    append(job.results, record)
    control = Path(job.control) if job.control else None
    if llm is None:
        if control is not None:
            (control / f"{job.tag}.failed").write_text(record.error or "")
        print(f"engine did not start: {record.error}", file=sys.stderr)
        return 3
    if control is not None and not wait_for_go(control, job.tag, job.deadline - SAFETY_S):
        print("stopped before measuring: no turn before the deadline", file=sys.stderr)
        return 0
    prompts = eng.Prompts(job.engine.vocab_size, job.engine.seed)
    max_batch = max(p.batch for p in job.points)
    longest = max((p.tokens for p in job.points if p.phase == PREFILL), default=16)
    blocker = blocker_tokens(job.engine) if any(p.phase == PREFILL for p in job.points) else 0
    eng.warm_up(llm, prompts, max_batch, min(longest, job.engine.max_model_len - 8), blocker)
    floor = _floor(llm, prompts) if any(p.phase == PREFILL for p in job.points) else None
    timed = bool(blocker) and device_timing(llm, prompts, blocker)  # else from stamps
    lead = LeadReference(eng.lead_reference(llm, prompts, blocker)
                         if blocker and not timed else None)
    probe = GpuProbe.open(job.device, eng.nvml_handle)
    print(f"GPU telemetry (NVML): {'yes' if probe is not None else 'no'}", file=sys.stderr,
          flush=True)
    try:
        _measure_points(llm, prompts, job, floor, lead, timed, probe)
    finally:
        if probe is not None:
            probe.close()
    return 0


def _measure_points(
    llm: Any, prompts: eng.Prompts, job: ProfileJob, floor: float | None, lead: LeadReference,
    timed: bool, probe: GpuProbe | None,
) -> None:  # fmt: skip
    """Every point of the job in order, each appended as soon as measured, until the next
    would not end before the deadline."""
    done: list[tuple[PointSpec, float]] = []
    estimates = ({p.key: t for p, t in zip(job.points, job.point_seconds, strict=True)}
                 if len(job.point_seconds) == len(job.points) else {})
    for point in job.points:
        if time.time() + _guess(done, point, estimates) + SAFETY_S > job.deadline:
            print(f"stopping before {point.key}: out of time", file=sys.stderr)
            break
        t0 = time.perf_counter()
        record = _measure(llm, prompts, job, point, floor, lead, timed, probe)
        append(job.results, record)
        took = time.perf_counter() - t0
        done.append((point, took))
        why = retry_reason(record)
        if why is None:
            continue
        if time.time() + took + SAFETY_S > job.deadline:
            print(f"no retry of {point.key} ({why}): out of time", file=sys.stderr, flush=True)
            continue
        print(f"measuring {point.key} again: {why}", file=sys.stderr, flush=True)
        again = _measure(llm, prompts, job, point, floor, lead, timed, probe)
        append(job.results, replace(again, attempt=record.attempt + 1))


def retry_reason(record: PointRecord) -> str | None:
    """Why a point is measured once more at once (None: it is not): its repeats spread over
    the 5% target. Not the SM clock alone: on the H100 under its software power cap it swings
    1680-1980 MHz within quiet points (session 7: 12 of 15 records moved > 5%, spreads as
    low as 0.7%), so it stays in the record as context. Session 7's noisy rows
    were runs that slowed mid-point (the 8B's 13 ms runs turned 18-21 ms, the blocker's
    step with them): the environment changed, so the point is taken again on the same
    engine, with its own telemetry, and the store keeps the attempt whose repeats spread
    least (standard benchmarking hygiene, not an outlier filter: the kept attempt's spread
    is reported whole). One retry: the second attempt stands whatever it reads."""
    if record.attempt > 1:
        return None
    spread = rel_spread(record.latencies)
    if spread > SPREAD_TARGET:
        return f"repeats spread {spread:.1%} > {SPREAD_TARGET:.0%}"
    return None


def run_load(job: InterferenceJob) -> int:
    """Announce readiness, then run the load in every phase that names this member."""
    control = Path(job.control)
    llm, record = _start(job)
    append(job.results, record)
    if llm is None:
        (control / f"{job.member}.failed").write_text(record.error or "")
        return 3
    prompts = eng.Prompts(job.engine.vocab_size, job.engine.seed)
    load = job.load
    eng.warm_up(llm, prompts, load.batch, load.probe_tokens, 0)
    (control / f"{job.member}.ready").write_text("")
    phase = 0
    while time.time() < job.deadline and not (control / "stop").exists():
        go = control / f"phase-{phase}.go"
        if not go.exists():
            time.sleep(0.05)
            continue
        name, duration, active = _read_go(go)
        if job.member in active:
            append(job.results, _run_phase(llm, prompts, job, name, duration, active))
        (control / f"phase-{phase}.{job.member}.done").write_text("")
        phase += 1
    return 0


def _read_go(path: Path) -> tuple[str, float, tuple[str, ...]]:
    data = json.loads(path.read_text())
    return str(data["name"]), float(data["duration_s"]), tuple(data["active"])


def _run_phase(
    llm: Any, prompts: eng.Prompts, job: InterferenceJob, name: str, duration: float,
    active: tuple[str, ...],
) -> LoadRecord:  # fmt: skip
    load, steps, ttfts = job.load, [], []
    n = max(8, load.output_tokens)
    context = load.prompt_tokens + n // 2
    end = time.time() + duration
    while time.time() < end:
        steps.append(eng.decode_step(llm, prompts, load.batch, context, n)[0].seconds)
        ttfts.append(eng.prefill(llm, prompts, 1, load.probe_tokens).seconds)
    return LoadRecord(job.label, job.scenario, job.member, name, active, tuple(steps),
                      tuple(ttfts), load.batch, context)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("profile", "load"):
        print("usage: python -m fineserve.profiles.measure.worker {profile|load} JOB.json",
              file=sys.stderr)
        return 2
    if argv[0] == "profile":
        return run_profile(read_job(argv[1], ProfileJob))
    return run_load(read_job(argv[1], InterferenceJob))


if __name__ == "__main__":  # vLLM spawns processes that re-import the main module
    sys.exit(main(sys.argv[1:]))
