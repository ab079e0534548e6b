"""`qrdeploy harden`: μ-law mapping and low-bit weight quantization of an ONNX model's weights,
written in the chosen encoding with its provenance inside."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qrdeploy.bitsearch.render import summary_lines, write_search
from qrdeploy.bitsearch.search import (
    DEFAULT_MAX_DROP,
    SearchConfig,
    search_file,
    search_folder,
)
from qrdeploy.commands._options import (
    add_isolate,
    bit_width,
    check_isolated,
    data_name,
    input_spec,
    positive_float,
    positive_int,
)
from qrdeploy.core import plotting
from qrdeploy.data.datasets import data_label
from qrdeploy.errors import PassError, UsageError
from qrdeploy.evaluation.suites import parse_number
from qrdeploy.hardening.encodings import Encoding
from qrdeploy.hardening.integer import (
    Calibration,
    IntegerActivations,
    calibration_images,
    same_images,
)
from qrdeploy.hardening.passes import (
    GraphPass,
    MuLawMap,
    Recipe,
    WeightQuant,
    check_recipe,
    harden_file,
    load_recipe,
)
from qrdeploy.hardening.quant import Granularity, Quantizer, ScaleRule

HELP = ("rewrite weights: mu-law mapping and/or low-bit quantization (float|qdq|int4 encoding; "
        "--activations int8: full-integer model)")
#: options that are files this command writes (checked before it runs)
OUTPUT_FILES = ("output",)
#: options that are folders this command writes into (checked before it runs)
OUTPUT_DIRS = ("search_dir",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="IN", help="input .onnx model")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output .onnx path")
    p.add_argument("--in-place", action="store_true", help="allow OUT to be IN")
    add_isolate(p)
    add_recipe_options(p)
    add_search_options(p)


#: the options that set a pass or the encoding (dest, flag, default): a --recipe sets them itself
PASS_OPTIONS = (("mulaw_layers", "--mulaw-layers", "last:1"),
                ("mulaw_rescale", "--no-mulaw-rescale", True),
                ("granularity", "--granularity", "tensor"), ("scale", "--scale", "max"),
                ("quantizer", "--quantizer", "uniform"), ("full_range", "--full-range", False),
                ("layers", "--layers", "all"), ("encoding", "--encoding", None))
#: the calibration options (dest, flag, default): used by --activations int8 and --search only
CALIBRATION_OPTIONS = (("calibrate", "--calibrate", 500),
                       ("calibration_data", "--calibration-data", "mnist-5k"),
                       ("calibration_method", "--calibration-method", "minmax"),
                       ("input_spec", "--input-spec", None))
_DEFAULT = {dest: default for dest, _, default in (*PASS_OPTIONS, *CALIBRATION_OPTIONS)}


def add_recipe_options(p: argparse.ArgumentParser) -> None:
    """The hardening options, shared with `qrdeploy lipschitz` (hardening in memory)."""
    p.add_argument("--recipe", metavar="FILE.toml", help="passes and encoding from a TOML recipe")
    m = p.add_argument_group("mu-law mapping (paper: post-training, last few layers)")
    m.add_argument("--mulaw", type=positive_float, metavar="MU",
                   help="apply F with this mu (e.g. 255)")
    # the pass options default to None, so that one given (even at its default) is told apart
    # from one left out: a --recipe sets them itself, and each belongs to one pass
    m.add_argument("--mulaw-layers", metavar="SEL",
                   help=f"default: {_DEFAULT['mulaw_layers']}")
    m.add_argument("--mulaw-rescale", action=argparse.BooleanOptionalAction,
                   help="W' = s*F(W/s) (default) or, with --no-mulaw-rescale, F(W/s)")
    q = p.add_argument_group("weight quantization (after mu-law)")
    q.add_argument("--bits", type=bit_width, metavar="B", help="bit width 1..8 (paper: 3)")
    q.add_argument("--granularity", choices=[g.value for g in Granularity],
                   help=f"default: {_DEFAULT['granularity']}")
    q.add_argument("--scale", choices=[s.value for s in ScaleRule],
                   help=f"default: {_DEFAULT['scale']}")
    q.add_argument("--quantizer", choices=[s.value for s in Quantizer],
                   help=f"default: {_DEFAULT['quantizer']}")
    q.add_argument("--full-range", action="store_true", default=None,
                   help="codes -2^(b-1)..2^(b-1)-1")
    q.add_argument("--layers", metavar="SEL",
                   help="all | first:N | last:N | Conv|Gemm|MatMul|ConvTranspose | glob; "
                        f"comma-separated, '!' excludes (default: {_DEFAULT['layers']})")
    q.add_argument("--encoding", choices=[e.value for e in Encoding], default=_DEFAULT["encoding"],
                   help="weight storage with float activations (for analysis: onnxruntime "
                        "dequantizes the weights on every run); default float, qdq with "
                        "--search")
    a = p.add_argument_group("activations (deployment: integer kernels)")
    a.add_argument("--activations", choices=["float", "int8"], default="float",
                   help="int8: uint8 activations calibrated on images, int8 weight codes, QDQ "
                        "that onnxruntime runs as integer kernels (default: %(default)s)")
    a.add_argument("--calibrate", type=positive_int, default=_DEFAULT["calibrate"], metavar="N",
                   help="calibration images for int8 activations (default: %(default)s)")
    a.add_argument("--calibration-data", type=data_name, default=_DEFAULT["calibration_data"],
                   metavar="DATA",
                   help="mnist-5k or cifar10-10k (embedded), mnist, cifar10 or npz:PATH; its "
                        "train split (default: %(default)s)")
    a.add_argument("--calibration-method", choices=[c.value for c in Calibration],
                   default=_DEFAULT["calibration_method"], help="default: %(default)s")
    a.add_argument("--input-spec", type=input_spec, default=_DEFAULT["input_spec"],
                   metavar="SPEC",
                   help="the model's input contract, as for eval and attack (docs/input-spec.md),"
                        " e.g. range=0-255,layout=nhwc or dtype=uint8,range=0-255: the "
                        "calibration pixels are converted to it (default: float32 NCHW in [0, 1])")


#: the options of each pass (dests of PASS_OPTIONS)
MULAW_OPTIONS = ("mulaw_layers", "mulaw_rescale")
QUANT_OPTIONS = ("granularity", "scale", "quantizer", "full_range", "layers")


def option(args: argparse.Namespace, dest: str) -> Any:
    """A pass option's value: the one given, else its default (PASS_OPTIONS)."""
    value = getattr(args, dest, None)
    return _DEFAULT[dest] if value is None else value


