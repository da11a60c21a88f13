"""What a GPU run writes into its own log, so a failure can be read from the one log that
comes back from the host: an engine's root cause (the deploy's error quotes only its log's
last line, vLLM's "Engine core initialization failed. See root cause above") and what each
process really holds on the GPU (the overheads the plans assume)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from fineserve.runtime.gateway_process import RAISED, first_traceback

ERROR = re.compile(r"Error\b|\bERROR\b|CUDA out of memory")
BEFORE, AFTER, MOST, WIDTH = 3, 40, 80, 300


def first_cause(lines: list[str]) -> list[str]:
    """The lines around the first traceback of a log (or its first error line): from a few
    lines before it to its exception line and a few after, at most ``MOST`` lines (the
    middle of a deep stack left out), each cut at ``WIDTH`` characters; [] if none."""
    found = first_traceback(lines)
    if found is None:
        start = next((i for i, ln in enumerate(lines) if ERROR.search(ln)), None)
        if start is None:
            return []
        found = start, next((i for i in range(start + 1, len(lines))
                             if RAISED.search(lines[i])), None)
    start, raised = found
    end = min(len(lines), start + AFTER if raised is None else raised + BEFORE + 1)
    begin = max(0, start - BEFORE)
    out = lines[begin:end]
    if len(out) > MOST:
        head = MOST // 4
        out = [*out[:head], f"... ({len(out) - MOST} lines left out) ...",
               *out[len(out) - (MOST - head):]]
    return [ln[:WIDTH] for ln in out]


def engine_failures(run_dir: Path) -> list[str]:
    """Per engine log of a deployment's run directory that holds an error: a header line,
    then ``first_cause`` of it."""
    out = []
    for log in sorted((run_dir / "logs").glob("engine-*.log")):
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        cause = first_cause(lines)
        if cause:
            out += [f"--- {log}: from its first error ---", *cause]
    return out


def gpu_processes() -> list[str]:
    """nvidia-smi's per-process GPU memory and each GPU's used / total memory (csv lines);
    [] where there is no nvidia-smi (CPU runs)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    out = []
    for query in ("--query-compute-apps=pid,process_name,used_memory",
                  "--query-gpu=index,memory.used,memory.total"):
        try:
            r = subprocess.run([exe, query, "--format=csv"], capture_output=True, text=True,
                               timeout=15, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return [*out, f"nvidia-smi: {exc}"]
        out += (r.stdout or r.stderr).splitlines()
    return out
