"""`qrdeploy check`: gate a model on a policy of thresholds; exit 0 when all are met, 3 when one
fails (one line per failure), 1 on an error, 2 on bad usage. See docs/check.md."""

from __future__ import annotations

import argparse

from qrdeploy.commands._options import (
    add_data,
    add_input_contract,
    add_isolate,
    add_parallel,
    add_runtime,
    check_isolated,
    companion_contract,
    input_contract,
    load_data,
    parallel,
    session_config,
)
from qrdeploy.errors import QrdeployError, first_line
from qrdeploy.gate.junit import write_junit, write_junit_error
from qrdeploy.gate.run import check, write_summary

HELP = "gate a model on a policy of thresholds (exit 0 pass, 3 a threshold failed)"
#: options that are files this command writes (checked before it runs)
OUTPUT_FILES = ("output", "junit")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the ONNX model to gate (e.g. the hardened one)")
    p.add_argument("--reference", required=True, help="the ONNX model it is compared with")
    p.add_argument("--policy", required=True, metavar="TOML",
                   help="thresholds (see examples/qrdeploy.toml and docs/check.md)")
    p.add_argument("-o", "--output", default=None, metavar="JSON",
                   help="write the JSON summary (qrdeploy/schemas/summary.schema.json)")
    p.add_argument("--junit", default=None, metavar="XML",
                   help="write a JUnit XML report, one testcase per threshold")
    add_data(p, default=None)
    add_runtime(p)
    add_input_contract(p, companions=("reference",))
    add_isolate(p)
    add_parallel(p)
    p.set_defaults(batch_size=256)


def run(args: argparse.Namespace) -> int:
    try:
        check_isolated(args, args.model, args.reference, probe=True)
        result = check(args.model, args.reference, load_data(args), args.policy,
                       session=session_config(args), seed=args.seed,
                       batch_size=args.batch_size, contract=input_contract(args),
                       input_guard=not args.no_input_guard, parallel=parallel(args),
                       reference_contract=companion_contract(args, "reference"))
    except QrdeployError as exc:
        if args.junit:  # the CI system shows the reason, not a missing report
            write_junit_error(args.junit, args.model, first_line(exc, None))
        raise
    if args.output:
        write_summary(args.output, result)
    if args.junit:
        write_junit(args.junit, result)
    # --quiet keeps what a pipeline log needs: one line per failed threshold and the outcome
    quiet = [*(t.line() for t in result.failures), result.outcome()]
    print("\n".join(quiet if args.quiet else result.lines()))
    return result.exit_code
