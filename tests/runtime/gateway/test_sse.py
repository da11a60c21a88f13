"""SSE relay: byte-exact pass-through, usage chunk stripping, token counting at any split."""

import json

from hypothesis import given
from hypothesis import strategies as st

from fineserve.runtime.gateway.sse import SseRelay


def stream(n: int, chat: bool, spaced: bool) -> tuple[bytes, bytes]:
    """An engine's stream with a usage chunk, and the same stream without it."""
    seps = (", ", ": ") if spaced else (",", ":")
    events = []
    if chat:  # vLLM's first chat chunk: the role, empty content
        events.append({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    for i in range(n):
        piece = {"delta": {"content": f" t{i}"}} if chat else {"text": f" t{i}"}
        events.append({"choices": [{"index": 0, **piece}]})
    usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": n}}
    enc = [f"data: {json.dumps(e, separators=seps)}\n\n".encode() for e in events]
    done = b"data: [DONE]\n\n"
    u = f"data: {json.dumps(usage, separators=seps)}\n\n".encode()
    return b"".join([*enc, u, done]), b"".join([*enc, done])


def relay_all(data: bytes, cuts: list[int], strip: bool) -> tuple[bytes, int, SseRelay]:
    relay = SseRelay(strip)
    out, tokens, prev = [], 0, 0
    for c in [*sorted(set(cuts)), len(data)]:
        part, n = relay.feed(data[prev:c])
        out.append(part)
        tokens += n
        prev = c
    part, n = relay.flush()
    out.append(part)
    return b"".join(out), tokens + n, relay


@given(n=st.integers(0, 12), chat=st.booleans(), spaced=st.booleans(), strip=st.booleans(),
       cuts=st.lists(st.integers(0, 4000), max_size=30))
def test_any_split_gives_the_same_bytes_and_counts(n, chat, spaced, strip, cuts):
    with_usage, without = stream(n, chat, spaced)
    cuts = [c for c in cuts if c < len(with_usage)]
    out, tokens, relay = relay_all(with_usage, cuts, strip)
    assert out == (without if strip else with_usage)
    assert tokens == relay.tokens == n
    assert relay.usage_tokens == n and relay.output_tokens == n and relay.done


def test_without_usage_counts_events():
    _, without = stream(4, chat=False, spaced=True)
    out, tokens, relay = relay_all(without, [5, 50], strip=True)
    assert out == without and tokens == 4
    assert relay.usage_tokens is None and relay.output_tokens == 4


def test_comments_and_unterminated_last_event_pass_through():
    data = b": keep-alive\n\ndata: {\"choices\":[{\"text\":\"x\"}]}"
    out, tokens, relay = relay_all(data, [3], strip=True)
    assert out == data and tokens == 1 and not relay.done
