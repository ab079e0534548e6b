"""`qrdeploy eval`: clean accuracy of an ONNX classifier run by onnxruntime."""

from __future__ import annotations

import argparse
import json

from qrdeploy.commands._options import (
    add_data,
    add_input_contract,
    add_isolate,
    add_runtime,
    check_isolated,
    input_contract,
    load_data,
    session_config,
)
from qrdeploy.evaluation.clean import evaluate_onnx
from qrdeploy.graphio.graph import load_model
from qrdeploy.graphio.inputspec import contracted

HELP = "accuracy of an ONNX classifier on onnxruntime (and agreement with a reference)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX classifier (output: logits)")
    p.add_argument("--reference", help="reference ONNX model: also report top-1 agreement")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_data(p)
    add_runtime(p)
    add_input_contract(p)
    add_isolate(p)


def run(args: argparse.Namespace) -> int:
    check_isolated(args, args.model, args.reference, probe=True)
    contract = input_contract(args)
    model, batch_size = args.model, args.batch_size
    if contract is not None:
        model, batch_size = contracted(load_model(args.model), contract, batch_size)
    result = evaluate_onnx(model, load_data(args), reference=args.reference,
                           config=session_config(args), batch_size=batch_size)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print("\n".join(result.lines()))
    return 0
