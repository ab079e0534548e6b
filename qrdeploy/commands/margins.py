"""`qrdeploy margins`: the F.L. paper's distance-based criteria per class and overall (minimal L2
adversarial distance, top-k random-direction margin, noise accuracy; qrdeploy.margins.criteria).

    qrdeploy margins models/mnist-standard.onnx --data mnist-5k -n 200 --plot margins.png
    qrdeploy margins runs/std.safetensors runs/fl.safetensors -n 200   # checkpoints, via torch
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qrdeploy.commands._options import (
    add_data,
    add_isolate,
    add_runtime,
    check_isolated,
    load_data,
    positive_float,
    positive_int,
    session_config,
    top_within,
)
from qrdeploy.core.plotting import require
from qrdeploy.evaluation.suites import PARAMS, family_of
from qrdeploy.graphio.graph import load_model as load_onnx
from qrdeploy.graphio.inputspec import contracted
from qrdeploy.margins.criteria import CriteriaConfig, L2Attack, margin_criteria, plot_criteria
from qrdeploy.margins.search import SearchConfig, VjpClassifier
from qrdeploy.model.ortmodel import OrtModel
from qrdeploy.model.torchmodel import NumpyModel, TorchModel

HELP = "per-class margins: minimal L2 adversarial distance, top-k directional margin, noise"
_D = CriteriaConfig()
#: options that are files this command writes (checked before it runs)
OUTPUT_FILES = ("plot",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="ONNX classifier(s), or qrdeploy .safetensors checkpoints; several are "
                        "measured on the same samples and directions and plotted side by side")
    g = p.add_argument_group("criteria (defaults are qrdeploy's own; see docs/feedback.md)")
    g.add_argument("--directions", type=positive_int, default=_D.directions,
                   help="random unit directions per sample (default: %(default)s)")
    g.add_argument("--top", type=positive_int, default=_D.top,
                   help="smallest margins averaged (default: %(default)s)")
    g.add_argument("--t-max", type=positive_float, default=_D.search.t_max,
                   help="L2 search cap (default: %(default)s)")
    g.add_argument("--l2-attack", choices=[a.value for a in L2Attack], default=_D.l2_attack.value)
    g.add_argument("--sigma", type=positive_float, default=None,
                   help="Gaussian noise sigma (default: the attack suite's noise scale for the "
                        "data: 0.3 for mnist, 0.1 for cifar10)")
    g.add_argument("--bound", type=positive_float, default=None,
                   help="uniform noise bound (default: as --sigma)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="per-class bar chart (needs matplotlib)")
    add_data(p)
    add_runtime(p)
    add_isolate(p)


def load_model(path: str, args: argparse.Namespace) -> VjpClassifier:
    if path.endswith(".safetensors"):
        from qrdeploy.train import load_trained

        module, ck = load_trained(path)
        return NumpyModel(TorchModel(module, int(ck.meta.get("num_classes", 10))))
    model, batch = contracted(load_onnx(path), None, args.batch_size)  # a kept batch of 1
    return OrtModel(model, session_config(args), batch_size=batch)


def run(args: argparse.Namespace) -> int:
    if args.plot:
        require()  # before any work: a missing plots extra costs no compute
    check_isolated(args, *(m for m in args.models if not m.endswith(".safetensors")), probe=True)
    top_within("--top", args.top, "--directions", args.directions)
    data = load_data(args)
    # the noise of the attack suite's columns for this data (mnist 0.3, cifar10 0.1)
    noise = PARAMS[family_of(data.name, int(data.x.shape[1]))].noise_scale
    config = CriteriaConfig(directions=args.directions, top=args.top,
                            search=SearchConfig(t_max=args.t_max, t0=min(0.5, args.t_max)),
                            l2_attack=L2Attack(args.l2_attack),
                            sigma=noise if args.sigma is None else args.sigma,
                            bound=noise if args.bound is None else args.bound)
    reports = {Path(m).name: margin_criteria(load_model(m, args), data, config, seed=args.seed)
               for m in args.models}
    if args.json:
        print(json.dumps({k: r.to_json() for k, r in reports.items()}, indent=2))
    else:
        for name, report in reports.items():
            print("\n".join([f"## {name}", "", *report.lines(), ""]))
    if args.plot:
        print(f"wrote {plot_criteria(reports, args.plot)}")
    return 0
