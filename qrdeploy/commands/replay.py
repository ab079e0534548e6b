"""`qrdeploy replay`: score an ONNX model on an adversarial set saved by `attack
--save-adversarials` (the integer graph that ships, another runtime's model, a later release)."""

from __future__ import annotations

import argparse
import json

from qrdeploy.commands._options import (
    add_input_contract,
    add_isolate,
    add_runtime,
    check_isolated,
    input_contract,
    session_config,
)
from qrdeploy.evaluation.replay import replay

HELP = ("score a model on a saved adversarial set (attack --save-adversarials): does what was "
        "found on the analysis graph fool the model that ships?")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the ONNX model to score (e.g. the integer graph that ships)")
    p.add_argument("adversarials", help="the .npz written by attack --save-adversarials")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_runtime(p)
    add_input_contract(p)
    add_isolate(p)


def run(args: argparse.Namespace) -> int:
    check_isolated(args, args.model, probe=True)
    result = replay(args.model, args.adversarials, input_contract(args), session_config(args),
                    args.batch_size, guard=not args.no_input_guard)
    print(json.dumps(result.to_json(), indent=2) if args.json else "\n".join(result.lines()))
    return 0
