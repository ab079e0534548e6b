"""`qrdeploy attack`: run a named attack suite on an ONNX classifier and write results JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

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
from qrdeploy.core.markdown import eps_text
from qrdeploy.core.stats import Proportion
from qrdeploy.errors import ConfigError, UsageError
from qrdeploy.evaluation.campaign import (
    COMPANION_ROLES,
    AttackOptions,
    attack_files,
    data_family,
)
from qrdeploy.evaluation.runner import Labels, RunConfig
from qrdeploy.evaluation.suites import (
    CWBudget,
    Family,
    SuiteName,
    build_suite,
    parse_eps,
    suite_names,
)
from qrdeploy.graphio.inputspec import InputContract
from qrdeploy.report.render import fmt_cell, fmt_column

HELP = "white-box, transfer, noise and adaptive attacks on an ONNX classifier (results JSON)"
#: options that are files this command writes (checked before it runs)
OUTPUT_FILES = ("output", "save_adversarials")


def _suite(text: str) -> str:
    """argparse type of --suite: one name or a comma list, checked here (exit 2 when wrong)."""
    try:
        return ",".join(s.value for s in suite_names(text))
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="ONNX classifier to attack (the victim)")
    p.add_argument("-o", "--output", required=True, help="results JSON to write")
    g = p.add_argument_group("attacks")
    g.add_argument("--suite", type=_suite, default=SuiteName.PAPER.value, metavar="LIST",
                   help=f"named columns, comma separated: {', '.join(SuiteName)} (default: "
                        "%(default)s = white + black + noise; paper,adaptive adds the adaptive "
                        "attacks, the masking checks and a verdict, docs/masking.md)")
    g.add_argument("--attacks", default=None, metavar="LIST",
                   help="only these columns, '[mode/]name[=eps]' comma separated, e.g. "
                        "'fgsm-s,pgd=0.2,black/fgsm-w' (an integer graph also gets its "
                        "square, square-twin and transfer checks, docs/masking.md)")
    g.add_argument("--eps", default=None, metavar="LIST",
                   help="an eps sweep of the white-box L-inf attacks, e.g. 0,0.05,0.1,0.2 or "
                        "8/255; 'paper': FGSM and PGD over the paper suite's sweep (default: "
                        "no sweep)")
    g.add_argument("--source", default=None,
                   help="ONNX model to craft transfer (black-box) examples on (default: "
                        "models/mnist-standard-seed1.onnx for mnist, "
                        "models/cifar10-standard-seed1.onnx for cifar10, when present; otherwise "
                        "none, and black-box columns are skipped, with a note)")
    g.add_argument("--unhardened", default=None, metavar="MODEL",
                   help="the model before hardening: it runs the same suite (less its L2 and "
                        "transfer columns) for the report's before/after, and the adaptive "
                        "'transfer' column crafts on it (default: the transfer source, no "
                        "before/after)")
    g.add_argument("--no-baseline", action="store_true",
                   help="with --unhardened: do not attack it too (no before/after; faster)")
    g.add_argument("--save-adversarials", default=None, metavar="FILE.npz",
                   help="write every adversarial input (with sample ids, labels and the attack "
                        "settings) for qrdeploy replay on the runtime that ships")
    g.add_argument("--cw-budget", choices=[b.value for b in CWBudget], default=CWBudget.QUICK,
                   help="CW-L2 budget: quick = qrdeploy [DEFAULT] 5 x 100 iterations at lr 0.1; "
                        "paper = cleverhans v3's 5 x 1,000 at lr 5e-3 (default: %(default)s)")
    g.add_argument("--reference", default=None,
                   help="ONNX model whose predictions are the labels with --labels none")
    g.add_argument("--labels", choices=["true", "none"], default="true",
                   help="none: use the reference's (or the model's own) predictions as labels")
    g.add_argument("--family", choices=[f.value for f in Family], default=None,
                   help="per-dataset attack parameters (default: from --data)")
    add_data(p)
    add_runtime(p)
    add_input_contract(p, companions=COMPANION_ROLES)
    add_parallel(p)
    add_isolate(p)
    p.set_defaults(batch_size=100)


def options(args: argparse.Namespace) -> AttackOptions:
    labels = Labels.TRUE if args.labels == "true" else Labels.REFERENCE
    try:  # a malformed --eps is a usage error (exit 2), found before any work
        eps = (() if args.eps in (None, "none") else None if args.eps == "paper"
               else parse_eps(args.eps))
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    family = Family(args.family) if args.family else None
    run = RunConfig(seed=args.seed, batch_size=args.batch_size)
    return AttackOptions(args.suite, args.attacks, eps, labels, family, run,
                         CWBudget(args.cw_budget), baseline=not args.no_baseline,
                         parallel=parallel(args),
                         save_adversarials=None if args.save_adversarials is None
                         else Path(args.save_adversarials))


def own_contracts(args: argparse.Namespace) -> dict[str, InputContract]:
    """The --X-input-spec options given: the own contract of each model beside the victim."""
    found = {role: companion_contract(args, role) for role in COMPANION_ROLES}
    return {role: c for role, c in found.items() if c is not None}


def run(args: argparse.Namespace) -> int:
    if args.no_baseline and not args.unhardened and not args.quiet:
        print("note: --no-baseline does nothing without --unhardened (there is no model before "
              "hardening to leave out)")
    opts = options(args)
    data = load_data(args)
    try:  # malformed --attacks values are usage errors (exit 2), checked before any model
        build_suite(opts.suite, data_family(opts, data), opts.attacks, opts.eps, opts.cw_budget)
    except UsageError:
        raise
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    check_isolated(args, args.model, args.source, args.reference, args.unhardened, probe=True)
    r = attack_files(args.model, data, opts, out=args.output,
                     source=args.source, reference=args.reference,
                     session=session_config(args), unhardened=args.unhardened,
                     contract=input_contract(args), input_guard=not args.no_input_guard,
                     own_contracts=own_contracts(args))
    # the summary is the command's answer: printed with --quiet too; notes are not
    print(f"{r.victim.name}: {r.measure} in % on {r.data.n} samples "
          "(95% intervals; noise: mean over draws, then the worst of k)")
    if r.column("clean") is None:  # clean is always measured; show it even when not asked
        print(f"  {'clean':<22} {fmt_cell(r.clean)}")
    for c in r.columns:
        eps = "" if c.eps is None else f"  (eps {eps_text(c.eps)})"
        print(f"  {c.key:<22} {fmt_column(c)}{eps}")
    keys, paper = r.paper_worst()
    if keys:
        print(f"  {'paper worst case':<22} {fmt_cell(Proportion(int(paper.sum()), paper.size))}"
              "  (each column at its own eps)")
    if r.adaptive is not None:
        print(f"  {'adaptive worst case':<22} {fmt_cell(r.adaptive.worst_case.robust)}"
              f"  (eps {eps_text(r.adaptive.eps)})")
    if not args.quiet:
        for note in r.notes:
            print(f"note: {note}")
    if r.masking is not None:
        print(f"verdict: {r.masking.verdict}")
    print(f"results written to {args.output}")
    return 0
