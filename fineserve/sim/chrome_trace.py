"""Chrome trace-event JSON of a simulation, viewable in Perfetto (ui.perfetto.dev) or
chrome://tracing.

Tracks: one process per GPU with one thread per engine on it (each engine step is a complete
"X" event, args: decoding sequences and prefill tokens; a TP engine's steps appear on each of
its GPUs), and a "requests" process with one thread per model holding each request's lifetime
as an async span (arrival to finish, with an instant at the first token). Times are in
microseconds of simulated time. Only built when asked for: a million-request trace is large.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fineserve.metrics.summary import RequestRecord
    from fineserve.sim.engine import EngineSim

REQUESTS_PID = 1_000_000  # after every GPU id


class ChromeTrace:
    def __init__(self) -> None:
        self.events: list[dict] = []
        self._tids: dict[str, int] = {}
        self._named: set[tuple[int, int]] = set()

    def _tid(self, name: str) -> int:
        return self._tids.setdefault(name, len(self._tids) + 1)

    def _meta(self, pid: int, tid: int, process: str, thread: str) -> None:
        if (pid, tid) in self._named:
            return
        if not any(p == pid for p, _ in self._named):
            self.events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                                "args": {"name": process}})
        self._named.add((pid, tid))
        self.events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                            "args": {"name": thread}})

    def step(self, eng: EngineSim, start_s: float, seconds: float, decoding: int,
             prefill_tokens: int) -> None:
        tid = self._tid(eng.name)
        for g in eng.gpus:
            self._meta(g, tid, f"GPU {g}", f"{eng.name} ({eng.sm_pct:g}% SM)")
            self.events.append({
                "ph": "X", "name": "prefill+decode" if prefill_tokens and decoding else
                ("prefill" if prefill_tokens else "decode"),
                "pid": g, "tid": tid, "ts": start_s * 1e6, "dur": seconds * 1e6,
                "args": {"decoding": decoding, "prefill_tokens": prefill_tokens}})

    def requests(self, records: list[RequestRecord]) -> None:
        for r in records:
            tid = self._tid(f"model:{r.model}")
            self._meta(REQUESTS_PID, tid, "requests", r.model)
            common = {"cat": "request", "id": r.index, "pid": REQUESTS_PID, "tid": tid,
                      "name": r.model}
            if not r.ok:
                self.events.append({**common, "ph": "n", "ts": r.scheduled_s * 1e6,
                                    "name": f"{r.model} rejected ({r.status})"})
                continue
            self.events.append({**common, "ph": "b", "ts": r.scheduled_s * 1e6,
                                "args": {"prompt": r.prompt_tokens,
                                         "output": r.output_tokens}})
            self.events.append({**common, "ph": "n", "ts": r.first_token_s * 1e6,
                                "name": "first token"})
            self.events.append({**common, "ph": "e", "ts": r.finished_s * 1e6})

    def write(self, path: Path) -> None:
        path.write_text(json.dumps({"traceEvents": self.events, "displayTimeUnit": "ms"}))
