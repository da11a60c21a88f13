"""The tiny model folder: config and a word-level tokenizer vLLM can load."""

from __future__ import annotations

import json

from fineserve.profiles.catalog import resolve_arch
from fineserve.testing.tiny_model import SPECIALS, VOCAB_SIZE, vocabulary, write_tiny_model


def test_vocabulary_is_unique_and_exact():
    for n in (VOCAB_SIZE, 5000):
        v = vocabulary(n)
        assert len(v) == n == len(set(v))
        assert v[: len(SPECIALS)] == list(SPECIALS)


def test_folder_is_a_catalog_readable_llama(tmp_path):
    d = write_tiny_model(tmp_path / "m")
    arch = resolve_arch(str(d))
    assert (arch.num_layers, arch.hidden_size, arch.num_heads, arch.num_kv_heads) == (2, 256, 4, 2)
    assert arch.vocab_size == VOCAB_SIZE
    tok = json.loads((d / "tokenizer.json").read_text())
    assert tok["model"]["type"] == "WordLevel" and len(tok["model"]["vocab"]) == VOCAB_SIZE
    assert max(tok["model"]["vocab"].values()) == VOCAB_SIZE - 1
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    assert "add_generation_prompt" in cfg["chat_template"]
    assert cfg["eos_token"] == "</s>"
