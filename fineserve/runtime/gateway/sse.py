"""Server-sent-event relay: forward an engine's stream byte for byte while counting tokens.

The gateway never decodes a chunk's JSON: it splits the stream at event boundaries (a blank
line), classifies each event by a few byte patterns and passes it on. Two kinds matter:

- the usage chunk (``"choices":[]`` with a ``"usage"`` object) that the gateway asks every
  engine for (``stream_options.include_usage``); it carries the exact completion-token count
  and is dropped when the client did not ask for it, so the client sees what it would have
  seen talking to the engine directly;
- content chunks (any other ``data:`` event except ``[DONE]`` and empty-text ones): the first
  one is the first token (TTFT), the last one ends decoding (TPOT).
"""

from __future__ import annotations

import re

_SEP = b"\n\n"
USAGE_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')  # also whole answers (proxy)
_EMPTY_TEXT = re.compile(rb'"(?:content|text)"\s*:\s*(?:""|null)')
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')


_DROP, _KEEP, _TOKEN = -1, 0, 1


class SseRelay:
    """Incremental SSE splitter; one per streamed response (not thread-safe, no I/O)."""

    __slots__ = ("strip_usage", "_tail", "tokens", "usage_tokens", "done")

    def __init__(self, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self._tail = b""  # an incomplete event carried to the next feed()
        self.tokens = 0  # content events seen
        self.usage_tokens: int | None = None  # completion_tokens of the usage chunk
        self.done = False  # [DONE] seen

    def feed(self, data: bytes) -> tuple[bytes, int]:
        """Take the next bytes from the engine.

        Returns:
            The bytes to forward now (complete events only) and how many content events
            they hold.
        """
        buf = self._tail + data if self._tail else data
        end = buf.rfind(_SEP)
        if end < 0:
            self._tail = buf
            return b"", 0
        end += 2
        self._tail = buf[end:]
        if buf.find(_SEP) == end - 2:  # the common case: one event per read
            kind = self._classify(buf[:end])
            return (b"" if kind == _DROP else buf[:end]), int(kind == _TOKEN)
        out = []
        tokens = 0
        for event in buf[:end].split(_SEP)[:-1]:
            kind = self._classify(event)
            if kind != _DROP:
                out.append(event + _SEP)
                tokens += kind == _TOKEN
        return b"".join(out), tokens

    def flush(self) -> tuple[bytes, int]:
        """What remains after the engine closed the stream (a last event without blank line)."""
        tail, self._tail = self._tail, b""
        if not tail.strip():
            return b"", 0
        kind = self._classify(tail)
        return (b"" if kind == _DROP else tail), int(kind == _TOKEN)

    @property
    def output_tokens(self) -> int:
        """The engine's own count when it sent one, else the content events seen."""
        return self.tokens if self.usage_tokens is None else self.usage_tokens

    def _classify(self, event: bytes) -> int:
        start = event.find(b"data:")
        if start < 0:
            return _KEEP  # comments, retry:, id: lines
        payload = event[start + 5:].strip()
        if payload == b"[DONE]":
            self.done = True
            return _KEEP
        if b'"usage"' in payload and _EMPTY_CHOICES.search(payload):
            m = USAGE_TOKENS.search(payload)
            if m is not None:
                self.usage_tokens = int(m.group(1))
            return _DROP if self.strip_usage else _KEEP
        if _EMPTY_TEXT.search(payload):
            return _KEEP
        self.tokens += 1
        return _TOKEN
