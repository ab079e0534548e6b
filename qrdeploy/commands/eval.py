"""`qrdeploy eval`: clean accuracy of an ONNX classifier run by onnxruntime; against a reference,
agreement, logit differences and the paired accuracy drop."""

from __future__ import annotations

import argparse
import json

from qrdeploy.commands._options import (
    add_data,
    add_input_contract,
    add_isolate,
    add_runtime,
    check_isolated,
    companion_contract,
    input_contract,
    load_data,
    non_negative_float,
    session_config,
)
from qrdeploy.evaluation.clean import Tolerance, evaluate_files

HELP = ("accuracy of an ONNX classifier on onnxruntime; with --reference also agreement, logit "
        "differences and the accuracy drop")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX classifier (output: logits)")
    p.add_argument("--reference", help="reference ONNX model (e.g. the one before hardening): "
                                       "top-1 agreement, logit differences, accuracy drop")
    p.add_argument("--atol", type=non_negative_float, default=Tolerance.atol,
                   help="absolute logit tolerance of the pass rate (default: %(default)g)")
    p.add_argument("--rtol", type=non_negative_float, default=Tolerance.rtol,
                   help="relative logit tolerance of the pass rate (default: %(default)g)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_data(p)
    add_runtime(p)
    add_input_contract(p, companions=("reference",))
    add_isolate(p)


def run(args: argparse.Namespace) -> int:
    check_isolated(args, args.model, args.reference, probe=True)
    result = evaluate_files(args.model, load_data(args), reference=args.reference,
                            contract=input_contract(args), config=session_config(args),
                            batch_size=args.batch_size, tolerance=Tolerance(args.atol, args.rtol),
                            guard=not args.no_input_guard,
                            reference_contract=companion_contract(args, "reference"))
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print("\n".join(result.lines()))
    return 0
