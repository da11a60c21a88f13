"""Request lengths: parametric presets or a user's ShareGPT-format conversations.

Presets are log-normal distributions matched to a mean and a standard deviation (method of
moments), truncated to [1, max]. ``sharegpt`` uses the means the vLLM paper reports for its
ShareGPT sample (161 prompt, 338 output tokens); ``lmsys`` the means and standard deviations
the LMSYS-Chat-1M paper reports per prompt and response (69.5 +- 143.3, 214.5 +- 226.6). The
ShareGPT spreads are our assumption (CV 1.0 and 0.8), so prefer ``ShareGptFile`` with the
real dataset when the tail matters.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from fineserve.errors import SpecError


class LengthDistribution(Protocol):
    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(prompt tokens, output tokens), integer arrays of length n."""
        ...


def _lognormal(rng: np.random.Generator, mean: float, std: float, n: int, cap: int
               ) -> np.ndarray:
    sigma2 = math.log(1 + (std / mean) ** 2)
    mu = math.log(mean) - sigma2 / 2
    x = rng.lognormal(mu, math.sqrt(sigma2), n)
    return np.clip(np.rint(x), 1, cap).astype(np.int64)


@dataclass(frozen=True, slots=True)
class LogNormalLengths:
    prompt_mean: float
    prompt_std: float
    output_mean: float
    output_std: float
    max_prompt: int = 8192
    max_output: int = 4096

    def sample(self, rng, n):
        return (_lognormal(rng, self.prompt_mean, self.prompt_std, n, self.max_prompt),
                _lognormal(rng, self.output_mean, self.output_std, n, self.max_output))


@dataclass(frozen=True, slots=True)
class FixedLengths:
    prompt: int
    output: int

    def sample(self, rng, n):
        return np.full(n, self.prompt, np.int64), np.full(n, self.output, np.int64)


PROMPT_CV, OUTPUT_CV = 1.0, 0.8  # assumed spreads where only means are known


def around_means(prompt_mean: float, output_mean: float) -> LogNormalLengths:
    """Log-normal lengths with the given means and the assumed spreads above."""
    return LogNormalLengths(prompt_mean, prompt_mean * PROMPT_CV,
                            output_mean, output_mean * OUTPUT_CV)


PRESETS: dict[str, LengthDistribution] = {
    "sharegpt": around_means(161, 338),
    "lmsys": LogNormalLengths(69.5, 143.3, 214.5, 226.6),
}


@dataclass(frozen=True, slots=True)
class ShareGptFile:
    """Empirical (prompt, output) pairs from a ShareGPT-format JSON file, resampled.

    Each conversation's first human turn is the prompt and the next assistant turn the output.
    Without a tokenizer, tokens are estimated as characters / ``chars_per_token`` (about 4 for
    English text with Llama-style tokenizers).
    """

    pairs: tuple[tuple[int, int], ...]

    @classmethod
    def load(cls, path: str | Path, chars_per_token: float = 4.0) -> ShareGptFile:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SpecError(f"{path}: cannot read ShareGPT JSON: {exc}") from None
        pairs = []
        for conv in data if isinstance(data, list) else []:
            turns = conv.get("conversations", []) if isinstance(conv, dict) else []
            for a, b in zip(turns, turns[1:], strict=False):
                if a.get("from") == "human" and b.get("from") in ("gpt", "chatgpt", "assistant"):
                    p = max(1, round(len(a.get("value", "")) / chars_per_token))
                    o = max(1, round(len(b.get("value", "")) / chars_per_token))
                    pairs.append((p, o))
                    break
        if not pairs:
            raise SpecError(f"{path}: no human/gpt turn pairs found",
                            hint="expect a list of {conversations: [{from, value}, ...]}")
        return cls(tuple(pairs))

    def sample(self, rng, n):
        idx = rng.integers(0, len(self.pairs), n)
        arr = np.asarray(self.pairs, dtype=np.int64)[idx]
        return arr[:, 0], arr[:, 1]


def length_distribution(name: str) -> LengthDistribution:
    """A preset name, ``fixed:P,O``, or a path to a ShareGPT JSON file."""
    if name in PRESETS:
        return PRESETS[name]
    if name.startswith("fixed:"):
        try:
            p, o = (int(x) for x in name[6:].split(","))
        except ValueError:
            raise SpecError(f"lengths: {name!r} is not fixed:PROMPT,OUTPUT") from None
        return FixedLengths(p, o)
    if Path(name).is_file():
        return ShareGptFile.load(name)
    raise SpecError(f"lengths: unknown distribution {name!r}",
                    hint=f"use {', '.join(PRESETS)}, fixed:P,O or a ShareGPT JSON path")
