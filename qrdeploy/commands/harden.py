"""`qrdeploy harden`: μ-law mapping and low-bit weight quantization of an ONNX model's weights,
written in the chosen encoding with its provenance inside."""

from __future__ import annotations

import argparse

import numpy as np

from qrdeploy.commands._options import add_isolate, check_isolated
from qrdeploy.data.datasets import load_dataset
from qrdeploy.errors import ConfigError
from qrdeploy.hardening.encodings import Encoding
from qrdeploy.hardening.integer import Calibration, IntegerActivations
from qrdeploy.hardening.passes import (
    GraphPass,
    MuLawMap,
    Recipe,
    WeightQuant,
    harden_file,
    load_recipe,
)
from qrdeploy.hardening.quant import Granularity, Quantizer, ScaleRule

HELP = ("rewrite weights: mu-law mapping and/or low-bit quantization (float|qdq|int4 encoding; "
        "--activations int8: full-integer model)")


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
    q.add_argument("--encoding", choices=[e.value for e in Encoding], default="float",
                   help="weight storage with float activations (for analysis: onnxruntime "
                        "dequantizes the weights on every run)")
    a = p.add_argument_group("activations (deployment: integer kernels)")
    a.add_argument("--activations", choices=["float", "int8"], default="float",
                   help="int8: uint8 activations calibrated on images, int8 weight codes, QDQ "
                        "that onnxruntime runs as integer kernels (default: %(default)s)")
    a.add_argument("--calibrate", type=int, default=500, metavar="N",
                   help="calibration images for int8 activations (default: %(default)s)")
    a.add_argument("--calibration-data", default="mnist-5k", metavar="DATA",
                   help="mnist-5k (embedded), mnist, cifar10 or npz:PATH; its train split "
                        "(default: %(default)s)")
    a.add_argument("--calibration-method", choices=[c.value for c in Calibration],
                   default="minmax", help="default: %(default)s")


def recipe_from_args(args: argparse.Namespace) -> Recipe | None:
    """The recipe the options ask for; None when they ask for no pass at all."""
    passes: list[GraphPass] = []
    if args.mulaw is not None:
        passes.append(MuLawMap(args.mulaw, args.mulaw_rescale, args.mulaw_layers))
    if args.bits is not None:
        passes.append(WeightQuant(args.bits, args.granularity, args.scale, args.quantizer,
                                  args.layers, narrow=not args.full_range))
    acts = None
    if getattr(args, "activations", "float") == "int8":
        acts = IntegerActivations(args.calibrate, args.calibration_method,
                                  f"{args.calibration_data}:train")
    if args.recipe:
        if passes:
            raise ConfigError("--recipe cannot be combined with --mulaw/--bits; put them in it")
        recipe = load_recipe(args.recipe)
        if acts is not None:
            recipe = Recipe(recipe.passes, recipe.encoding, acts)
        return recipe
    return Recipe(tuple(passes), Encoding(args.encoding), acts) if passes else None


def calibration_images(recipe: Recipe, data_root: str | None = None) -> np.ndarray | None:
    """The calibration images an int8 recipe names (DATA:train, first N), else None."""
    acts = recipe.activations
    if acts is None:
        return None
    name, _, split = acts.data.rpartition(":")
    return load_dataset(name or acts.data, split or "train", n=acts.samples,
                        data_root=data_root).x


def run(args: argparse.Namespace) -> int:
    check_isolated(args, args.model, probe=False)
    recipe = recipe_from_args(args) or Recipe((), Encoding(args.encoding))
    result = harden_file(args.model, args.output, recipe, in_place=args.in_place,
                         calibration=calibration_images(recipe))
    for r in () if args.quiet else result.records:  # --quiet: only the final line
        bits = f"{r.bits} bits" if r.bits else f"mu={r.mu:g}"
        print(f"{r.pass_kind:6} {r.tensor:32} {r.op_type:13} {bits:8} levels={r.levels:<6} "
              f"max|dW|={r.max_abs_delta:.4g} {r.encoding}")
    print(f"wrote {result.path} ({result.bytes_out:,} bytes; input {result.bytes_in:,} bytes)")
    return 0
