"""Result store: resumption keys, CSV export through the profile schema, metadata."""

from __future__ import annotations

import json

import pytest

from fineserve.profiles.measure.records import (
    PREFILL_METHOD,
    EngineLabel,
    EngineRecord,
    PointRecord,
    PointSpec,
    append,
)
from fineserve.profiles.measure.store import ResultStore, to_latency_point
from fineserve.profiles.precision import Precision
from fineserve.profiles.schema import Phase, load_profile
from fineserve.profiles.table import TableLatency

GPU, MODEL = "H100-SXM-80GB", "llama-3.1-8b"
PRECISION = Precision.parse("bf16")
POINTS = (
    PointSpec("prefill", 1, 128, 3), PointSpec("prefill", 1, 512, 3),
    PointSpec("decode", 1, 512, 3), PointSpec("decode", 8, 512, 3),
)  # fmt: skip


def label(sm: float) -> EngineLabel:
    return EngineLabel(GPU, MODEL, "bf16", "bf16", 1, sm)


def fill(store: ResultStore, sm: float, points=POINTS) -> None:
    for p in points:
        base = (0.01 if p.phase == "prefill" else 0.008) * p.batch * (100 / sm) ** 0.5
        base *= p.tokens / 128 if p.phase == "prefill" else 1
        append(store.results, PointRecord(label(sm), p.phase, p.batch, p.tokens,
                                          (base, base * 1.02, base * 0.99), PREFILL_METHOD))


@pytest.fixture
def store(tmp_path):
    s = ResultStore(tmp_path, GPU, MODEL, PRECISION)
    s.prepare()
    return s


def test_layout_matches_the_shipped_profiles(store, tmp_path):
    assert store.csv == tmp_path / GPU / MODEL / "bf16.kv-bf16.csv"
    assert store.results.name == "bf16.kv-bf16.jsonl"


def test_done_lists_the_measured_points_of_one_engine(store):
    fill(store, 100, POINTS[:2])
    fill(store, 50, POINTS[:1])
    assert store.done(label(100)) == {POINTS[0].key, POINTS[1].key}
    assert store.done(label(50)) == {POINTS[0].key}
    assert store.done(label(30)) == set()


def test_export_writes_complete_sm_shares_only_and_loads_through_the_schema(store):
    fill(store, 100)
    fill(store, 50, POINTS[:3])  # one point short
    planned = {label(100): POINTS, label(50): POINTS}
    summary = store.export(planned)
    assert summary.complete == (100.0,) and summary.incomplete == (50.0,)
    table = load_profile(summary.csv)
    assert len(table) == len(POINTS) == summary.points
    assert {p.sm_pct for p in table} == {100.0}
    TableLatency(table)  # a complete grid: the planner's table accepts it
    point = table.points_for(table.engines()[0], Phase.DECODE)[0]
    assert point.repeats == 3
    assert point.rel_spread == pytest.approx(0.03)


def test_a_later_run_completes_the_profile(store):
    fill(store, 100)
    fill(store, 50, POINTS[:3])
    planned = {label(100): POINTS, label(50): POINTS}
    store.export(planned)
    fill(store, 50, POINTS[3:])
    summary = store.export(planned)
    assert summary.complete == (50.0, 100.0) and summary.incomplete == ()
    table = load_profile(store.csv)
    TableLatency(table)
    assert len(table) == 2 * len(POINTS)


def test_a_rerun_point_replaces_the_earlier_one(store):
    fill(store, 100)
    p = POINTS[0]
    append(store.results, PointRecord(label(100), p.phase, p.batch, p.tokens, (0.5, 0.5), "x"))
    store.export({label(100): POINTS})
    row = [x for x in load_profile(store.csv) if x.phase is Phase.PREFILL and x.tokens == 128]
    assert row[0].latency_s == 0.5 and row[0].repeats == 2


def test_invalid_points_are_not_done_and_not_exported(store):
    p = POINTS[2]
    append(store.results, PointRecord(label(100), p.phase, p.batch, p.tokens, (-1e-4, 0.01), "x"))
    assert store.done(label(100)) == set()
    assert store.export({label(100): POINTS}).csv is None


