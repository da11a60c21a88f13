"""Profile schema: reading, validating, merging and writing latency points."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from fineserve.errors import ProfileError, SpecError
from fineserve.profiles.catalog import model_spec
from fineserve.profiles.gpus import gpu_spec
from fineserve.profiles.latency import EngineShape
from fineserve.profiles.precision import KVFormat, WeightFormat
from fineserve.profiles.schema import (
    COLUMNS,
    EngineKey,
    LatencyPoint,
    Phase,
    ProfileTable,
    check_query,
    load_profile,
    save_profile,
)

HEADER = ",".join(COLUMNS)
H100 = "H100-SXM-80GB"


def point(**overrides: object) -> LatencyPoint:
    fields: dict[str, object] = dict(
        gpu=H100, model="llama-3.1-8b", weights=WeightFormat.BF16, kv=KVFormat.BF16, tp=1,
        sm_pct=100.0, phase=Phase.DECODE, batch=1, tokens=384, latency_s=0.008,
    )  # fmt: skip
    fields.update(overrides)
    return LatencyPoint(**fields)  # type: ignore[arg-type]


def row(**overrides: object) -> str:
    cells: dict[str, object] = dict(
        gpu=H100, model="llama-3.1-8b", weights="bf16", kv="bf16", tp=1, sm_pct=100,
        phase="decode", batch=1, tokens=384, latency_s=0.008, repeats=1, rel_spread=0.0,
    )  # fmt: skip
    cells.update(overrides)
    return ",".join(str(cells[c]) for c in COLUMNS)


def write_csv(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def good_rows(n: int) -> list[str]:
    return [row(batch=b + 1) for b in range(n)]


def test_csv_and_parquet_round_trip(tmp_path: Path) -> None:
    table = ProfileTable([point(batch=b, latency_s=0.008 + b * 1e-4) for b in (1, 2, 4)]
                         + [point(phase=Phase.PREFILL, tokens=512, latency_s=0.0152)])
    for name in ("p.csv", "p.parquet"):
        save_profile(table, tmp_path / name)
        loaded = load_profile(tmp_path / name)
        assert loaded == table
        assert loaded.points[0].latency_s == table.points[0].latency_s  # no float drift


def test_directory_is_read_recursively_and_other_files_are_ignored(tmp_path: Path) -> None:
    save_profile(ProfileTable([point(batch=1)]), tmp_path / "a" / "b" / "one.csv")
    save_profile(ProfileTable([point(batch=2)]), tmp_path / "c" / "two.parquet")
    (tmp_path / "README.md").write_text("not a profile")
    table = load_profile(tmp_path)
    assert [p.batch for p in table] == [1, 2]


def test_optional_columns_default_and_aliases_are_canonical(tmp_path: Path) -> None:
    header = "gpu,model,weights,kv,tp,sm_pct,phase,batch,tokens,latency_s"
    rows = ["h100,meta-llama/Llama-3.1-8B,awq,auto,1,50,Decode,2,384,0.009"]
    (p,) = load_profile(write_csv(tmp_path / "x.csv", rows, header)).points
    assert (p.gpu, p.model, p.weights, p.kv, p.phase) == (
        H100, "llama-3.1-8b", WeightFormat.INT4_AWQ, KVFormat.BF16, Phase.DECODE)
    assert (p.repeats, p.rel_spread) == (1, 0.0)
    assert isinstance(p.tp, int) and isinstance(p.sm_pct, float)


def test_unknown_model_names_are_kept_as_written(tmp_path: Path) -> None:
    (p,) = load_profile(write_csv(tmp_path / "x.csv", [row(model="my-finetune")])).points
    assert p.model == "my-finetune"


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        (dict(sm_pct=130), "row 17, column sm_pct: 130 is outside 1..100"),
        (dict(sm_pct=0.5), "row 17, column sm_pct: 0.5 is outside 1..100"),
        (dict(batch="abc"), "row 17, column batch: abc is not a number"),
        (dict(batch=2.5), "row 17, column batch: 2.5 is not an integer"),
        (dict(tokens=""), "row 17, column tokens: is empty"),
        (dict(latency_s=0), "row 17, column latency_s: 0 must be > 0"),
        (dict(latency_s="nan"), "row 17, column latency_s: nan is not a number"),
        (dict(tp=0), "row 17, column tp: 0 must be >= 1"),
        (dict(rel_spread=-0.1), "row 17, column rel_spread: -0.1 must be >= 0"),
        (dict(weights="bf17"), "row 17, column weights: bf17 is not a known weight precision"),
        (dict(kv="int2"), "row 17, column kv: int2 is not a known KV-cache precision"),
        (dict(gpu="Z100"), "row 17, column gpu: Z100 is not a known GPU"),
        (dict(phase="train"), "row 17, column phase: train is not a known phase"),
        (dict(model=""), "row 17, column model: is empty"),
    ],
)
def test_malformed_cell_names_file_row_and_column(
    tmp_path: Path, cell: dict[str, object], expected: str
) -> None:
    rows = good_rows(20)
    rows[15] = row(**cell)  # data row 16 is spreadsheet row 17 (the header is row 1)
    path = write_csv(tmp_path / "x.csv", rows)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert str(info.value.message) == f"profile {path} {expected}"


def test_unknown_precision_error_carries_a_hint(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "x.csv", [row(weights="bf17")])
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert info.value.hint is not None and "int4-awq" in info.value.hint


def test_parquet_errors_name_the_row_too(tmp_path: Path) -> None:
    table = ProfileTable([point(batch=b) for b in (1, 2, 3)])
    frame = table.to_frame()
    frame.loc[2, "sm_pct"] = 130.0
    frame.to_parquet(tmp_path / "x.parquet", index=False)
    with pytest.raises(ProfileError, match=r"x\.parquet row 4, column sm_pct: 130\.0 is outside"):
        load_profile(tmp_path / "x.parquet")


def test_missing_and_unknown_columns(tmp_path: Path) -> None:
    header = HEADER.replace(",latency_s", "")
    rows = [",".join(r.split(",")[:9] + r.split(",")[10:]) for r in good_rows(2)]
    with pytest.raises(ProfileError, match="row 1, column latency_s: missing from the header"):
        load_profile(write_csv(tmp_path / "a.csv", rows, header))
    with pytest.raises(ProfileError, match="row 1, column sm_percent: not a profile column"):
        load_profile(write_csv(tmp_path / "b.csv", good_rows(2), HEADER.replace("sm_pct",
                                                                                "sm_percent")))


def test_paths_that_are_not_profiles(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no such file"):
        load_profile(tmp_path / "absent.csv")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ProfileError, match="not a .csv or .parquet"):
        load_profile(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProfileError, match="no .csv or .parquet files"):
        load_profile(tmp_path / "empty")
    with pytest.raises(ProfileError, match="name the file .csv or .parquet"):
        save_profile(ProfileTable(), tmp_path / "out.json")


def test_repeats_merge_to_the_median(tmp_path: Path) -> None:
    rows = [row(latency_s=v, repeats=r, rel_spread=s) for v, r, s in
            [(0.001, 3, 0.1), (0.002, 1, 0.0), (0.010, 2, 0.0)]]
    (p,) = load_profile(write_csv(tmp_path / "x.csv", rows)).points
    assert p.latency_s == 0.002
    assert p.repeats == 6
    assert p.rel_spread == pytest.approx((0.010 - 0.001) / 0.002)


def test_points_that_differ_are_not_merged() -> None:
    table = ProfileTable([point(), point(tp=2), point(sm_pct=50), point(phase=Phase.PREFILL)])
    assert len(table) == 4


def test_engines_and_points_for() -> None:
    a = [point(batch=b) for b in (4, 1)] + [point(phase=Phase.PREFILL, tokens=256)]
    b = [point(model="qwen3-32b", weights="fp8", kv="fp8", tp=2)]
    table = ProfileTable(a + b)
    key_a = EngineKey(H100, "llama-3.1-8b", WeightFormat.BF16, KVFormat.BF16, 1)
    key_b = EngineKey(H100, "qwen3-32b", WeightFormat.FP8, KVFormat.FP8, 2)
    assert table.engines() == (key_a, key_b)
    assert [p.batch for p in table.points_for(key_a, Phase.DECODE)] == [1, 4]
    assert [p.phase for p in table.points_for(key_a, Phase.PREFILL)] == [Phase.PREFILL]
    shape = EngineShape(gpu_spec("h100"), model_spec("llama-3.1-8b"), 1)
    assert table.points_for(shape) == table.points_for(key_a) == table.points_for(tuple(key_a))
    assert key_a.key == shape.key
    assert key_a.shape() == shape
    assert table.points_for(key_b._replace(tp=4)) == ()
    assert len(table.without([key_a])) == 1


def test_points_validate_and_are_frozen() -> None:
    with pytest.raises(ProfileError, match="column sm_pct: 0 is outside 1..100"):
        point(sm_pct=0)
    with pytest.raises(ProfileError, match="column tp: 1.5 is not an integer"):
        point(tp=1.5)
    with pytest.raises(SpecError, match="unknown GPU"):
        point(gpu="Z100")
    p = point(weights="awq", phase="prefill", gpu="h100")
    assert (p.weights, p.phase, p.gpu) == (WeightFormat.INT4_AWQ, Phase.PREFILL, H100)
    with pytest.raises(FrozenInstanceError):
        p.batch = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("sm", "batch", "tokens"), [(0, 1, 1), (101, 1, 1), (math.nan, 1, 1), (50, 0, 1), (50, 1, 0)]
)
def test_check_query_rejects_impossible_queries(sm: float, batch: float, tokens: float) -> None:
    with pytest.raises(SpecError):
        check_query(sm, batch, tokens)
