"""``python -m fineserve.runtime.gateway CONFIG``: ready line, SIGTERM drains, exit 0."""

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.runtime.gateway.harness import free_port


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def stub_proc():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fineserve.testing.stub_server", "--port",
                             str(port), "--models", "m", "--tpot-ms", "20"])
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_ready_line_drain_on_sigterm_and_exit_0(stub_proc, tmp_path):
    port = free_port()
    cfg = {"port": port, "drain_timeout_s": 10, "routes": [{
        "model": "pub", "ttft_slo_s": 1, "tpot_slo_s": 0.1, "upstreams": [{
            "engine_id": "e0", "base_url": f"http://127.0.0.1:{stub_proc}",
            "served_model_name": "m"}]}]}
    path = tmp_path / "gw.json"
    path.write_text(json.dumps(cfg))
    gw = subprocess.Popen([sys.executable, "-m", "fineserve.runtime.gateway", str(path)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert gw.stdout is not None
        assert gw.stdout.readline().strip() == f"gateway ready on http://127.0.0.1:{port}"
        body = json.dumps({"model": "pub", "prompt": "x", "max_tokens": 40, "stream": True})
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions",
                                     data=body.encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:  # 40 tokens x 20 ms = 0.8 s
            first = resp.readline()
            gw.send_signal(signal.SIGTERM)  # mid-stream: this request must still finish
            rest = resp.read()
        text = (first + rest).decode()
        assert text.count(" tok") == 40 and text.rstrip().endswith("data: [DONE]")
        assert gw.wait(15) == 0
        with pytest.raises(urllib.error.URLError):  # no longer listening
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait()


def test_bad_config_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "gw.json"
    path.write_text(json.dumps({"host": "0.0.0.0", "routes": [{
        "model": "m", "ttft_slo_s": 1, "tpot_slo_s": 0.1, "upstreams": [{
            "engine_id": "e0", "base_url": "http://127.0.0.1:1", "served_model_name": "m"}]}]}))
    res = subprocess.run([sys.executable, "-m", "fineserve.runtime.gateway", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: gw.json: api_keys must be set when host '0.0.0.0' is not loopback"]
