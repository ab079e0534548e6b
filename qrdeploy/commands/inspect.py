"""`qrdeploy inspect`: weight layers of an ONNX model (op, shape, dtype, distinct levels per
tensor and per channel, bits, encoding), the provenance written by `qrdeploy harden`, the
kernels onnxruntime actually runs (integer vs float, from its optimized graph), and whether
qrdeploy can differentiate the model (and which ops block it, or that the gradient is BPDA)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from qrdeploy.commands._options import add_isolate, check_isolated
from qrdeploy.gradients.builder import blocking_text
from qrdeploy.model.inspection import inspect_model

HELP = "list weight layers (levels, bits, encoding), the hardening provenance, differentiability"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=".onnx model")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_isolate(p)


def run(args: argparse.Namespace) -> int:
    check_isolated(args, args.model, probe=False)
    info = inspect_model(args.model)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    _print_table(info)
    return 0


def _print_table(info: dict[str, Any]) -> None:
    print(f"opset {info['opset']}, {len(info['layers'])} weight layers, "
          f"{info['file_bytes']:,} bytes"
          + (" (with its external data)" if info["external_data"] else ""))
    for kind in ("inputs", "outputs"):
        for t in info[kind]:
            shape = "?" if t["shape"] is None else \
                "(" + ", ".join("?" if d is None else str(d) for d in t["shape"]) + ")"
            read = f"; read as {t['read_as']}" if t.get("read_as") else ""
            print(f"{kind[:-1]} {t['name']!r}: {t['dtype']} {shape}{read}")
    print(f"{'node':24} {'op':13} {'shape':18} {'dtype':8} {'enc':9} {'levels':>7} "
          f"{'per-ch':>7} {'bits':>4} bn")
    for r in info["layers"]:
        shape = "x".join(map(str, r["shape"]))
        print(f"{r['node'][:24]:24} {r['op']:13} {shape:18} {r['dtype']:8} {r['encoding']:9} "
              f"{r['levels']:>7} {r['levels_per_channel']:>7} {r['bits'] or '-':>4} "
              f"{'y' if r['folded_bn'] else '-'}")
    prov = info["provenance"]
    if prov["opset_conversion"]:
        print(f"opset converted: {prov['opset_conversion']}")
    for i, step in enumerate(prov["steps"], 1):
        print(f"harden step {i}: {json.dumps(step, sort_keys=True)}")
    if not prov["steps"]:
        print("no hardening recorded")
    quant = info["quantization"]
    if quant["integer_ops_in_file"] or quant["activation_quant"]:
        ops = ", ".join(f"{op} x{n}" for op, n in quant["integer_ops_in_file"].items()) or "none"
        print(f"quantized graph: quantized ops in the file: {ops}; activations quantized at run "
              f"time: {'yes' if quant['activation_quant'] else 'no'} (levels above are those "
              "of the dequantized weights)")
    k = info["kernels"]
    if "error" in k:
        print(f"onnxruntime kernels: unknown ({k['error']})")
    else:
        print(f"onnxruntime runs ({k['verdict']} kernels): "
              + "; ".join(f"{group.replace('_', ' ')}: "
                          + ", ".join(f"{op} x{n}" for op, n in k[group].items())
                          for group in ("integer", "float_compute", "conversions") if k[group]))
    diff = info["differentiable"]
    print("white-box gradients (qrdeploy.gradients.builder): "
          + (f"supported, {diff['gradient']}" if diff["ok"]
             else f"blocked by {len(diff['blocking'])} node(s)"))
    for b in diff["blocking"]:
        print(f"  {blocking_text(b['op'], b['node'], b['reason'])}")