def test_metadata_names_versions_memory_and_spread(store):
    append(store.results, EngineRecord(label(100), 52.0, True, block_size=16, num_blocks=9000,
                                       page_size_bytes=32768, kv_bytes_per_token=131072,
                                       weight_bytes=16 << 30, device_name="NVIDIA H100 80GB HBM3",
                                       driver="580.159.04", vllm_version="0.26.0",
                                       torch_version="2.11.0", date="2026-11-25T10:00:00+00:00"))
    fill(store, 100)
    store.export({label(100): POINTS})
    meta = json.loads(store.meta.read_text())
    assert meta["vllm_version"] == "0.26.0" and meta["driver"] == "580.159.04"
    assert meta["device_name"] == "NVIDIA H100 80GB HBM3"
    assert meta["dates"] == ["2026-11-25"]
    assert meta["engines"][0]["kv_bytes_per_token"] == 131072
    assert meta["rel_spread"]["over_5pct"] == 0
    assert meta["rel_spread"]["max"] == pytest.approx(0.03)


def test_latency_point_takes_the_median_of_repeats():
    record = PointRecord(label(30), "decode", 8, 512, (0.010, 0.012, 0.011), "engine-ts")
    point = to_latency_point(record)
    assert point.latency_s == 0.011 and point.repeats == 3 and point.sm_pct == 30
    assert point.rel_spread == pytest.approx(0.002 / 0.011)


def test_superseded_points_ship_but_are_measured_again(store):
    fill(store, 100)
    p = POINTS[3]
    append(store.results, PointRecord(label(100), p.phase, p.batch, p.tokens,
                                      (0.008, 0.0081, 0.0079), "engine-ts diff n8-40"))
    assert p.key not in store.done(label(100))  # the next run measures it again
    assert POINTS[2].key in store.done(label(100))
    summary = store.export({label(100): POINTS})
    assert summary.complete == (100.0,) and summary.points == len(POINTS)


def test_off_grid_prefill_points_ship_where_every_sm_share_has_their_total(store):
    fill(store, 100)
    fill(store, 50)
    same = PointSpec("prefill", 4, 128, 3)  # 4 x 128 = 1 x 512, a cell the grid has
    column = PointSpec("prefill", 4, 2048, 3)  # measured at both shares: a full column
    hole = PointSpec("prefill", 2, 2048, 3)  # measured at SM 100 only: would leave a hole
    fill(store, 100, (same, column, hole))
    fill(store, 50, (column,))
    store.export({label(100): POINTS, label(50): POINTS})
    table = load_profile(store.csv)
    rows = {(x.sm_pct, x.batch, x.tokens) for x in table if x.phase is Phase.PREFILL}
    assert rows == {(sm, b, t) for sm in (50.0, 100.0) for b, t in ((1, 128), (1, 512), (4, 2048))
                    } | {(100.0, 4, 128)}
    TableLatency(table)


def test_redo_noisy_measures_a_noisy_point_of_todays_method_once_more_only(store):
    from fineserve.profiles.measure.records import current_method

    fill(store, 100)
    old, new = POINTS[0], POINTS[-1]
    current = {p.key: current_method(p, 128) for p in POINTS}
    noisy = (0.010, 0.013, 0.0101)
    append(store.results, PointRecord(label(100), old.phase, old.batch, old.tokens, noisy,
                                      "step-ts/2 med3"))
    append(store.results, PointRecord(label(100), new.phase, new.batch, new.tokens, noisy,
                                      current[new.key]))
    done = store.done(label(100), redo_noisy=True, current=current)
    assert old.key not in done  # the old method's spread: measured again with today's
    assert new.key not in done  # today's method, first noisy run: one more
    assert POINTS[1].key in done  # quiet points stay done
    append(store.results, PointRecord(label(100), new.phase, new.batch, new.tokens, noisy,
                                      current[new.key]))
    # the second noisy run of today's method stands: its spread is reported, not re-drawn
    assert new.key in store.done(label(100), redo_noisy=True, current=current)
    assert new.key not in store.done(label(100), redo_noisy=True)  # without methods: as before


def test_redo_noisy_measures_a_slow_turn_again_once(store):
    """Session 7's 3B: at SM 100 every prefill read ~27 ms, its repeats agreeing (1.4%),
    while SM 50 read 4-9 ms: quality.screen leaves the SM-100 prefill out, and the next run
    measures it again; a second run of today's method stands."""
    from fineserve.profiles.measure.records import current_method

    fill(store, 50)
    current = {p.key: current_method(p, 128) for p in POINTS}
    prefill = [p for p in POINTS if p.phase == "prefill"]
    for p in POINTS:
        ms = 0.027 if p.phase == "prefill" else 0.008
        append(store.results, PointRecord(label(100), p.phase, p.batch, p.tokens,
                                          (ms, ms * 1.01, ms), current[p.key]))
    assert store.screened_out() == {label(100): {p.key for p in prefill}}
    done = store.done(label(100), redo_noisy=True, current=current)
    assert done == {p.key for p in POINTS if p.phase == "decode"}
    assert store.done(label(50), redo_noisy=True, current=current) == {p.key for p in POINTS}
    assert store.done(label(100), current=current) == {p.key for p in POINTS}  # redo only
    for p in prefill:  # measured again, as slow: it stands
        append(store.results, PointRecord(label(100), p.phase, p.batch, p.tokens,
                                          (0.027, 0.0271, 0.027), current[p.key]))
    assert store.done(label(100), redo_noisy=True, current=current) == {p.key for p in POINTS}


