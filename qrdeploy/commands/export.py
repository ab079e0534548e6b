"""`qrdeploy export`: a trained checkpoint to ONNX, parity-checked against torch."""

from __future__ import annotations

import argparse

HELP = "export a trained checkpoint to ONNX (opset 17, dynamic batch) with a parity check"
#: options that are files this command writes (checked before it runs)
OUTPUT_FILES = ("output",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a checkpoint written by `qrdeploy train`")
    p.add_argument("-o", "--output", required=True, help="output .onnx path")
    p.add_argument("--fold-bn", action="store_true",
                   help="fold BatchNormalization into the conv weights (default: keep BN nodes)")
    p.add_argument("--data-root", default=None, help="folder with torchvision-format data sets")


def run(args: argparse.Namespace) -> int:
    from qrdeploy.train import check_checkpoint_path, require_torch

    check_checkpoint_path(args.checkpoint)
    require_torch("export")
    from qrdeploy.train.export import export_onnx

    result = export_onnx(args.checkpoint, args.output, fold_bn=args.fold_bn,
                         data_root=args.data_root)
    print(f"wrote {result.path}")
    print(result.parity)
    return 0
