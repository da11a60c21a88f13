"""Importer for the cost tables the FineServe paper published (``examples/cost_files/*.csv``).

Their rows hold one (model, qformat, tp, MPS %, batch, input, output) run with its prefill time
and per-token decode time; each becomes one prefill and one decode ``LatencyPoint``. The files
do not name their GPU, so the caller says which (default: H100 SXM, what the paper used).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from fineserve.errors import ProfileError
from fineserve.profiles.gpus import gpu_spec
from fineserve.profiles.precision import KVFormat, WeightFormat
from fineserve.profiles.schema import LatencyPoint, Phase, ProfileTable, read_frame, read_numbers

FINESERVE_COLUMNS = (
    "model", "qformat", "tp", "mps_percentage", "batch_size", "input_len", "output_len",
    "seq_len", "prefill_time", "decode_time", "ttft", "tpot", "e2e",
)  # fmt: skip
DEFAULT_GPU = "H100-SXM-80GB"

# FineServe model name -> catalog name. llama-3-8b has Llama 3.1 8B's architecture (the 3.1
# changes are RoPE scaling and context length); "lama-3-8b" is a typo in aws-cost.csv.
MODEL_NAMES = {
    "llama-3.1-8b": "llama-3.1-8b",
    "llama-3.1-70b": "llama-3.1-70b",
    "qwen-3-32b": "qwen3-32b",
    "llama-3-8b": "llama-3.1-8b",
    "lama-3-8b": "llama-3.1-8b",
}
# FineServe qformat -> (weights, KV cache). QoQ (W4A8KV4, from QServe) has no vLLM kernel.
QFORMATS = {
    "org": (WeightFormat.BF16, KVFormat.BF16),
    "fp8_kv8": (WeightFormat.FP8, KVFormat.FP8),
    "awq": (WeightFormat.INT4_AWQ, KVFormat.BF16),
}
SKIPPED_QFORMATS = {"qoq": "qoq (W4A8KV4): vLLM cannot serve it"}
# FineServe column -> the profile column whose range it must respect.
_NUMBER_COLUMNS = {
    "tp": "tp", "mps_percentage": "sm_pct", "batch_size": "batch", "input_len": "tokens",
    "output_len": "tokens", "prefill_time": "latency_s", "tpot": "latency_s",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class ImportReport:
    rows_read: int
    points: int  # LatencyPoints produced (two per imported row, before repeats are merged)
    skipped: tuple[tuple[str, int], ...]  # (reason, rows), most frequent first

    @property
    def rows_skipped(self) -> int:
        return sum(n for _, n in self.skipped)

    def summary(self) -> str:
        lines = [f"read {self.rows_read} rows, made {self.points} points"]
        lines += [f"  skipped {n} rows: {reason}" for reason, n in self.skipped]
        return "\n".join(lines)

    __str__ = summary


def import_fineserve_costs(
    path: str | Path, gpu: str = DEFAULT_GPU
) -> tuple[ProfileTable, ImportReport]:
    """Convert one FineServe cost CSV into profile points.

    A row gives a prefill point (batch = batch_size, tokens = input_len, latency =
    prefill_time) and a decode point (tokens = input_len + output_len / 2, the mean context
    over the generation, latency = tpot). Rows with a qformat vLLM cannot serve, or a model
    outside the catalog map, are skipped and counted in the report.

    Raises:
        ProfileError: a column is missing or a cell is not a number or out of range (naming
            row and column).
    """
    source = Path(path)
    frame = read_frame(source)
    frame.columns = [str(c).strip() for c in frame.columns]
    for column in FINESERVE_COLUMNS:
        if column not in frame.columns:
            raise ProfileError(
                f"profile {source} row 1, column {column}: missing from the header",
                hint="give a FineServe cost file (examples/cost_files/*.csv)",
            )
    gpu_name = gpu_spec(gpu).name
    nums = {
        c: read_numbers(frame, c, str(source), integer=within != "latency_s", within=within)
        for c, within in _NUMBER_COLUMNS.items()
    }
    skipped: Counter[str] = Counter()
    points: list[LatencyPoint] = []
    for i, (model, qformat) in enumerate(zip(frame["model"], frame["qformat"], strict=True)):
        model, qformat = str(model).strip().lower(), str(qformat).strip().lower()
        if qformat in SKIPPED_QFORMATS:
            skipped[SKIPPED_QFORMATS[qformat]] += 1
        elif qformat not in QFORMATS:
            skipped[f"unknown qformat {qformat!r}"] += 1
        elif model not in MODEL_NAMES:
            skipped[f"unknown model {model!r}"] += 1
        else:
            row = {c: float(v[i]) for c, v in nums.items()}
            points += _row_points(gpu_name, MODEL_NAMES[model], QFORMATS[qformat], row)
    report = ImportReport(len(frame), len(points), tuple(skipped.most_common()))
    return ProfileTable(points), report


def _row_points(
    gpu: str, model: str, precision: tuple[WeightFormat, KVFormat], row: dict[str, float]
) -> list[LatencyPoint]:
    engine = (gpu, model, *precision, int(row["tp"]))
    sm, batch, prompt = row["mps_percentage"], int(row["batch_size"]), int(row["input_len"])
    context = round(prompt + row["output_len"] / 2)
    return [
        LatencyPoint(*engine, sm, Phase.PREFILL, batch, prompt, row["prefill_time"]),
        LatencyPoint(*engine, sm, Phase.DECODE, batch, context, row["tpot"]),
    ]
