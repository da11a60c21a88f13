"""bench/multigpu.py --dry-run: the ILP plans the 2-GPU spec with a TP=2 engine, and every
engine's command and environment come out as a 2-GPU host would start them (no GPU here)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_plans_a_tp2_engine_on_one_two_gpu_daemon(tmp_path):
    res = subprocess.run([sys.executable, "bench/multigpu.py", "--dry-run", "--work",
                          str(tmp_path), "--plan-time-limit", "10"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-2000:]
    assert re.findall(r"MPS daemon (\S+): GPUs \[0, 1\]", out) == ["gpu0-1"]
    tp = re.search(r"coder-32b-0 \(GPUs \[0, 1\].*\n(.*)\n(.*)", out)
    assert tp is not None, out[-2000:]
    argv, env = tp.group(1), tp.group(2)
    assert "--tensor-parallel-size 2" in argv and "--load-format dummy" in argv
    assert "CUDA_VISIBLE_DEVICES=0,1 " in env and "NCCL_NVLS_ENABLE=0" in env
    assert "CUDA_DEVICE_MAX_CONNECTIONS" not in env
    # every TP=1 engine names one GPU, by its position in the gpu0-1 daemon's list
    singles = re.findall(r"\(GPUs \[(\d)\], MPS group gpu0-1\):\n.*\n.*CUDA_VISIBLE_DEVICES=(\d) ",
                         out)
    assert len(singles) == 3 and all(g == d for g, d in singles)
    assert (tmp_path / "plan.yaml").is_file()
    assert "predicted SLO attainment: " in out
