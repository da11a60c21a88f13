"""Worker records: JSON round trip, durable appends, torn lines skipped."""

from __future__ import annotations

from fineserve.profiles.measure.records import (
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
    line = dumps(old).replace('"engine_rev": 2, ', "")  # as written before the field existed
    assert '"engine_rev"' not in line
    loaded = loads(line)
    assert loaded.engine_rev == 1 and loaded.stale and not loaded.valid
    assert old.valid  # a point taken now carries the current revision
    bf16 = loads(dumps(PointRecord(LABEL, "decode", 1, 256, (0.007,), "window-ts/2 n128"))
                 .replace('"engine_rev": 2, ', ""))
    assert bf16.valid
    engine = loads(dumps(EngineRecord(gptq, 50.0, True)).replace('"engine_rev": 2, ', ""))
    assert engine.stale and EngineRecord(gptq, 50.0, True).stale is None
