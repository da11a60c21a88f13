"""``fineserve models``: the built-in catalog with bytes per precision."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from fineserve.cli.common import out, run_guarded
from fineserve.profiles.catalog import ModelSpec, builtin_models
from fineserve.profiles.precision import Precision

GIB = 2**30
PRECISIONS = [("bf16", "bf16"), ("fp8", "fp8"), ("int4-awq", "bf16")]


def models(
    tp: Annotated[int, typer.Option(help="Show bytes per rank at this TP degree.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List built-in models: parameters, weight GiB and KV bytes per token per precision."""
    run_guarded(lambda: _models(tp, as_json))


def _models(tp: int, as_json: bool) -> None:
    rows = []
    for arch in builtin_models():
        why = arch.check_tp(tp)
        row = {"model": arch.name, "params_b": round(arch.total_params / 1e9, 2),
               "layers": arch.num_layers, "kv_heads": arch.num_kv_heads, "tp": tp,
               "supported": why is None}
        if why is None:
            for w, kv in PRECISIONS:
                spec = ModelSpec(arch, Precision.parse(w, kv))
                row[f"weights_gib_{w}"] = round(spec.weight_bytes(tp) / GIB, 2)
            for kv in ("bf16", "fp8"):
                spec = ModelSpec(arch, Precision.parse("bf16", kv))
                row[f"kv_kib_per_token_{kv}"] = spec.kv_bytes_per_token(tp) / 1024
                row[f"page_bytes_{kv}"] = spec.page_size_bytes(tp)
        rows.append(row)
    if as_json:
        out.print_json(json.dumps(rows))
        return
    t = Table(title=f"Built-in models (per rank at tp={tp}; vLLM block size 16)",
              title_justify="left")
    for col in ("model", "params", "weights GiB bf16 / fp8 / int4", "KV KiB/token bf16 / fp8",
                "page bytes bf16 / fp8"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        if not r["supported"]:
            t.add_row(r["model"], f"{r['params_b']}B", "n/a at this tp", "", "")
            continue
        t.add_row(
            r["model"], f"{r['params_b']}B",
            " / ".join(f"{r[f'weights_gib_{w}']:.1f}" for w, _ in PRECISIONS),
            f"{r['kv_kib_per_token_bf16']:g} / {r['kv_kib_per_token_fp8']:g}",
            f"{r['page_bytes_bf16']} / {r['page_bytes_fp8']}",
        )
    out.print(t)
