"""Everything checked before a process starts: nodes, folders, quantization, ports, gateway."""

from __future__ import annotations

import json
import socket

import pytest

from fineserve.errors import SpecError
from fineserve.runtime.errors import DeployError
from fineserve.runtime.gateway_config import build_gateway_config
from fineserve.runtime.model_dirs import resolve_sources
from fineserve.runtime.prepare import local_engines, prepare
from fineserve.runtime.state import Mode
from fineserve.testing.tiny_model import write_tiny_model

from .helpers import demand, engine, options, plan
from .test_nvml import FakeNvml

GIB = 2**30


def _two_models():
    a, b = demand("chat", ttft=0.4, tpot=0.04), demand("code", weights="fp8", kv="fp8")
    return a, b, plan([a, b], [engine("chat-0", a, rate=3.0), engine("chat-1", a, (1,), rate=1),
                               engine("code-0", b, (1,), sm=30)])


def test_gateway_routes_follow_the_plan(tmp_path):
    a, b, p = _two_models()
    opts = options(tmp_path, Mode.NO_MPS, port=9000, engine_port_base=9100)
    prep = prepare(p, opts, nvml=FakeNvml([(0, 80 * GIB), (0, 80 * GIB)]))
    assert [x.port for x in prep.launches] == [9100, 9101, 9102]
    gw = prep.gateway
    chat = gw.route("chat")
    assert [u.engine_id for u in chat.upstreams] == ["chat-0", "chat-1"]
    assert [u.weight for u in chat.upstreams] == pytest.approx([0.75, 0.25])
    assert chat.ttft_slo_s == 0.4 and chat.tpot_slo_s == 0.04
    assert chat.upstreams[1].gpu == "1" and chat.upstreams[0].max_batch == 32
    assert gw.route("code").upstreams[0].base_url == "http://127.0.0.1:9102"
    assert gw.port == 9000 and gw.host == "127.0.0.1"


def test_mps_groups_and_notes(tmp_path, monkeypatch):
    a, b, p = _two_models()
    monkeypatch.setattr("fineserve.runtime.prepare.find_binaries", lambda: "BIN")
    prep = prepare(p, options(tmp_path, Mode.MPS, engine_port_base=9200, port=9199),
                   nvml=FakeNvml([(0, 80 * GIB), (3, 80 * GIB)]))
    assert [g.name for g in prep.mps_groups] == ["gpu0", "gpu1"]
    assert prep.mps_group_of == {"chat-0": "gpu0", "chat-1": "gpu1", "code-0": "gpu1"}
    env = dict(prep.launches[2].env)
    assert env["CUDA_VISIBLE_DEVICES"] == "0"  # relative to its group's daemon (2a13f63)
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "30"
    assert env["CUDA_MPS_PIPE_DIRECTORY"].endswith("mps/gpu1")
    assert any("DEFAULT compute mode" in n for n in prep.notes)  # GPU 0 is DEFAULT


def test_multi_node_plan_needs_node(tmp_path):
    a = demand("a")
    p = plan([a], [engine("a-0", a, node="n0"), engine("a-1", a, node="n1")],
             nodes=("n0", "n1"))
    with pytest.raises(DeployError, match="plan spans nodes n0, n1"):
        local_engines(p, None)
    assert [e.engine_id for e in local_engines(p, "n1")] == ["a-1"]
    with pytest.raises(DeployError, match="--node n9"):
        local_engines(p, "n9")


def test_port_in_use_is_named(tmp_path):
    a, b, p = _two_models()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        opts = options(tmp_path, Mode.CPU, port=busy, engine_port_base=busy + 1)
        with pytest.raises(DeployError, match=f"gateway: port {busy} is already in use"):
            prepare(p, opts)


def test_public_host_needs_api_key(tmp_path):
    a, b, p = _two_models()
    with pytest.raises(SpecError, match="api_keys must be set"):
        prepare(p, options(tmp_path, Mode.CPU, host="0.0.0.0", engine_port_base=9300,
                           port=9299))


def test_missing_model_dir_and_unknown_name(tmp_path):
    a, b, p = _two_models()
    with pytest.raises(DeployError, match="model chat: no weights folder.*--model-dir chat="):
        resolve_sources(p.models, options(tmp_path, dummy_weights=False))
    with pytest.raises(DeployError, match="--model-dir nope=...: no model of that name"):
        resolve_sources(p.models, options(tmp_path, model_dirs=(("nope", tmp_path),)))
    with pytest.raises(DeployError, match="no config.json there"):
        resolve_sources(p.models, options(tmp_path, model_dirs=(("chat", tmp_path),)))


