"""`qrdeploy lipschitz`: per-layer ‖W‖₂ and ‖ΔW‖₂ (matrix, reshaped-kernel and conv operator
norms) of a hardened model against its reference, optionally the measured error amplification on
data, as a markdown table (or JSON), CSV and a bar chart.

    qrdeploy lipschitz model.onnx hard.onnx --plot dw.png
    qrdeploy lipschitz model.onnx --bits 3 --mulaw 255 --data mnist-5k -n 200
"""

from __future__ import annotations

import argparse
import json
import sys

from qrdeploy.commands._options import (
    add_isolate,
    check_isolated,
    data_name,
    non_negative_int,
    positive_int,
)
from qrdeploy.commands.harden import add_recipe_options, recipe_from_args
from qrdeploy.core.plotting import require
from qrdeploy.core.runtime import PROVIDERS, SessionConfig
from qrdeploy.data.datasets import SPLITS, load_dataset
from qrdeploy.errors import UsageError
from qrdeploy.hardening.passes import Recipe
from qrdeploy.spectral.analysis import LipschitzConfig, lipschitz_report
from qrdeploy.spectral.render import PlotNorm, plot_reports, render_markdown, write_report

HELP = "spectral norms of W and dW per layer (Lipschitz analysis of the quantization error)"
DEFAULT_PLOT = "lipschitz.png"
#: options that are files this command writes (checked before it runs)
OUTPUT_FILES = ("output", "csv", "plot")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_isolate(p)
    p.add_argument("reference", metavar="REF", help="reference (unhardened) .onnx model")
    p.add_argument("hardened", metavar="HARDENED", nargs="?",
                   help="hardened .onnx model; omit it and give --bits/--mulaw/--recipe to "
                        "analyse a hardening in memory")
    out = p.add_argument_group("outputs")
    out.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    out.add_argument("-o", "--output", metavar="FILE.json", help="also write the JSON report")
    out.add_argument("--csv", metavar="FILE.csv", help="also write the table as CSV")
    out.add_argument("--markdown", metavar="FILE.md", help="also write the markdown table")
    out.add_argument("--plot", metavar="FILE.png", nargs="?", const=DEFAULT_PLOT,
                     help=f"bar chart of ||dW||_2 per layer (default file: {DEFAULT_PLOT})")
    out.add_argument("--plot-norm", choices=[n.value for n in PlotNorm], default="matrix",
                     help="bars: matrix/reshaped-kernel norm or conv operator norm")
    _add_norm_options(p)
    _add_data_options(p)
    add_recipe_options(p)


def _add_norm_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("norms")
    g.add_argument("--no-operator-norms", action="store_true",
                   help="skip conv operator norms (Lanczos), keep reshaped-kernel norms")
    g.add_argument("--no-fft-bound", action="store_true", help="skip the FFT upper bound")
    g.add_argument("--fft-max-flops", type=float, default=1e10,
                   help="skip FFT bounds estimated above this cost (default: %(default)g)")
    g.add_argument("--tol", type=float, default=1e-5,
                   help="Lanczos stop: relative change of the estimate (default: %(default)s)")
    g.add_argument("--max-iter", type=positive_int, default=300, help="default: %(default)s")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("measured amplification (needs data)")
    g.add_argument("--data", type=data_name, default=None,
                   help="mnist-5k, cifar10-10k, mnist, cifar10 or npz:PATH; omit for norms only")
    g.add_argument("--data-root", default=None, help="folder with torchvision-format data sets")
    g.add_argument("--split", choices=SPLITS, default="test", help="default: %(default)s")
    g.add_argument("-n", type=positive_int, default=100, help="samples (default: %(default)s)")
    g.add_argument("--batch-size", type=positive_int, default=64, help="default: %(default)s")
    g.add_argument("--provider", choices=PROVIDERS, default="auto")
    g.add_argument("--threads", type=non_negative_int, default=0,
                   help="intra-op threads (0: onnxruntime's)")


def _recipe(args: argparse.Namespace) -> Recipe | None:
    recipe = recipe_from_args(args)  # the same options as `qrdeploy harden`
    if args.hardened and recipe is not None:
        raise UsageError("give either HARDENED or --bits/--mulaw/--recipe, not both")
    if not args.hardened and recipe is None:
        raise UsageError("nothing to compare: give HARDENED, or --bits B (and/or --mulaw MU)")
    return recipe


def run(args: argparse.Namespace) -> int:
    if args.plot:
        require()  # before any work: a missing plots extra costs no compute
    check_isolated(args, args.reference, args.hardened, probe=True)
    recipe = _recipe(args)
    config = LipschitzConfig(
        operator_norms=not args.no_operator_norms, fft_bound=not args.no_fft_bound,
        fft_max_flops=args.fft_max_flops,
        tol=args.tol, max_iter=args.max_iter, seed=args.seed, batch_size=args.batch_size,
        session=SessionConfig(args.provider, args.threads))
    data = None
    if args.data:
        data = load_dataset(args.data, args.split, n=args.n, data_root=args.data_root).x
    report = lipschitz_report(args.reference, args.hardened, data, recipe=recipe, config=config)
    write_report(report, json_path=args.output, csv_path=args.csv, markdown_path=args.markdown)
    print(json.dumps(report.to_json(), indent=2, sort_keys=True) if args.json
          else render_markdown(report))
    if args.plot:
        path = plot_reports([report], args.plot, norm=args.plot_norm)
        if not args.quiet:
            print(f"wrote {path}", file=sys.stderr)
    if not args.quiet:
        print(f"{len(report.layers)} layers in {report.seconds:.2f} s", file=sys.stderr)
    return 0
