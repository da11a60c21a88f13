"""Worker records: JSON round trip, durable appends, torn lines skipped."""

from __future__ import annotations

from fineserve.profiles.measure.records import (
    ENGINE_REV,
    PREFILL_METHOD,
    EngineArgs,
    EngineLabel,
    EngineRecord,
    LoadRecord,
    PointRecord,
    PointSpec,
    ProfileJob,
    append,
    dumps,
    loads,
    read_job,
    read_records,
    write_job,
)

LABEL = EngineLabel("H100-SXM-80GB", "llama-3.1-8b", "bf16", "bf16", 1, 50.0)


def test_records_round_trip_through_json():
    records = [
        EngineRecord(LABEL, 51.5, True, block_size=16, num_blocks=100, weight_bytes=10),
        PointRecord(LABEL, "prefill", 4, 512, (0.1, 0.11), PREFILL_METHOD, "split over 2 steps"),
        PointRecord(LABEL, "prefill", 1, 512, (0.0135,), PREFILL_METHOD, runs=(0.0135,),
                    leads=(0.058,), stamp_runs=(0.0007,)),  # device-timed, stamps beside
        LoadRecord(LABEL, "pair", "a", "together", ("a", "b"), (0.01, 0.012), (0.05,), 8, 300),
    ]
    for record in records:
        assert loads(dumps(record)) == record


def test_job_round_trip(tmp_path):
    args = EngineArgs("/m", 1, None, "auto", 2064, 64, 8192, 1 << 30, 0.3, False, 128256)
    job = ProfileJob(LABEL, args, (PointSpec("decode", 8, 512, 3),), 128,
                     str(tmp_path / "r.jsonl"), 123.0, point_seconds=(12.5,))
    write_job(job, tmp_path / "job.json")
    assert read_job(tmp_path / "job.json", ProfileJob) == job


def test_appended_records_are_read_back_and_a_torn_line_is_skipped(tmp_path):
    path = tmp_path / "r.jsonl"
    first = PointRecord(LABEL, "decode", 1, 512, (0.008,), "engine-ts")
    append(path, first)
    with open(path, "a") as f:
        f.write('{"kind": "point", "label": {"gpu"')  # killed mid-write
    assert read_records(path) == [first]
    assert read_records(tmp_path / "missing.jsonl") == []


def test_non_positive_latency_makes_a_point_invalid():
    assert PointRecord(LABEL, "decode", 1, 512, (0.01, 0.02), "m").valid
    assert not PointRecord(LABEL, "decode", 1, 512, (0.01, -0.001), "m").valid
    assert not PointRecord(LABEL, "decode", 1, 512, (), "m").valid


def test_prefill_taken_by_the_first_h100_method_is_stale_decode_is_not():
    # the first H100 run's prefill ("engine-ts": from the batch's scheduling stamp) counted
    # the blocker's step under async scheduling; its decode differences were sound
    old_prefill = PointRecord(LABEL, "prefill", 1, 128, (0.185,), "engine-ts")
    assert old_prefill.stale and not old_prefill.valid
    assert PointRecord(LABEL, "decode", 1, 256, (0.007,), "engine-ts diff n8-40").valid
    assert PointRecord(LABEL, "prefill", 1, 128, (0.012,), PREFILL_METHOD).valid


def test_records_keep_the_prefill_cross_check(tmp_path):
    path = tmp_path / "r.jsonl"
    record = PointRecord(LABEL, "prefill", 1, 128, (0.012, 0.0121), PREFILL_METHOD, "", 0.0118)
    append(path, record)
    assert read_records(path) == [record]


def test_gptq_points_of_the_unquantized_engine_are_stale_others_are_not():
    gptq = EngineLabel("H100-SXM-80GB", "llama-3.1-8b", "int4-gptq", "bf16", 1, 100.0)
    old = PointRecord(gptq, "decode", 1, 256, (0.0067,), "window-ts/2 n128")
    drop = f'"engine_rev": {ENGINE_REV}, '
    line = dumps(old).replace(drop, "")  # as written before the field existed
    assert '"engine_rev"' not in line
    loaded = loads(line)
    assert loaded.engine_rev == 1 and loaded.stale and not loaded.valid
    assert old.valid  # a point taken now carries the current revision
    bf16 = loads(dumps(PointRecord(LABEL, "decode", 1, 256, (0.007,), "window-ts/2 n128"))
                 .replace(drop, ""))
    assert bf16.valid
    engine = loads(dumps(EngineRecord(gptq, 50.0, True)).replace(drop, ""))
    assert engine.stale and EngineRecord(gptq, 50.0, True).stale is None


def test_prefill_points_a_deployed_engine_runs_as_a_graph_are_stale_before_revision_3():
    """Engines before revision 3 captured CUDA graphs only up to 2 x max_num_seqs tokens
    (64 on the reference grid): their prefill points of <= 512 tokens ran without a graph,
    unlike a deployed engine's. Such points are measured again; longer prefills and decode
    points are not affected."""
    from fineserve.profiles.measure.records import GRAPH_CAPTURE_TOKENS, GRAPH_STALE

    def point(phase, batch, tokens, rev):
        return PointRecord(LABEL, phase, batch, tokens, (0.02,), PREFILL_METHOD, engine_rev=rev)

    assert GRAPH_CAPTURE_TOKENS == 512
    assert point("prefill", 1, 128, 2).stale == GRAPH_STALE
    assert point("prefill", 1, 512, 2).stale == GRAPH_STALE
    assert point("prefill", 4, 128, 2).stale == GRAPH_STALE  # 512 tokens in the step
    assert not point("prefill", 4, 128, 2).valid
    assert point("prefill", 4, 512, 2).stale is None  # 2048 tokens: no graph deployed either
    assert point("prefill", 1, 2048, 2).stale is None
    assert point("decode", 32, 512, 2).stale is None
    assert point("prefill", 1, 128, 3).stale is None and point("prefill", 1, 128, 3).valid


def test_profiling_engines_capture_graphs_as_deployed_engines_do(monkeypatch):
    """vLLM's LLM gets max_cudagraph_capture_size unless the engine runs eager (CPU)."""
    import sys
    import types
    from dataclasses import replace

    from fineserve.profiles.measure import engine as eng

    seen = {}

    class FakeLLM:
        def __init__(self, **kwargs):
            seen.update(kwargs)

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM))
    args = EngineArgs("/m", 1, None, "auto", 2064, 32, 8192, 1 << 30, 0.3, False, 128256,
                      max_cudagraph_capture_size=512)
    eng.start_engine(args, "cuda")
    assert seen["max_cudagraph_capture_size"] == 512 and seen["max_num_seqs"] == 32
    seen.clear()
    eng.start_engine(replace(args, enforce_eager=True), "cuda")
    assert "max_cudagraph_capture_size" not in seen