def given_options(args: argparse.Namespace, dests: Iterable[str]) -> list[str]:
    """The flags of the pass options among `dests` that the command line gave."""
    flags = {dest: flag for dest, flag, _ in PASS_OPTIONS}
    out = []
    for dest in dests:
        value = getattr(args, dest, None)
        if value is not None:
            out.append("--mulaw-rescale" if dest == "mulaw_rescale" and value else flags[dest])
    return out


def recipe_from_args(args: argparse.Namespace) -> Recipe | None:
    """The recipe the options ask for; None when they ask for no pass at all. An option of a
    pass that was not asked for (--mulaw-layers without --mulaw, --granularity without --bits)
    is a usage error: it would be ignored without a word."""
    if not args.recipe:
        for asked, dests, flag in ((args.mulaw, MULAW_OPTIONS, "--mulaw MU"),
                                   (args.bits, QUANT_OPTIONS, "--bits B")):
            unused = given_options(args, dests)
            if asked is None and unused:
                verb = "applies" if len(unused) == 1 else "apply"
                raise UsageError(f"{', '.join(unused)} {verb} to {flag.split()[0]} only; add "
                                 f"{flag} or drop {'it' if len(unused) == 1 else 'them'}")
    passes: list[GraphPass] = []
    if args.mulaw is not None:
        passes.append(MuLawMap(args.mulaw, option(args, "mulaw_rescale"),
                               option(args, "mulaw_layers")))
    if args.bits is not None:
        passes.append(WeightQuant(args.bits, option(args, "granularity"), option(args, "scale"),
                                  option(args, "quantizer"), option(args, "layers"),
                                  narrow=not option(args, "full_range")))
    acts = None
    if getattr(args, "activations", "float") == "int8":
        acts = IntegerActivations(args.calibrate, args.calibration_method,
                                  data_label(args.calibration_data, "train"),
                                  getattr(args, "input_spec", None) or "")
    if acts is not None and args.encoding in ("int4", "nbits"):
        raise UsageError(f"--activations int8 stores the weight codes in int8 for the integer "
                         f"kernels; drop --encoding {args.encoding} (or use float activations)")
    if args.recipe:
        if passes:
            raise UsageError("--recipe cannot be combined with --mulaw/--bits; put them in it")
        given = given_options(args, (*MULAW_OPTIONS, *QUANT_OPTIONS))
        given += ["--encoding"] if args.encoding is not None else []
        if given:
            raise UsageError(f"--recipe sets the passes and the encoding itself; drop "
                             f"{', '.join(given)} (or put the setting in the recipe)")
        recipe = load_recipe(args.recipe)
        if acts is not None:
            recipe = Recipe(recipe.passes, recipe.encoding,
                            same_images(acts, recipe.activations))
        return recipe
    if not passes:
        return None
    recipe = Recipe(tuple(passes), Encoding(args.encoding or "float"), acts)
    try:  # settings given as options that do not go together: a usage error (exit 2)
        check_recipe(recipe)
    except PassError as exc:
        raise UsageError(str(exc)) from None
    return recipe


