"""fineserve/runtime/children.py with real child processes: output prefixes and the tee, core
pinning, the stop signal, the SIGKILL after the grace, interrupts with and without ``trap``,
children that cannot start. A stuck child sleeps 30 s: a stop that never comes fails its
test (wrong exit code) instead of hanging it."""

from __future__ import annotations

import _thread
import io
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fineserve.errors import FineserveError
from fineserve.runtime.children import Child, ChildStartError, Stop, prefixed, run_children

PY = sys.executable


def child(name: str, code: str, *extra: str, **kw) -> Child:
    return Child(name, (PY, "-c", code, *extra), dict(os.environ), **kw)


def when_ready(ready: Path, act) -> None:
    """``act()`` from a thread once the child has written ``ready``."""

    def watch() -> None:
        while not ready.exists():
            time.sleep(0.02)
        act()

    threading.Thread(target=watch, daemon=True).start()


def gone(pid: int) -> bool:
    """No such process, or only its zombie (holding nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2:].split()[0] == "Z"


def running_with(token: str) -> list[int]:
    """Pids of live (non-zombie) processes with ``token`` in their command line."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if token.encode() in cmd and not gone(int(entry.name)):
                out.append(int(entry.name))
    return out


def test_output_is_prefixed_line_by_line_and_teed_unprefixed(tmp_path):
    sink = io.StringIO()
    a = child("gpu0", "import sys; print('one'); sys.stdout.write('no newline')",
              log=tmp_path / "a.log")
    b = child("a@gpu1:control", "import sys; print('to stderr', file=sys.stderr); sys.exit(3)")
    assert run_children([a, b], sink=sink) == (0, 3)
    lines = sink.getvalue().splitlines()
    assert sorted(lines) == ["[a@gpu1:control] to stderr", "[gpu0] no newline", "[gpu0] one"]
    assert lines.index("[gpu0] one") < lines.index("[gpu0] no newline")  # a child's own order
    assert sink.getvalue().endswith("\n")
    assert (tmp_path / "a.log").read_text() == "one\nno newline"  # as the child wrote it


def test_undecodable_output_is_replaced_not_fatal_to_the_reader():
    sink = io.StringIO()
    code = "import sys; sys.stdout.buffer.write(b'\\xff\\xfe bad\\n'); print('after')"
    assert run_children([child("a", code)], sink=sink) == (0,)
    assert sink.getvalue().splitlines() == ["[a] \ufffd\ufffd bad", "[a] after"]


def test_a_closed_sink_does_not_block_a_chatty_child(tmp_path):
    """More output than a pipe holds (64 KiB): the reader keeps draining into the tee."""
    sink = io.StringIO()
    sink.close()
    code = "for i in range(20000): print(f'line {i:5d}')"
    assert run_children([child("a", code, log=tmp_path / "a.log")], sink=sink) == (0,)
    assert len((tmp_path / "a.log").read_text().splitlines()) == 20000


def test_a_child_gets_its_cores_and_the_others_inherit_ours():
    cpu = min(os.sched_getaffinity(0))
    sink = io.StringIO()
    show = "import os; print(sorted(os.sched_getaffinity(0)))"
    run_children([child("pinned", show, cores=(cpu,)), child("free", show)], sink=sink)
    lines = sink.getvalue().splitlines()
    assert f"[pinned] [{cpu}]" in lines
    assert f"[free] {sorted(os.sched_getaffinity(0))}" in lines


def test_a_child_still_running_at_the_deadline_gets_the_stop_signal():
    stuck = child("b", "import time; time.sleep(30)")
    assert run_children([stuck], time.time() + 1, io.StringIO()) == (-signal.SIGTERM,)


CLEAN_STOP = """
import signal, sys, time
def stop(signum, frame):
    print('stopping on', signal.Signals(signum).name, flush=True)
    sys.exit(7)
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
open(sys.argv[1], 'w').close()
time.sleep(30)
"""


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_trap_turns_sigterm_or_ctrl_c_into_the_stop_signal_and_returns_the_codes(tmp_path,
                                                                                 how):
    """The lanes: the parent stays to merge what its children wrote."""
    ready = tmp_path / "ready"
    if how == "sigterm":
        when_ready(ready, lambda: os.kill(os.getpid(), signal.SIGTERM))
    else:
        when_ready(ready, _thread.interrupt_main)
    sink = io.StringIO()
    before = signal.getsignal(signal.SIGTERM)
    stop = Stop(signal.SIGINT, 20.0, trap=True, stopping="lanes: stopping", killing="kill")
    codes = run_children([child("a", CLEAN_STOP, str(ready))], sink=sink, stop=stop)
    assert codes == (7,)
    assert sink.getvalue().splitlines() == ["lanes: stopping", "[a] stopping on SIGINT"]
    assert signal.getsignal(signal.SIGTERM) == before  # our handler removed


STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the grandchild
grand = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])
with open(sys.argv[1] + '.pid', 'w') as f:
    f.write(str(grand.pid))
open(sys.argv[1], 'w').close()
time.sleep(30)
"""


def test_a_child_that_ignores_the_stop_is_killed_after_the_grace_with_its_group(tmp_path):
    ready = tmp_path / "ready"
    when_ready(ready, lambda: os.kill(os.getpid(), signal.SIGTERM))
    sink = io.StringIO()
    stop = Stop(signal.SIGTERM, 0.5, trap=True, killing="lanes: killing them")
    assert run_children([child("a", STUBBORN, str(ready))], sink=sink, stop=stop) == (-9,)
    assert sink.getvalue().splitlines() == ["lanes: killing them"]  # no stopping note set
    grand = int((tmp_path / "ready.pid").read_text())
    for _ in range(100):  # SIGKILL is asynchronous: the grandchild dies just after
        if gone(grand):
            break
        time.sleep(0.05)
    assert gone(grand)


def test_what_a_child_leaves_in_its_group_is_killed_when_it_exits(tmp_path):
    """A shell's background job stays in the child's group after the child exits 0: the run
    must not return with it still running (review s6, M1)."""
    pid_file = tmp_path / "bg.pid"
    leaver = Child("a", ("sh", "-c", f"sleep 37 & echo $! > {pid_file}; exit 0"),
                   dict(os.environ))
    assert run_children([leaver], sink=io.StringIO()) == (0,)
    straggler = int(pid_file.read_text())
    for _ in range(100):  # SIGKILL is asynchronous
        if gone(straggler):
            break
        time.sleep(0.05)
    assert gone(straggler)


def test_an_interrupt_without_trap_stops_the_children_on_its_way_out(tmp_path):
    """The profiler: a Ctrl-C (or a SIGTERM handler's SystemExit) unwinds through
    ``run_children``, which first stops every child and waits for it."""
    ready = tmp_path / "ready"
    when_ready(ready, _thread.interrupt_main)
    sink = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        run_children([child("a", CLEAN_STOP, str(ready), str(tmp_path))], sink=sink)
    assert "[a] stopping on SIGTERM" in sink.getvalue().splitlines()  # waited for it
    assert running_with(str(tmp_path)) == []


def test_a_child_that_cannot_start_is_one_error_and_the_started_ones_are_stopped(tmp_path):
    token = str(tmp_path / "token")
    started = child("a", "import time; time.sleep(30)", token)
    missing = Child("gpu1", ("/no/such/program",), {})
    with pytest.raises(ChildStartError, match=r"could not start gpu1 \(/no/such/program\)"):
        run_children([started, missing], sink=io.StringIO())
    assert running_with(token) == []
    with pytest.raises(FineserveError, match="could not start a"):  # exit code 2
        run_children([child("a", "pass", cwd=tmp_path / "missing")], sink=io.StringIO())
    with pytest.raises(ChildStartError, match="could not start a: its log .*No such file"):
        run_children([child("a", "pass", log=tmp_path / "missing" / "a.log")])


@given(name=st.text(st.characters(blacklist_characters="\n"), max_size=12),
       body=st.text(st.characters(blacklist_characters="\n"), max_size=40),
       newline=st.booleans())
def test_a_prefixed_line_is_the_name_then_the_line_then_one_newline(name, body, newline):
    out = prefixed(name, body + ("\n" if newline else ""))
    assert out == f"[{name}] {body}\n"


def test_a_stop_interrupted_midway_signals_the_rest_when_called_again(monkeypatch):
    """A Ctrl-C landing inside stop() (trap mode calls stop() again) must not leave the
    children after it without the stop signal until the SIGKILL (review s6, L2)."""
    from types import SimpleNamespace

    from fineserve.runtime import children as ch

    run = ch._Run([], Stop(signal.SIGINT, 5.0, trap=True), io.StringIO(), 0.0)
    run.procs = [SimpleNamespace(pid=p) for p in (101, 102, 103)]  # type: ignore[misc]
    sent: list[int] = []

    def signal_group(proc, sig) -> None:
        sent.append(proc.pid)
        if len(sent) == 1:
            raise KeyboardInterrupt  # lands right after the first group got its signal

    monkeypatch.setattr(ch, "_signal_group", signal_group)
    with pytest.raises(KeyboardInterrupt):
        run.stop()
    run.stop()  # what _wait does with the KeyboardInterrupt in trap mode
    run.stop()
    assert sent == [101, 102, 103]  # each once, none skipped
