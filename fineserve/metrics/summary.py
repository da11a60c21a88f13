"""What users got: per-request records and the run summary both replay and simulate write.

A request meets its SLO when it completed, its TTFT is within the TTFT SLO and its TPOT (mean
gap between output tokens after the first) within the TPOT SLO. Failed and rejected requests
count as misses. Goodput is SLO-meeting requests per second. Drops are requests refused
(429, by a local scheduler) or without an engine (503). Queueing delay is the time from
arrival to the engine first scheduling the request (known in simulation only).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from fineserve.planner.schema import Slo


@dataclass(slots=True)
class RequestRecord:
    index: int
    model: str
    scheduled_s: float  # trace arrival time / speed
    sent_s: float  # when the request actually left (relative to run start)
    prompt_tokens: int
    output_tokens: int  # asked for
    status: int = 0  # HTTP status; 0 = transport error
    first_token_s: float = math.nan
    finished_s: float = math.nan
    tokens_received: int = 0
    error: str = ""
    queued_s: float = math.nan  # arrival to first scheduling by the engine (simulate only)

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error and self.tokens_received > 0

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.scheduled_s

    @property
    def tpot_s(self) -> float:
        if self.tokens_received <= 1:
            return 0.0
        return (self.finished_s - self.first_token_s) / (self.tokens_received - 1)

    @property
    def e2e_s(self) -> float:
        return self.finished_s - self.scheduled_s


def records_frame(records: list[RequestRecord]) -> pd.DataFrame:
    df = pd.DataFrame([asdict(r) for r in records])
    if df.empty:
        return df
    df["ttft_s"] = df.first_token_s - df.scheduled_s
    many = df.tokens_received > 1
    df["tpot_s"] = 0.0
    df.loc[many, "tpot_s"] = (df.finished_s - df.first_token_s)[many] / (
        df.tokens_received[many] - 1)
    df["e2e_s"] = df.finished_s - df.scheduled_s
    df["ok"] = (df.status == 200) & (df.error == "") & (df.tokens_received > 0)
    return df


def _pct(values: pd.Series) -> dict[str, float | None]:
    v = values.dropna().to_numpy()
    if v.size == 0:
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    return {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)),
            "p99": float(np.percentile(v, 99)), "mean": float(v.mean())}


def _group(df: pd.DataFrame, slo: Slo | None, duration_s: float) -> dict:
    ok = df[df.ok]
    out = {
        "requests": int(len(df)), "completed": int(len(ok)),
        "errors": int(((~df.ok) & (df.status != 429)).sum()),
        "rejected_429": int((df.status == 429).sum()),
        "drops": int(df.status.isin((429, 503)).sum()),
        "throughput_rps": len(ok) / duration_s,
        "output_tokens_per_s": float(ok.tokens_received.sum()) / duration_s,
        "ttft_s": _pct(ok.ttft_s), "tpot_s": _pct(ok.tpot_s), "e2e_s": _pct(ok.e2e_s),
        "queue_s": _pct(ok.queued_s),
    }
    if slo is not None:
        n = max(1, len(df))
        out |= {"slo": {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s},
                "slo_attainment": float(df.slo_met.sum() / n),
                "ttft_attainment": float(df.ttft_met.sum() / n),
                "tpot_attainment": float(df.tpot_met.sum() / n),
                "goodput_rps": float(df.slo_met.sum()) / duration_s}
    return out


def summarize(records: list[RequestRecord], slos: dict[str, Slo], duration_s: float,
              source: str) -> dict:
    """The run summary (JSON-ready). ``source`` is "replay" or "simulate"."""
    df = records_frame(records)
    duration_s = max(duration_s, 1e-9)
    summary: dict = {"source": source, "duration_s": duration_s, "per_model": {}}
    if df.empty:
        summary["overall"] = {"requests": 0}
        return summary
    # each request's verdict against its model's SLOs, once (no SLO known: not met)
    df["ttft_met"] = df.ok & (df.ttft_s <= df.model.map({m: s.ttft_s for m, s in slos.items()}))
    df["tpot_met"] = df.ok & (df.tpot_s <= df.model.map({m: s.tpot_s for m, s in slos.items()}))
    df["slo_met"] = df.ttft_met & df.tpot_met
    for model, g in df.groupby("model", sort=True):
        summary["per_model"][str(model)] = _group(g, slos.get(str(model)), duration_s)
    overall = _group(df, None, duration_s)
    if slos:
        met = int(df.slo_met.sum())
        overall |= {"slo_attainment": met / len(df), "goodput_rps": met / duration_s}
    summary["overall"] = overall
    lag = (df.sent_s - df.scheduled_s) * 1e3
    summary["send_lag_ms"] = {"p50": float(lag.quantile(0.5)), "p99": float(lag.quantile(0.99)),
                              "max": float(lag.max())}
    return summary
