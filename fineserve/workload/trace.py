"""Traces: the arrival time, model and lengths of every request, in JSONL or Parquet.

Generation gives each model its own random stream, derived from the seed and the model's
name, so a trace is deterministic for a seed and adding a model leaves the others' requests
unchanged.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fineserve.errors import SpecError
from fineserve.workload.arrivals import ArrivalProcess
from fineserve.workload.lengths import LengthDistribution

COLUMNS = ("arrival_s", "model", "prompt_tokens", "output_tokens")


@dataclass(frozen=True)
class Trace:
    arrival_s: np.ndarray  # float64, sorted
    model: np.ndarray  # str objects
    prompt_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # int64

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self) else 0.0

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({c: getattr(self, c) for c in COLUMNS})

    @classmethod
    def from_frame(cls, df: pd.DataFrame, source: str = "trace") -> Trace:
        missing = [c for c in COLUMNS if c not in df.columns]
        if missing:
            raise SpecError(f"{source}: missing column(s) {', '.join(missing)}",
                            hint=f"columns are {', '.join(COLUMNS)}")
        for col in ("arrival_s", "prompt_tokens", "output_tokens"):
            bad = pd.to_numeric(df[col], errors="coerce")
            if bad.isna().any() or (bad < (0 if col == "arrival_s" else 1)).any():
                row = int(np.flatnonzero(bad.isna() | (bad < (0 if col == "arrival_s" else 1)))[0])
                raise SpecError(f"{source} row {row + 1}, column {col}: "
                                f"{df[col].iloc[row]!r} is not a valid value")
        df = df.sort_values("arrival_s", kind="stable")
        return cls(df["arrival_s"].to_numpy(float), df["model"].astype(str).to_numpy(object),
                   df["prompt_tokens"].to_numpy(np.int64),
                   df["output_tokens"].to_numpy(np.int64))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        df = self.to_frame()
        if path.suffix == ".parquet":
            df.to_parquet(path, index=False)
        elif path.suffix in (".jsonl", ".json"):
            with path.open("w") as fh:
                for rec in df.itertuples(index=False):
                    fh.write(json.dumps({"arrival_s": round(float(rec.arrival_s), 6),
                                         "model": rec.model,
                                         "prompt_tokens": int(rec.prompt_tokens),
                                         "output_tokens": int(rec.output_tokens)}) + "\n")
        elif path.suffix == ".csv":
            df.to_csv(path, index=False)
        else:
            raise SpecError(f"{path}: unknown trace format", hint="use .jsonl, .parquet or .csv")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        path = Path(path)
        try:
            if path.suffix == ".parquet":
                df = pd.read_parquet(path)
            elif path.suffix in (".jsonl", ".json"):
                df = pd.read_json(path, lines=True)
            elif path.suffix == ".csv":
                df = pd.read_csv(path)
            else:
                raise SpecError(f"{path}: unknown trace format",
                                hint="use .jsonl, .parquet or .csv")
        except (OSError, ValueError) as exc:
            raise SpecError(f"{path}: cannot read trace: {exc}") from None
        return cls.from_frame(df, source=path.name)


@dataclass(frozen=True, slots=True)
class ModelLoad:
    name: str
    arrivals: ArrivalProcess
    lengths: LengthDistribution


def _stream(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))


def generate(loads: list[ModelLoad], duration_s: float, seed: int = 0) -> Trace:
    """Merge every model's requests into one trace sorted by arrival time."""
    parts = []
    for load in loads:
        rng = _stream(seed, load.name)
        t = load.arrivals.times(rng, duration_s)
        p, o = load.lengths.sample(rng, t.size)
        parts.append(pd.DataFrame({"arrival_s": t, "model": load.name,
                                   "prompt_tokens": p, "output_tokens": o}))
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(COLUMNS))
    return Trace.from_frame(df)
