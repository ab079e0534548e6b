"""Options shared by several subcommands, and their conversion into library objects."""

from __future__ import annotations

import argparse
import logging

from qrdeploy.commands._types import (  # the number types, for the commands that import here
    bit_width as bit_width,
)
from qrdeploy.commands._types import non_negative_float as non_negative_float
from qrdeploy.commands._types import non_negative_int as non_negative_int
from qrdeploy.commands._types import positive_float as positive_float
from qrdeploy.commands._types import positive_int as positive_int
from qrdeploy.commands._types import seed_value as seed_value
from qrdeploy.core.runtime import PROVIDERS, SessionConfig
from qrdeploy.data.datasets import BUILTIN, SPLITS, Dataset, load_dataset
from qrdeploy.errors import ConfigError, UsageError
from qrdeploy.evaluation.shard import Parallel, ray_address, warm
from qrdeploy.graphio.inputspec import InputContract, InputSpec
from qrdeploy.graphio.isolate import Isolation, open_isolated

log = logging.getLogger(__name__)


def data_name(text: str) -> str:
    """argparse type for --data and --calibration-data: an embedded or torchvision data set, or
    npz:PATH; a misspelt name is a usage error (exit 2), not a failed run."""
    if text in BUILTIN or (text.startswith("npz:") and len(text) > 4):
        return text
    raise argparse.ArgumentTypeError(f"unknown data set {text!r}; use one of "
                                     f"{', '.join(BUILTIN)} or npz:PATH")


def input_spec(text: str) -> str:
    """argparse type for --input-spec: parsed once here, so a malformed spec is a usage error."""
    try:
        InputSpec.parse(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def top_within(top_flag: str, top: int, directions_flag: str, directions: int) -> None:
    """The margin criteria average the `top` smallest of `directions` margins: a usage error
    (exit 2) naming both options when there are fewer directions than that."""
    if top > directions:
        raise UsageError(f"{top_flag} {top} is more than {directions_flag} {directions}: the "
                         f"smallest margins are taken among the directions; lower {top_flag} or "
                         f"raise {directions_flag}")


def add_data(p: argparse.ArgumentParser, default: str | None = "mnist-5k") -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", type=data_name, default=default, required=default is None,
                   help="mnist-5k or cifar10-10k (embedded), mnist, cifar10 or npz:PATH "
                   + ("(required: the data the gate measures on)" if default is None
                      else "(default: %(default)s)"))
    g.add_argument("--data-root", default=None, help="folder with torchvision-format data sets")
    g.add_argument("--download", action="store_true", help="download mnist/cifar10 if missing")
    g.add_argument("--split", choices=SPLITS, default="test", help="default: %(default)s")
    g.add_argument("-n", type=positive_int, default=None, help="use the first N samples")


def load_data(args: argparse.Namespace) -> Dataset:
    if args.data.startswith("npz:") and args.split != "test":
        log.warning("--split %s: %s is one set without splits; all of its samples are used",
                    args.split, args.data)
    return load_dataset(args.data, args.split, n=args.n, data_root=args.data_root,
                        download=args.download)


def add_runtime(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("onnxruntime")
    g.add_argument("--provider", choices=PROVIDERS, default="auto",
                   help="auto: CUDA when onnxruntime-gpu sees a GPU, else CPU")
    g.add_argument("--threads", type=non_negative_int, default=0,
                   help="intra-op threads (0: onnxruntime's)")
    g.add_argument("--batch-size", type=positive_int, default=500, help="default: %(default)s")


def add_parallel(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("parallel runs (docs/evaluation.md, sharded runs)")
    g.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="split the samples over N local processes (threads split so that "
                        "workers x threads = cores); the results equal the one-process run's")
    g.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   type=ray_option,
                   help="shard over a Ray cluster: no ADDRESS starts one on this machine, 'auto' "
                        "joins the running one (needs the cluster extra)")
    g.add_argument("--shards", type=positive_int, default=None, metavar="K",
                   help="pieces of the samples (default: one per worker; with --ray one per CPU "
                        "of the cluster)")


