"""`qrdeploy attack`: run a named attack suite on an ONNX classifier and write results JSON."""

from __future__ import annotations

import argparse

from qrdeploy.campaign import AttackOptions, attack_files
from qrdeploy.commands._options import add_data, add_runtime, load_data, session_config
from qrdeploy.evaluate import Labels, RunConfig
from qrdeploy.report import fmt_cell, fmt_column
from qrdeploy.results import label_note
from qrdeploy.suites import Family, SuiteName, parse_eps

HELP = "white-box, transfer and noise attacks on an ONNX classifier (results JSON)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX classifier to attack (the victim)")
    p.add_argument("-o", "--output", required=True, help="results JSON to write")
    g = p.add_argument_group("attacks")
    g.add_argument("--suite", choices=[s.value for s in SuiteName], default=SuiteName.PAPER.value,
                   help="named columns (default: %(default)s = white + black + noise)")
    g.add_argument("--attacks", default=None, metavar="LIST",
                   help="only these columns, '[mode/]name[=eps]' comma separated, e.g. "
                        "'fgsm-s,pgd=0.2,black/fgsm-w'")
    g.add_argument("--eps", default=None, metavar="LIST",
                   help="eps sweep of the white-box L-inf attacks, e.g. 0,0.05,0.1,0.2 or 8/255; "
                        "'none': no sweep (default: the paper suite sweeps FGSM and PGD)")
    g.add_argument("--source", default=None,
                   help="ONNX model to craft transfer (black-box) examples on (default: none, "
                        "black-box columns are skipped)")
    g.add_argument("--reference", default=None,
                   help="ONNX model whose predictions are the labels with --labels none")
    g.add_argument("--labels", choices=["true", "none"], default="true",
                   help="none: use the reference's (or the model's own) predictions as labels")
    g.add_argument("--family", choices=[f.value for f in Family], default=None,
                   help="per-dataset attack parameters (default: from --data)")
    add_data(p)
    add_runtime(p)
    p.set_defaults(batch_size=100)


def options(args: argparse.Namespace) -> AttackOptions:
    labels = Labels.TRUE if args.labels == "true" else Labels.REFERENCE
    eps = None if args.eps is None else () if args.eps == "none" else parse_eps(args.eps)
    family = Family(args.family) if args.family else None
    run = RunConfig(seed=args.seed, batch_size=args.batch_size)
    return AttackOptions(args.suite, args.attacks, eps, labels, family, run)


def run(args: argparse.Namespace) -> int:
    doc = attack_files(args.model, load_data(args), options(args), out=args.output,
                       source=args.source, reference=args.reference,
                       session=session_config(args))
    if not args.quiet:
        print(f"{doc['victim']['name']}: {label_note(doc)} in % on {doc['data']['n']} samples "
              "(95% intervals; noise: mean over draws, then the worst of k)")
        for c in doc["columns"]:
            print(f"  {c['key']:<16} {fmt_column(c)}")
        print(f"  {'worst case':<16} {fmt_cell(doc['worst_case']['robust'])}")
        print(f"results written to {args.output}")
    return 0