def add_search_options(p: argparse.ArgumentParser) -> None:
    s = p.add_argument_group(
        "recipe search (--search: per-layer bits under a size and a clean budget, confirmed by "
        "the adaptive worst case; writes OUT plus recipe.toml, report.md, search.json and "
        "pareto.png)")
    s.add_argument("--search", action="store_true",
                   help="choose per-layer bits (with --mulaw MU: and whether to mu-map each "
                        "layer) instead of --bits; clean tests on the first --calibrate images "
                        "of the validation split of --calibration-data")
    s.add_argument("--search-bits", default="2-8", metavar="LIST",
                   help="candidate widths, e.g. 2-8 or 2,3,4,8 (default: %(default)s)")
    s.add_argument("--avg-bits", type=float, metavar="B",
                   help="size budget: mean bits per weight of the searched layers")
    s.add_argument("--max-bytes", type=int, metavar="N",
                   help="size budget: bytes of the written model in its encoding")
    s.add_argument("--max-drop", type=float, default=DEFAULT_MAX_DROP, metavar="F",
                   help="clean budget: non-inferiority margin against the float model, a "
                        "fraction (default: %(default)s = 2 points)")
    s.add_argument("--confirm", type=int, default=200, metavar="N",
                   help="held-out test images for the adaptive confirmation (0: skip; "
                        "default: %(default)s)")
    s.add_argument("--confirm-eps", metavar="EPS",
                   help="L-inf budget of the confirmation, e.g. 0.3 or 8/255 (default: the "
                        "adaptive suite's, 0.1 for MNIST, 4/255 for CIFAR-10)")
    s.add_argument("--confirm-steps", type=positive_int, default=100, metavar="S",
                   help="gradient steps of the adaptive attacks (default: %(default)s)")
    s.add_argument("--confirm-queries", type=positive_int, default=5000, metavar="Q",
                   help="Square's query budget (default: %(default)s)")
    s.add_argument("--frontier", type=int, default=2, metavar="K",
                   help="path points confirmed besides the chosen one (default: %(default)s)")
    s.add_argument("--search-dir", metavar="DIR",
                   help="where the search's files go (default: OUT without .onnx + .search)")
    s.add_argument("--no-plot", action="store_true", help="no pareto.png")
    # what each search option is when not given: run() refuses one given without --search
    p.set_defaults(_search_options={a.dest: (a.option_strings[-1], a.default)
                                    for a in s._group_actions if a.dest != "search"})


def parse_bits(text: str) -> tuple[int, ...]:
    """'2-8' or '2,3,4,8' as widths."""
    try:
        if "-" in text:
            lo, hi = (int(v) for v in text.split("-", 1))
            return tuple(range(lo, hi + 1))
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--search-bits takes a range or a list, e.g. 2-8 or 2,3,4,8; got "
                          f"{text!r}") from None


