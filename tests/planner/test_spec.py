"""Spec parsing: good specs build instances; bad ones give one line naming the field."""

import pytest

from fineserve.errors import SpecError
from fineserve.planner.schema import KVMode
from fineserve.planner.spec import load_example, load_spec

GOOD = """
cluster: {gpu: h100, nodes: 2, gpus_per_node: 4}
models:
  - {name: a, model: llama-3.1-8b, weights: fp8, kv: fp8, rate: 3, slo: {ttft_ms: 500, tpot_ms: 50}}
  - {name: b, model: qwen3-32b, weights: int4, rate: 1, slo: {ttft_ms: 900, tpot_ms: 80},
     tp: [2, 4], prompt_tokens: 1000}
planner: {kv_mode: static, sm_levels: [50, 100]}
"""


def write(tmp_path, text, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_spec(tmp_path):
    inst = load_spec(write(tmp_path, GOOD))
    assert [m.name for m in inst.models] == ["a", "b"]
    assert inst.cluster.num_gpus == 8 and inst.cluster.gpus[5].node == "node1"
    b = inst.model("b")
    assert b.tp_choices == (2, 4) and b.lengths.prompt_mean == 1000
    assert b.lengths.output_mean == 256  # workload default
    assert b.slo.ttft_s == pytest.approx(0.9)
    assert inst.settings.kv_mode is KVMode.STATIC and inst.settings.sm_levels == (50, 100)


@pytest.mark.parametrize("text,message", [
    ("models: [", r"spec.yaml: malformed YAML at line 1"),
    ("- a\n- b\n", r"expected a mapping with 'models'"),
    ("models: []", r"spec.yaml: models: List should have at least 1 item"),
    (GOOD.replace("rate: 3", "rate: -3"), r"models\[0\].rate: Input should be greater than 0"),
    (GOOD.replace("model: llama-3.1-8b", "model: llama-9b"),
     r"models\[0\].model: unknown model 'llama-9b'.*fineserve models"),
    (GOOD.replace("weights: fp8", "weights: fp6"),
     r"models\[0\].weights: unknown weight precision 'fp6'"),
    (GOOD.replace("ttft_ms: 500", "ttft_msec: 500"), r"models\[0\].slo.ttft_msec: unknown key"),
    (GOOD.replace("name: b", "name: a"), r"model names must be unique; repeated: a"),
    (GOOD.replace("gpu: h100", "gpu: h900"), r"cluster.gpu: unknown GPU 'h900'"),
    (GOOD.replace("kv_mode: static", "kv_mode: elastic"), r"planner.kv_mode: Input should be"),
])
def test_bad_specs_name_the_field(tmp_path, text, message):
    with pytest.raises(SpecError, match=message) as info:
        load_spec(write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(tmp_path / "nope.yaml")


def test_bundled_example_is_mixed_precision():
    inst = load_example()
    precisions = {m.spec.precision.name for m in inst.models}
    assert len(precisions) >= 3 and inst.cluster.num_gpus == 4