def ray_option(text: str) -> str:
    """argparse type of --ray ADDRESS: a malformed address is a usage error (exit 2)."""
    try:
        ray_address(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def parallel(args: argparse.Namespace) -> Parallel:
    """The parallel options, with their workers already starting (`warm`): the command's data
    and model loading that follows overlaps their start."""
    par = Parallel(args.workers, args.ray, args.shards)
    warm(par)
    return par


def session_config(args: argparse.Namespace) -> SessionConfig:
    return SessionConfig(provider=args.provider, threads=args.threads)


#: the models beside the main one that may take their own input contract, with what the
#: --X-input-spec help says of each (eval and check: --reference; attack: all three)
COMPANIONS = {
    "reference": "the reference",
    "unhardened": "the model before hardening (--unhardened)",
    "source": "the transfer source (--source)",
}


def add_input_contract(p: argparse.ArgumentParser, companions: tuple[str, ...] = ()) -> None:
    """--input-spec and its companions; for each of `companions` (keys of COMPANIONS) also
    --X-input-spec: that model's own contract."""
    g = p.add_argument_group("model input contract (docs/input-spec.md)")
    g.add_argument("--input-spec", type=input_spec, default=None, metavar="SPEC",
                   help="what the model's input expects, e.g. range=0-255,layout=nhwc or "
                        "mean=0.485/0.456/0.406,std=0.229/0.224/0.225 (default: float32 NCHW "
                        "in [0, 1])")
    for name in companions:
        g.add_argument(f"--{name}-input-spec", type=input_spec, default=None, metavar="SPEC",
                       help=f"the input contract of {COMPANIONS[name]} when it differs from "
                            "the model's (e.g. range=0-1 for the float32 NCHW original of a uint8 "
                            "NHWC model; default: --input-spec; --input-name and --output-name "
                            "then apply to the model only)")
    g.add_argument("--input-name", default=None, metavar="NAME",
                   help="the image input, when the model has several")
    g.add_argument("--output-name", default=None, metavar="NAME",
                   help="the logits output, when the model has several")
    g.add_argument("--upcast-fp16", action="store_true",
                   help="run a float16 model as its float32 twin")
    g.add_argument("--no-input-guard", action="store_true",
                   help="skip the check that the declared input contract fits the model "
                        "(docs/input-spec.md): go on as declared")


def input_contract(args: argparse.Namespace) -> InputContract | None:
    """The contract the options ask for, or None for a float32 NCHW [0, 1] model."""
    if (args.input_spec, args.input_name, args.output_name) == (None, None, None) \
            and not args.upcast_fp16:
        return None
    return InputContract.from_options(args.input_spec, args.input_name, args.output_name,
                                      args.upcast_fp16)


def companion_contract(args: argparse.Namespace, name: str) -> InputContract | None:
    """The own contract of the model given by --`name` (--`name`-input-spec, with
    --upcast-fp16; the input and output names are the model's), or None: the model's."""
    spec = getattr(args, f"{name}_input_spec", None)
    if spec is None:
        return None
    if getattr(args, name, None) is None:
        raise UsageError(f"--{name}-input-spec needs --{name}")
    return InputContract.from_options(spec, upcast_fp16=args.upcast_fp16)


def add_isolate(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("untrusted models (docs/reliability.md)")
    g.add_argument("--isolate", action="store_true",
                   help="open each model first in a subprocess, so a crash or hang of the C++ "
                        "libraries becomes a clean error")
    g.add_argument("--isolate-timeout", type=positive_float, default=120.0, metavar="S",
                   help="seconds the isolated check may take (default: %(default)s)")


def check_isolated(args: argparse.Namespace, *models: str | None, probe: bool) -> None:
    """With --isolate, open every given model in a subprocess first (qrdeploy.graphio.isolate)."""
    if not args.isolate:
        return
    config = session_config(args) if hasattr(args, "provider") else None
    for model in models:
        if model is not None:
            open_isolated(model, config, Isolation(args.isolate_timeout, probe=probe))