def search_config(args: argparse.Namespace) -> SearchConfig:
    """The search the options ask for (--search)."""
    if args.bits is not None or args.recipe:
        raise UsageError("--search chooses the bits itself; drop --bits / --recipe (or drop "
                          "--search)")
    if args.input_spec:
        raise UsageError("--search scores candidates on float32 NCHW [0, 1] pixels; --input-spec"
                         " works without --search (harden with --bits, then eval)")
    unused = given_options(args, MULAW_OPTIONS)
    if unused:
        raise UsageError(f"--search chooses which layers to mu-map itself (with --mulaw MU); "
                         f"drop {', '.join(unused)}")
    acts = None
    if args.activations == "int8":
        acts = IntegerActivations(args.calibrate, args.calibration_method,
                                  data_label(args.calibration_data, "train"))
    return SearchConfig(
        bits=parse_bits(args.search_bits), avg_bits=args.avg_bits, max_bytes=args.max_bytes,
        max_drop=args.max_drop, mulaw=args.mulaw, layers=option(args, "layers"),
        granularity=Granularity(option(args, "granularity")),
        scale=ScaleRule(option(args, "scale")), quantizer=Quantizer(option(args, "quantizer")),
        narrow=not option(args, "full_range"),
        encoding=Encoding(args.encoding or "qdq"), activations=acts, confirm=args.confirm,
        eps=None if args.confirm_eps is None else parse_number(args.confirm_eps, "--confirm-eps"),
        steps=args.confirm_steps, queries=args.confirm_queries,
        frontier=args.frontier, seed=args.seed)


def run_search(args: argparse.Namespace) -> int:
    cfg = search_config(args)
    if not args.no_plot:
        plotting.require("pass --no-plot")
    folder = Path(args.search_dir) if args.search_dir else search_folder(args.output)
    result = search_file(args.model, args.output, cfg, calibration_data=args.calibration_data,
                         calibrate=args.calibrate, state_dir=folder,
                         log=None if args.quiet else lambda m: print(m, file=sys.stderr))
    files = write_search(result, folder, args.output, plot=not args.no_plot)
    if not args.quiet:
        print("\n".join(summary_lines(result, args.output)))
    print(f"wrote {args.output} and {files.report.parent}/ (recipe.toml, report.md, "
          f"search.json{', pareto.png' if files.plot else ''})")
    return 0


def run(args: argparse.Namespace) -> int:
    check_isolated(args, args.model, probe=False)
    if args.search:
        return run_search(args)
    given = [flag for dest, (flag, default) in args._search_options.items()
             if getattr(args, dest) != default]
    if given:
        raise UsageError(f"{', '.join(given)} applies to --search only; add --search or drop it")
    if args.activations != "int8":
        given = [flag for dest, flag, default in CALIBRATION_OPTIONS
                 if getattr(args, dest) != default]
        if given:
            raise UsageError(f"{', '.join(given)} only applies with --activations int8 (or "
                             "--search); add one or drop it")
    recipe = recipe_from_args(args)
    if recipe is None:
        raise UsageError("no pass given; ask for --mulaw MU and/or --bits B (or --recipe FILE)")
    acts = recipe.activations

    def images(acts: IntegerActivations) -> Any:  # (N, C, H, W) images
        """Loaded once the model and the recipe are found hardenable."""
        if not args.quiet:  # the one slow step (a minute for entropy on a WRN)
            print(f"calibrating int8 activations: {acts.samples} images of {acts.data}, "
                  f"{acts.method.value} ...", file=sys.stderr, flush=True)
        return calibration_images(acts)

    result = harden_file(args.model, args.output, recipe, in_place=args.in_place,
                         calibration=None if acts is None else functools.partial(images, acts))
    for r in () if args.quiet else result.records:  # --quiet: only the final line
        bits = f"{r.bits} bits" if r.bits else f"mu={r.mu:g}"
        print(f"{r.pass_kind:6} {r.tensor:32} {r.op_type:13} {bits:8} levels={r.levels:<6} "
              f"max|dW|={r.max_abs_delta:.4g} {r.encoding}")
    print(f"wrote {result.path} ({result.bytes_out:,} bytes; input {result.bytes_in:,} bytes)")
    for note in () if args.quiet else result.notes:
        print(f"note: {note}")
    return 0
