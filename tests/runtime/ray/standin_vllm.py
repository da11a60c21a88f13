"""A stand-in for vLLM's OpenAI server in Ray driver tests (agents, loss, return, stop).

Invoked exactly as the runtime invokes vLLM (``ENGINE_PYTHON -m vllm.entrypoints.openai.
api_server --host H --port P --served-model-name NAME ...``; ``ENGINE_PYTHON`` is a script that
runs this file). Answers /health, /v1/models and /v1/completions, naming the engine that
answered in ``system_fingerprint``. Real engines are exercised in test_ray_e2e.py.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _arg(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


class _Handler(BaseHTTPRequestHandler):
    name = ""
    where = ""

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        if self.path == "/health":
            self._send(200, {})
        elif self.path == "/v1/models":
            self._send(200, {"data": [{"id": self.name}]})
        else:
            self._send(404, {})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        n = int(body.get("max_tokens", 4))
        self._send(200, {"model": self.name, "system_fingerprint": self.where,
                         "choices": [{"text": " x" * n, "finish_reason": "length"}],
                         "usage": {"completion_tokens": n}})

    def log_message(self, *args) -> None:
        pass


def main(argv: list[str]) -> None:
    host, port = _arg(argv, "--host"), int(_arg(argv, "--port"))
    _Handler.name = _arg(argv, "--served-model-name")
    _Handler.where = f"{host}:{port}"
    ThreadingHTTPServer((host, port), _Handler).serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
