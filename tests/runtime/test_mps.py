"""MPS daemon control against a fake nvidia-cuda-mps-control (the real one needs a GPU)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fineserve.runtime.errors import DeployError
from fineserve.runtime.mps import (
    MpsBinaries,
    MpsController,
    find_binaries,
    gpu_groups,
    make_group,
)


class FakeControl:
    """Records commands; '-d' creates the control socket file, 'quit' removes it."""

    def __init__(self, start_ok: bool = True) -> None:
        self.calls: list[tuple[list[str], str | None, dict]] = []
        self.start_ok = start_ok

    def __call__(self, argv, input=None, env=None, **_):
        self.calls.append((argv, input, env))
        pipe = Path(env["CUDA_MPS_PIPE_DIRECTORY"])
        if argv[1:] == ["-d"]:
            if self.start_ok:
                (pipe / "control").touch()
            return subprocess.CompletedProcess(argv, 0, "", "")
        alive = (pipe / "control").exists()
        if input == "quit\n" and alive:
            (pipe / "control").unlink()
        return subprocess.CompletedProcess(argv, 0 if alive else 1, "", "")


BIN = MpsBinaries(Path("/nv/bin/nvidia-cuda-mps-control"), Path("/nv/bin/nvidia-cuda-mps-server"))


def test_start_sets_env_then_stop(tmp_path):
    fake = FakeControl()
    g = make_group((0,), ("GPU-abc",), tmp_path)
    ctl = MpsController(BIN, run=fake)
    assert ctl.start(g) is True
    argv, _, env = next(c for c in fake.calls if c[0][1:] == ["-d"])
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-abc"
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == str(tmp_path / "mps" / "gpu0")
    assert env["CUDA_MPS_LOG_DIRECTORY"] == str(tmp_path / "logs" / "mps-gpu0")
    assert env["PATH"].startswith("/nv/bin")
    assert ctl.is_running(g)
    assert ctl.stop(g) is True
    assert not ctl.is_running(g)
    assert fake.calls[-1][1] == "quit\n"


def test_running_daemon_is_reused_not_started(tmp_path):
    fake = FakeControl()
    g = make_group((1,), ("GPU-b",), tmp_path)
    g.pipe_dir.mkdir(parents=True)
    (g.pipe_dir / "control").touch()
    assert MpsController(BIN, run=fake).start(g) is False
    assert not any(c[0][1:] == ["-d"] for c in fake.calls)


def test_daemon_that_never_answers_is_an_error(tmp_path):
    g = make_group((0,), ("GPU-abc",), tmp_path)
    with pytest.raises(DeployError, match="does not answer"):
        MpsController(BIN, run=FakeControl(start_ok=False)).start(g, wait_s=0.3)


def test_long_run_dir_moves_the_pipe_to_tmp(tmp_path):
    deep = tmp_path / ("x" * 90)
    g = make_group((0, 1), ("GPU-a", "GPU-b"), deep)
    assert g.name == "gpu0-1"
    assert str(g.pipe_dir).startswith("/tmp/fineserve-mps-") and len(str(g.pipe_dir)) < 80
    assert g.log_dir == deep / "logs" / "mps-gpu0-1"


def test_tp_engines_link_gpus_into_groups():
    assert gpu_groups([(0,), (1,), (2, 3), (3,), (0,)]) == [(0,), (1,), (2, 3)]
    assert gpu_groups([(0, 1), (1, 2), (4,)]) == [(0, 1, 2), (4,)]


def test_missing_binaries_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr("fineserve.runtime.mps.EXTRA_DIRS", ())
    with pytest.raises(DeployError, match="nvidia-cuda-mps-control not found.*--no-mps"):
        find_binaries(path=str(tmp_path))


def test_binaries_found_on_path(tmp_path):
    for name in ("nvidia-cuda-mps-control", "nvidia-cuda-mps-server"):
        p = tmp_path / name
        p.write_text("#!/bin/sh\n")
        p.chmod(0o755)
    b = find_binaries(path=str(tmp_path))
    assert b.control == tmp_path / "nvidia-cuda-mps-control"