def test_real_folder_needs_weights_unless_dummy(tmp_path):
    folder = write_tiny_model(tmp_path / "tiny")
    a = demand("t", ref=str(folder))
    with pytest.raises(DeployError, match="no \\*.safetensors"):
        resolve_sources((a,), options(tmp_path, dummy_weights=False,
                                      model_dirs=(("t", folder),)))
    src = resolve_sources((a,), options(tmp_path, model_dirs=(("t", folder),)))["t"]
    assert src.dummy and src.has_tokenizer and src.path == folder and src.max_position == 2048


def test_checkpoint_quantization_must_match_the_plan(tmp_path):
    folder = write_tiny_model(tmp_path / "q")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4}
    (folder / "config.json").write_text(json.dumps(cfg))
    ok = demand("q", ref=str(folder), weights="int4-awq")
    src = resolve_sources((ok,), options(tmp_path, model_dirs=(("q", folder),)))["q"]
    assert src.quantization is None  # vLLM reads it from the checkpoint
    bad = demand("q", ref=str(folder), weights="fp8")
    with pytest.raises(DeployError, match="holds int4-awq weights, the plan says fp8"):
        resolve_sources((bad,), options(tmp_path, model_dirs=(("q", folder),)))
    with pytest.raises(DeployError, match="int4 weights need a GPTQ/AWQ checkpoint"):
        resolve_sources((demand("r", ref=str(write_tiny_model(tmp_path / "r")),
                                weights="int4-gptq"),),
                        options(tmp_path, model_dirs=(("r", tmp_path / "r"),)))


def test_gateway_weights_without_traffic_are_even(tmp_path):
    a = demand("a")
    p = plan([a], [engine("a-0", a, rate=0.0), engine("a-1", a, (1,), rate=0.0)])
    from fineserve.runtime.engine_args import EngineLaunch
    xs = [EngineLaunch(e.engine_id, "a", 9000 + i, e.gpus, 50, 8, (), ())
          for i, e in enumerate(p.engines)]
    gw = build_gateway_config(p, xs, options(tmp_path))
    assert [u.weight for u in gw.routes[0].upstreams] == [0.5, 0.5]


def test_pooled_plan_puts_gpu_engines_on_a_kv_pool_unless_static_is_asked(tmp_path):
    a, b, p = _two_models()  # PlannerSettings() default: kv_mode pooled
    nv = FakeNvml([(0, 80 * GIB), (0, 80 * GIB)])
    prep = prepare(p, options(tmp_path, Mode.NO_MPS, port=9400, engine_port_base=9401),
                   nvml=nv)
    assert [(x.gpu_index, x.engine_ids) for x in prep.kv_pools] == [
        (0, ("chat-0",)), (1, ("chat-1", "code-0"))]
    envs = {x.engine_id: dict(x.env) for x in prep.launches}
    assert envs["code-0"]["FINESERVE_KVSLAB_LEDGER"] == prep.kv_pools[1].ledger
    assert envs["chat-1"]["FINESERVE_KVSLAB_LEDGER"] == prep.kv_pools[1].ledger
    assert envs["chat-0"]["FINESERVE_KVSLAB_ENGINE_ID"] == "chat-0"
    assert any(n.startswith("KV pool on GPU 1") for n in prep.notes)
    static = prepare(p, options(tmp_path, Mode.NO_MPS, port=9400, engine_port_base=9401,
                                kv_pool=False), nvml=nv)
    assert static.kv_pools == () and all("FINESERVE_KVSLAB" not in dict(x.env)
                                         for x in static.launches)


def test_cpu_mode_never_pools(tmp_path):
    a, b, p = _two_models()
    prep = prepare(p, options(tmp_path, Mode.CPU, port=9500, engine_port_base=9501,
                              kv_pool=True))
    assert prep.kv_pools == () and any("CPU mode has no GPU memory" in n for n in prep.notes)


def test_gateway_runs_the_scheduler_policy_deploy_was_given(tmp_path):
    a = demand("a")
    p = plan([a], [engine("a-0", a)])
    from fineserve.runtime.engine_args import EngineLaunch
    xs = [EngineLaunch("a-0", "a", 9000, (0,), 50, 8, (), ())]
    assert build_gateway_config(p, xs, options(tmp_path)).scheduler.policy == "adaptive"
    gw = build_gateway_config(p, xs, options(tmp_path, scheduler_policy="fcfs",
                                              scheduler_max_queue=4))
    assert (gw.scheduler.policy, gw.scheduler.max_queue) == ("fcfs", 4)
    with pytest.raises(SpecError, match="scheduler.policy"):
        build_gateway_config(p, xs, options(tmp_path, scheduler_policy="lifo"))
