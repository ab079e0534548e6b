"""`qrdeploy harden`: μ-law mapping and low-bit weight quantization of an ONNX model's weights,
written in the chosen encoding with its provenance inside."""

from __future__ import annotations

import argparse

from qrdeploy.commands._options import add_isolate, check_isolated
from qrdeploy.errors import ConfigError
from qrdeploy.hardening.encodings import Encoding
from qrdeploy.hardening.passes import (
    GraphPass,
    MuLawMap,
    Recipe,
    WeightQuant,
    harden_file,
    load_recipe,
)
from qrdeploy.hardening.quant import Granularity, Quantizer, ScaleRule

HELP = "rewrite weights: mu-law mapping and/or low-bit quantization (float|qdq|int4 encoding)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="IN", help="input .onnx model")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output .onnx path")
    p.add_argument("--in-place", action="store_true", help="allow OUT to be IN")
    add_isolate(p)
    add_recipe_options(p)


def add_recipe_options(p: argparse.ArgumentParser) -> None:
    """The hardening options, shared with `qrdeploy lipschitz` (hardening in memory)."""
    p.add_argument("--recipe", metavar="FILE.toml", help="passes and encoding from a TOML recipe")
    m = p.add_argument_group("mu-law mapping (paper: post-training, last few layers)")
    m.add_argument("--mulaw", type=float, metavar="MU", help="apply F with this mu (e.g. 255)")
    m.add_argument("--mulaw-layers", default="last:1", metavar="SEL", help="default: %(default)s")
    m.add_argument("--mulaw-rescale", action=argparse.BooleanOptionalAction, default=True,
                   help="W' = s*F(W/s) (default) or, with --no-mulaw-rescale, F(W/s)")
    q = p.add_argument_group("weight quantization (after mu-law)")
    q.add_argument("--bits", type=int, metavar="B", help="bit width 1..8 (paper: 3)")
    q.add_argument("--granularity", choices=[g.value for g in Granularity], default="tensor")
    q.add_argument("--scale", choices=[s.value for s in ScaleRule], default="max")
    q.add_argument("--quantizer", choices=[s.value for s in Quantizer], default="uniform")
    q.add_argument("--full-range", action="store_true", help="codes -2^(b-1)..2^(b-1)-1")
    q.add_argument("--layers", default="all", metavar="SEL",
                   help="all | first:N | last:N | Conv|Gemm|MatMul|ConvTranspose | glob; "
                        "comma-separated, '!' excludes (default: %(default)s)")
    q.add_argument("--encoding", choices=[e.value for e in Encoding], default="float")


def recipe_from_args(args: argparse.Namespace) -> Recipe | None:
    """The recipe the options ask for; None when they ask for no pass at all."""
    passes: list[GraphPass] = []
    if args.mulaw is not None:
        passes.append(MuLawMap(args.mulaw, args.mulaw_rescale, args.mulaw_layers))
    if args.bits is not None:
        passes.append(WeightQuant(args.bits, args.granularity, args.scale, args.quantizer,
                                  args.layers, narrow=not args.full_range))
    if args.recipe:
        if passes:
            raise ConfigError("--recipe cannot be combined with --mulaw/--bits; put them in it")
        return load_recipe(args.recipe)
    return Recipe(tuple(passes), Encoding(args.encoding)) if passes else None


def run(args: argparse.Namespace) -> int:
    check_isolated(args, args.model, probe=False)
    recipe = recipe_from_args(args) or Recipe((), Encoding(args.encoding))
    result = harden_file(args.model, args.output, recipe, in_place=args.in_place)
    for r in () if args.quiet else result.records:  # --quiet: only the final line
        bits = f"{r.bits} bits" if r.bits else f"mu={r.mu:g}"
        print(f"{r.pass_kind:6} {r.tensor:32} {r.op_type:13} {bits:8} levels={r.levels:<6} "
              f"max|dW|={r.max_abs_delta:.4g} {r.encoding}")
    print(f"wrote {result.path} ({result.bytes_out:,} bytes; input {result.bytes_in:,} bytes)")
    return 0