def test_a_profile_whose_points_turned_stale_leaves_no_csv(tmp_path):
    gptq = ResultStore(tmp_path, GPU, MODEL, Precision.parse("int4-gptq"))
    gptq.prepare()
    lab = EngineLabel(GPU, MODEL, "int4-gptq", "bf16", 1, 100.0)
    for p in POINTS:
        append(gptq.results, PointRecord(lab, p.phase, p.batch, p.tokens, (0.01, 0.0101),
                                         "x", engine_rev=3))
    assert gptq.export({lab: POINTS}).csv == gptq.csv and gptq.csv.exists()
    # the same points as written by the unquantized engine (revision 1): stale
    gptq.results.write_text(gptq.results.read_text().replace('"engine_rev": 3', '"engine_rev": 1'))
    assert gptq.export({lab: POINTS}).csv is None
    assert not gptq.csv.exists()  # no longer loadable as an int4 profile


def test_a_late_stamped_record_of_todays_method_gets_one_more_run_only(store):
    from fineserve.profiles.measure.records import LATE_NOTE, current_method

    fill(store, 100)
    point = POINTS[1]
    current = {p.key: current_method(p, 128) for p in POINTS}
    late = PointRecord(label(100), point.phase, point.batch, point.tokens,
                       (0.007, 0.011, 0.014), current[point.key], LATE_NOTE)
    append(store.results, late)
    assert point.key not in store.done(label(100), redo_noisy=True, current=current)
    append(store.results, late)  # the one more run was as bad: it stands, reported as it is
    assert point.key in store.done(label(100), redo_noisy=True, current=current)
    assert point.key in store.done(label(100), current=current)  # only with redo_noisy


def test_an_older_methods_extra_is_not_merged_into_a_cell_of_todays_method(store):
    fill(store, 100)  # the grid's 1 x 512 taken with today's prefill method
    old = PointRecord(label(100), "prefill", 4, 128, (0.0134, 0.0135, 0.0108), "step-ts/2")
    same = PointRecord(label(100), "prefill", 2, 256, (0.02, 0.0201, 0.0199), PREFILL_METHOD)
    append(store.results, old)
    append(store.results, same)
    store.export({label(100): POINTS})
    rows = {(x.batch, x.tokens) for x in load_profile(store.csv) if x.phase is Phase.PREFILL}
    assert rows == {(1, 128), (1, 512), (2, 256)}  # 4 x 128 (older, 20% spread) left out


def test_a_noisy_off_grid_extra_sends_its_older_cell_to_be_measured_again(store):
    from fineserve.profiles.measure.records import current_method

    grid = (PointSpec("prefill", 1, 512, 3), PointSpec("prefill", 1, 2048, 3))
    current = {p.key: current_method(p, 128) for p in grid}
    cell = PointRecord(label(50), "prefill", 1, 2048, (0.0521, 0.0524, 0.0524), "step-ts/2")
    extra = PointRecord(label(50), "prefill", 4, 512, (0.0500, 0.0497, 0.0453), "step-ts/2")
    quiet = PointRecord(label(50), "prefill", 1, 512, (0.0133, 0.0132, 0.0132), "step-ts/2")
    for r in (cell, extra, quiet):
        append(store.results, r)
    assert rel_spread_of(extra) > 0.05 and rel_spread_of(cell) < 0.05
    done = store.done(label(50), redo_noisy=True, current=current)
    assert (("prefill", 1, 2048) not in done) and ("prefill", 1, 512) in done
    assert ("prefill", 1, 2048) in store.done(label(50), current=current)  # only redo_noisy
    # measured again with today's method: the extra no longer ships, nothing more to redo
    append(store.results, PointRecord(label(50), "prefill", 1, 2048, (0.052, 0.0521, 0.0522),
                                      current[("prefill", 1, 2048)]))
    assert ("prefill", 1, 2048) in store.done(label(50), redo_noisy=True, current=current)
    store.export({label(50): grid})
    rows = {(x.batch, x.tokens) for x in load_profile(store.csv)}
    assert rows == {(1, 512), (1, 2048)}


def rel_spread_of(record: PointRecord) -> float:
    from fineserve.profiles.measure.stats import rel_spread

    return rel_spread(record.latencies)
