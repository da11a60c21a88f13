"""Importer for FineServe's published cost tables, and the shipped data made from it."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from fineserve.errors import ProfileError, SpecError
from fineserve.profiles.composite import published_profiles
from fineserve.profiles.fineserve_import import FINESERVE_COLUMNS, import_fineserve_costs
from fineserve.profiles.precision import KVFormat, WeightFormat
from fineserve.profiles.schema import EngineKey, Phase, load_profile

REPO = Path(__file__).resolve().parents[2]
COSTS = REPO.parent / "shared" / "data" / "fineserve-costs"
needs_costs = pytest.mark.skipif(
    not (COSTS / "apex-cost.csv").is_file(), reason=f"FineServe cost files not at {COSTS}"
)
QOQ = "qoq (W4A8KV4): vLLM cannot serve it"
HEADER = ",".join(FINESERVE_COLUMNS)


def cost_row(model: str = "llama-3.1-8b", qformat: str = "org", tp: int = 1, mps: int = 100,
             batch: int = 4, input_len: int = 512, output_len: int = 256,
             prefill: object = 0.0307, tpot: object = 0.00813) -> str:  # fmt: skip
    decode_time = 0.0 if not isinstance(tpot, float) else tpot * (output_len - 1)
    cells = [model, qformat, tp, mps, batch, input_len, output_len, input_len + output_len,
             prefill, decode_time, prefill, tpot, 2.1]
    return ",".join(str(c) for c in cells)


def write(tmp_path: Path, rows: list[str], header: str = HEADER) -> Path:
    path = tmp_path / "cost.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@needs_costs
def test_apex_file_counts() -> None:
    table, report = import_fineserve_costs(COSTS / "apex-cost.csv")
    assert (report.rows_read, report.points, report.skipped) == (1236, 2448, ((QOQ, 12),))
    assert report.rows_skipped == 12
    assert len(table) == 2448  # no two rows describe the same point
    assert len(table.engines()) == 17
    assert len(table.points_for(EngineKey("H100-SXM-80GB", "qwen3-32b", WeightFormat.FP8,
                                          KVFormat.FP8, 2), Phase.DECODE)) == 72
    assert "skipped 12 rows" in str(report)


@needs_costs
def test_aws_file_counts() -> None:
    table, report = import_fineserve_costs(COSTS / "aws-cost.csv")
    assert (report.rows_read, report.points, report.skipped) == (240, 456, ((QOQ, 12),))
    assert len(table.engines()) == 19  # adds 70B AWQ tp2 and Qwen3-32B fp8 tp1


@needs_costs
def test_shipped_data_is_the_apex_file_converted(tmp_path: Path) -> None:
    imported, _ = import_fineserve_costs(COSTS / "apex-cost.csv")
    assert published_profiles() == imported
    out = tmp_path / "data"
    argv = ["import_fineserve.py", "--source", str(COSTS / "apex-cost.csv"), "--out", str(out)]
    old, sys.argv = sys.argv, argv
    try:
        runpy.run_path(str(REPO / "bench" / "import_fineserve.py"), run_name="__main__")
    finally:
        sys.argv = old
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*.csv"))
    assert len(files) == 8
    assert "H100-SXM-80GB/llama-3.1-70b/int4-awq.kv-bf16.csv" in files
    assert load_profile(out) == imported


def test_a_row_becomes_one_prefill_and_one_decode_point(tmp_path: Path) -> None:
    table, report = import_fineserve_costs(write(tmp_path, [cost_row(mps=40)]))
    assert (report.rows_read, report.points, report.skipped) == (1, 2, ())
    pre, = table.points_for(table.engines()[0], Phase.PREFILL)
    dec, = table.points_for(table.engines()[0], Phase.DECODE)
    assert (pre.batch, pre.tokens, pre.latency_s, pre.sm_pct) == (4, 512, 0.0307, 40.0)
    assert (dec.batch, dec.tokens, dec.latency_s, dec.sm_pct) == (4, 512 + 128, 0.00813, 40.0)
    assert pre.gpu == dec.gpu == "H100-SXM-80GB"


@pytest.mark.parametrize(
    ("model", "qformat", "expected"),
    [
        ("qwen-3-32b", "org", ("qwen3-32b", WeightFormat.BF16, KVFormat.BF16)),
        ("llama-3-8b", "fp8_kv8", ("llama-3.1-8b", WeightFormat.FP8, KVFormat.FP8)),
        ("lama-3-8b", "awq", ("llama-3.1-8b", WeightFormat.INT4_AWQ, KVFormat.BF16)),
        ("llama-3.1-70b", "AWQ", ("llama-3.1-70b", WeightFormat.INT4_AWQ, KVFormat.BF16)),
    ],
)
def test_names_map_to_the_catalog(
    tmp_path: Path, model: str, qformat: str, expected: tuple[str, WeightFormat, KVFormat]
) -> None:
    table, _ = import_fineserve_costs(write(tmp_path, [cost_row(model, qformat, tp=2)]))
    (key,) = table.engines()
    assert (key.model, key.weights, key.kv, key.tp) == (*expected, 2)


def test_unservable_and_unknown_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    rows = [cost_row(qformat="qoq"), cost_row(qformat="qoq", batch=8), cost_row(model="gpt-9"),
            cost_row(qformat="int3"), cost_row()]
    table, report = import_fineserve_costs(write(tmp_path, rows))
    assert report.rows_read == 5 and report.points == 2 and len(table) == 2
    assert report.skipped == ((QOQ, 2), ("unknown model 'gpt-9'", 1),
                              ("unknown qformat 'int3'", 1))


def test_gpu_is_an_argument(tmp_path: Path) -> None:
    table, _ = import_fineserve_costs(write(tmp_path, [cost_row()]), gpu="h200")
    assert table.engines()[0].gpu == "H200-SXM-141GB"
    with pytest.raises(SpecError, match="unknown GPU"):
        import_fineserve_costs(write(tmp_path, [cost_row()]), gpu="Z100")


def test_malformed_files_name_row_and_column(tmp_path: Path) -> None:
    rows = [cost_row(), cost_row(tpot="fast")]
    with pytest.raises(ProfileError, match=r"cost\.csv row 3, column tpot: fast is not a number"):
        import_fineserve_costs(write(tmp_path, rows))
    with pytest.raises(ProfileError, match="row 1, column tpot: missing from the header"):
        import_fineserve_costs(write(tmp_path, [cost_row()], HEADER.replace("tpot", "tbt")))
    with pytest.raises(ProfileError, match="row 2, column mps_percentage: 0 is outside 1..100"):
        import_fineserve_costs(write(tmp_path, [cost_row(mps=0)]))
    with pytest.raises(ProfileError, match="row 2, column batch_size: 1.5 is not an integer"):
        import_fineserve_costs(write(tmp_path, [cost_row(batch=1.5)]))  # type: ignore[arg-type]
