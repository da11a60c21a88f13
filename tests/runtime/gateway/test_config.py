"""Gateway config: the contract's fields, one-line errors naming the field, JSON and YAML."""

import json

import pytest

from fineserve.errors import SpecError
from fineserve.runtime.gateway import GatewayConfig, load_config, parse_config


def doc(**kw):
    base = {"routes": [{"model": "chat", "ttft_slo_s": 0.5, "tpot_slo_s": 0.05, "upstreams": [
        {"engine_id": "e0", "base_url": "http://127.0.0.1:8101", "served_model_name": "chat",
         "weight": 0.7, "gpu": "0", "max_batch": 16},
        {"engine_id": "e1", "base_url": "http://127.0.0.1:8102", "served_model_name": "chat"},
    ]}]}
    base.update(kw)
    return base


def test_defaults_and_values():
    cfg = parse_config(doc())
    assert (cfg.host, cfg.port, cfg.api_keys, cfg.engine_poll_interval_s) == (
        "127.0.0.1", 8000, [], 0.5)
    up = cfg.routes[0].upstreams
    assert (up[0].weight, up[0].gpu, up[0].max_batch) == (0.7, "0", 16)
    assert (up[1].weight, up[1].gpu, up[1].max_batch) == (1.0, "", 8)
    assert cfg.scheduler.policy == "adaptive" and cfg.scheduler.max_queue == 256
    assert cfg.route("chat") is cfg.routes[0] and cfg.route("other") is None


def test_frozen():
    cfg = parse_config(doc())
    with pytest.raises(Exception, match="frozen"):
        cfg.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(("change", "match"), [
    ({"host": "0.0.0.0"}, r"api_keys must be set when host '0.0.0.0' is not loopback"),
    ({"prot": 1}, r"^gw.json: prot: unknown key"),
    ({"port": 70000}, r"^gw.json: port: Input should be less than or equal to 65535"),
    ({"scheduler": {"policy": "lifo"}}, r"^gw.json: scheduler.policy: Input should be"),
    ({"scheduler": {"min_limit": 9, "max_limit": 2}}, r"min_limit must not exceed max_limit"),
    ({"routes": []}, r"^gw.json: routes: List should have at least 1 item"),
])
def test_errors_name_the_field(change, match):
    with pytest.raises(SpecError, match=match):
        parse_config(doc(**change), source="gw.json")


def test_nested_field_errors():
    d = doc()
    d["routes"][0]["upstreams"][1]["weight"] = 0
    with pytest.raises(SpecError, match=r"^gw: routes\[0\].upstreams\[1\].weight: Input should "
                                        r"be greater than 0$"):
        parse_config(d, source="gw")
    d = doc()
    d["routes"][0]["upstreams"][0]["base_url"] = "127.0.0.1:8101"
    with pytest.raises(SpecError, match=r"routes\[0\].upstreams\[0\].base_url"):
        parse_config(d)
    d = doc()
    d["routes"].append(d["routes"][0])
    with pytest.raises(SpecError, match="model names must be unique; repeated: chat"):
        parse_config(d)


def test_loopback_needs_no_key_and_public_host_with_key_is_fine():
    assert parse_config(doc(host="::1")).host == "::1"
    assert parse_config(doc(host="localhost")).host == "localhost"
    assert parse_config(doc(host="0.0.0.0", api_keys=["k1"])).api_keys == ["k1"]


def test_load_json_and_yaml(tmp_path):
    j = tmp_path / "gw.json"
    j.write_text(json.dumps(doc()))
    y = tmp_path / "gw.yaml"
    y.write_text("port: 9000\nroutes:\n  - model: chat\n    ttft_slo_s: 1\n    tpot_slo_s: 0.1\n"
                 "    upstreams:\n      - {engine_id: e0, base_url: 'http://h:1', "
                 "served_model_name: c}\n")
    assert isinstance(load_config(j), GatewayConfig)
    assert load_config(y).port == 9000
    with pytest.raises(SpecError, match="cannot read gateway config"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: [\n")
    with pytest.raises(SpecError, match="malformed YAML"):
        load_config(bad)
