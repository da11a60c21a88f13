"""The plugin's hook table against the real vLLM 0.26.0 source, read with ``ast`` (no GPU, no
vLLM import). Skipped unless the source tree is extracted (``/tmp/vllm026/vllm`` or
``FINESERVE_VLLM026_SRC``):

    mkdir -p /tmp/vllm026 && cat .devbundle/c[0-9] | python3 -c "import sys,tarfile; \
        tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('/tmp/vllm026')"
"""

import ast
import os
from pathlib import Path

import pytest

from fineserve.runtime.kvslab.hooks import (
    ATTRIBUTES,
    HOOKS,
    NOT_OVERRIDDEN,
    V1_ALLOCATE,
    V2_ALLOCATE,
    V2_WARMUP,
    signature_problem,
)
from fineserve.runtime.kvslab.settings import SUPPORTED_VLLM

ROOT = Path(os.environ.get("FINESERVE_VLLM026_SRC", "/tmp/vllm026"))
pytestmark = pytest.mark.skipif(not (ROOT / "vllm" / "__init__.py").is_file(),
                                reason=f"vLLM {SUPPORTED_VLLM} source not extracted at {ROOT}")


def _tree(module: str) -> ast.Module:
    path = ROOT / (module.replace(".", "/") + ".py")
    return ast.parse(path.read_text(), filename=str(path))


def _class(module: str, name: str) -> ast.ClassDef:
    found = [n for n in _tree(module).body if isinstance(n, ast.ClassDef) and n.name == name]
    assert found, f"{module}.{name} not found"
    return found[0]


def _function(body: list[ast.stmt], name: str) -> ast.FunctionDef | None:
    for n in body:
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name:
            return n
    return None


def _params(fn: ast.FunctionDef) -> tuple[str, ...]:
    """Parameter names in ``inspect.signature`` order."""
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args]
    names += [a.vararg.arg] if a.vararg else []
    names += [x.arg for x in a.kwonlyargs]
    names += [a.kwarg.arg] if a.kwarg else []
    return tuple(names)


def _attributes(cls: ast.ClassDef) -> set[str]:
    """Methods, class-level fields, and ``self.x`` assignments anywhere in the class."""
    out = set()
    for n in ast.walk(cls):
        if isinstance(n, ast.FunctionDef) and n in cls.body:
            out.add(n.name)
        elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and n in cls.body:
            out.add(n.target.id)
        elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store) and (
                isinstance(n.value, ast.Name) and n.value.id == "self"):
            out.add(n.attr)
    return out


def test_the_source_is_the_supported_version():
    meta = next(ROOT.glob("vllm-*.dist-info/METADATA")).read_text()
    assert f"\nVersion: {SUPPORTED_VLLM}\n" in meta


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.where)
def test_every_hook_exists_with_the_expected_parameters(hook):
    body = _class(hook.module, hook.owner).body if hook.owner else _tree(hook.module).body
    fn = _function(body, hook.name)
    assert fn is not None, f"{hook.where} is missing"
    assert signature_problem(hook, _params(fn)) is None


@pytest.mark.parametrize("module, cls, names", ATTRIBUTES, ids=lambda x: str(x))
def test_every_attribute_the_plugin_reads_exists(module, cls, names):
    have = _attributes(_class(module, cls))
    assert set(names) <= have, f"{cls} lacks {set(names) - have}"


@pytest.mark.parametrize("module, cls, names", NOT_OVERRIDDEN)
def test_the_default_async_scheduler_inherits_the_hooked_methods(module, cls, names):
    sub = _class(module, cls)
    assert [_function(sub.body, n) for n in names] == [None] * len(names)


def test_the_runners_call_the_hooked_allocators_at_call_time():
    """V2: ``init_kv_cache`` looks ``_allocate_kv_cache`` up in its module's globals (so the
    patched module attribute is what runs); V1: the method through ``self``."""
    init = _function(_tree(V2_ALLOCATE.module).body, "init_kv_cache")
    calls = [c.func for c in ast.walk(init) if isinstance(c, ast.Call)]
    assert any(isinstance(f, ast.Name) and f.id == V2_ALLOCATE.name for f in calls)
    runner = _class(V1_ALLOCATE.module, V1_ALLOCATE.owner)
    init1 = _function(runner.body, "initialize_kv_cache_tensors")
    calls1 = [c.func for c in ast.walk(init1) if isinstance(c, ast.Call)]
    assert any(isinstance(f, ast.Attribute) and f.attr == V1_ALLOCATE.name for f in calls1)


def test_dense_models_such_as_llama_default_to_the_v2_runner():
    """Why the V2 hooks matter: 0.26 picks V2 for the listed architectures *or* any non-MoE."""
    tree = _tree("vllm.config.vllm")
    cls = _class("vllm.config.vllm", "VllmConfig")
    fn = _function(cls.body, "_is_default_v2_model_runner_model")
    assert fn is not None
    src = ast.unparse(fn)
    assert "DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES" in src and "not model_config.is_moe" in src
    assert any(isinstance(n, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES"
        for t in n.targets) for n in ast.walk(tree))


def test_the_worker_calls_the_v2_warmup_through_the_name_it_imported():
    """The plugin patches ``gpu_worker.warmup_kernels`` too: that binding is what runs."""
    tree = _tree("vllm.v1.worker.gpu_worker")
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
               and (n.module or "").endswith("gpu.warmup")
               and any(a.name == V2_WARMUP.name and a.asname is None for a in n.names)]
    assert imports and V2_WARMUP.imported_by == ("vllm.v1.worker.gpu_worker",)
    calls = [c.func for c in ast.walk(tree) if isinstance(c, ast.Call)]
    assert any(isinstance(f, ast.Name) and f.id == V2_WARMUP.name for f in calls)


def test_the_v2_warmup_sizes_its_batch_from_kv_cache_config_num_blocks():
    """What the warm-up hook relies on: lowering ``num_blocks`` bounds the block ids used."""
    fn = _function(_tree(V2_WARMUP.module).body, V2_WARMUP.name)
    src = ast.unparse(fn)
    assert "model_runner.kv_cache_config.num_blocks - 1" in src
    assert "next_block_id = 1" in src


def test_fcfs_preempts_the_last_running_request():
    """plugin._pinning_last moves requests pinning a drain to the end of ``running`` because
    the FCFS branch of ``Scheduler.schedule`` preempts ``self.running.pop()``."""
    fn = _function(_class("vllm.v1.core.sched.scheduler", "Scheduler").body, "schedule")
    pops = [c for c in ast.walk(fn) if isinstance(c, ast.Call)
            and isinstance(c.func, ast.Attribute) and c.func.attr == "pop"
            and isinstance(c.func.value, ast.Attribute) and c.func.value.attr == "running"
            and not c.args]
    assert pops
