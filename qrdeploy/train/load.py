"""A trained network back from its checkpoint, or from the float ONNX graph qrdeploy exported from
one (torch needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from qrdeploy.errors import CheckpointError, ConfigError, GraphError, first_line
from qrdeploy.graphio.graph import PROVENANCE_JSON, load_model
from qrdeploy.train.checkpoint import Checkpoint, load_checkpoint
from qrdeploy.train.config import TrainConfig
from qrdeploy.train.nets import build_net, input_shape


def load_source(config: TrainConfig) -> tuple[nn.Module, Checkpoint]:
    """The model a run starts from (--from), refused in one line when it is another net."""
    module, ck = load_trained(str(config.from_checkpoint))
    net = ck.meta["config"].get("net")
    if net != config.net:
        raise ConfigError(f"--from {config.from_checkpoint} holds a {net} model, the recipe asks "
                          f"for {config.net}; pass --net {net}")
    return module, ck


def check_net_data(net: str, images: tuple[int, ...], data: str) -> None:
    """ConfigError when the net's input (C, H, W) is not the data set's image shape."""
    want = input_shape(net)
    if tuple(images) != tuple(want):
        shape = "x".join(map(str, images))
        raise ConfigError(f"--net {net} takes {'x'.join(map(str, want))} images, --data {data} "
                          f"holds {shape}; use --data "
                          f"{'mnist-5k' if want[0] == 1 else 'cifar10-10k'} or another --net")


def load_trained(path: str | Path) -> tuple[nn.Module, Checkpoint]:
    """The network of a finished checkpoint, in eval mode, and the checkpoint itself. An .onnx
    path is read as the float graph `qrdeploy export` wrote (see `from_onnx`)."""
    if Path(path).suffix.lower() == ".onnx":
        return from_onnx(path)
    ck = load_checkpoint(path)
    if ck.meta.get("kind") != "model":
        raise CheckpointError(f"{path} is not a finished model checkpoint "
                              f"(kind {ck.meta.get('kind')!r}); finish its training first")
    if not isinstance(ck.meta.get("config"), dict):
        raise CheckpointError(f"{path} has no training recipe in its metadata; "
                              "it was not written by qrdeploy train")
    config = TrainConfig.from_json(ck.meta["config"])
    head = ck.tensors["model"]
    model = build_net(config.net, num_classes=int(ck.meta.get("num_classes", 10)))
    try:
        model.load_state_dict(head)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {config.net}: "
                              f"{first_line(exc, None)}") from None
    return model.eval(), ck


def from_onnx(path: str | Path) -> tuple[nn.Module, Checkpoint]:
    """The network of a float ONNX graph that `qrdeploy export` wrote (a reference model, for
    instance), rebuilt from its recorded recipe and its initializers, which the exporter names
    after the module's parameters and buffers: so a user with only the deployed float model can
    fine-tune it (`train --from model.onnx`). The file goes through the validated loader first.
    Refused with a one-line CheckpointError: a hardened graph (its weights are no longer the
    trained ones), an export with folded batch norm, any graph whose initializers do not match
    the recipe's network name for name and shape."""
    try:
        model = load_model(path)
    except GraphError as exc:
        raise CheckpointError(first_line(exc, None)) from None
    meta = {p.key: p.value for p in model.metadata_props}
    if any(k in meta for k in PROVENANCE_JSON):
        raise CheckpointError(f"{path} is a hardened graph (its weights were rewritten by qrdeploy "
                              "harden); start from the float model it was hardened from")
    if "qrdeploy.train_recipe" not in meta or "qrdeploy.net" not in meta:
        raise CheckpointError(f"{path} has no qrdeploy training recipe in its metadata; only "
                              "graphs written by qrdeploy export can be fine-tuned")
    if meta.get("qrdeploy.bn") == "folded":
        raise CheckpointError(f"{path} was exported with batch norm folded into its convolutions; "
                              "start from its .safetensors checkpoint or an export without "
                              "--fold-bn")
    try:
        config = TrainConfig.from_json(json.loads(meta["qrdeploy.train_recipe"]))
    except (ConfigError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path}: its recorded training recipe does not parse: "
                              f"{first_line(exc, None)}") from None
    weights = {t.name: t for t in model.graph.initializer}
    classes = _classes(model)
    net = build_net(config.net, num_classes=classes)
    state: dict[str, torch.Tensor] = {}
    for name, value in net.state_dict().items():
        if name.endswith("num_batches_tracked"):  # a training counter, not in the graph
            state[name] = value
            continue
        if name not in weights:
            raise CheckpointError(f"{path} has no initializer {name!r} of {config.net}; only "
                                  "unmodified graphs written by qrdeploy export can be fine-tuned")
        array = np.array(numpy_helper.to_array(weights[name]), dtype=np.float32)
        if array.shape != tuple(value.shape):
            raise CheckpointError(f"{path}: initializer {name!r} has shape {array.shape}, "
                                  f"{config.net} needs {tuple(value.shape)}")
        state[name] = torch.from_numpy(array)
    net.load_state_dict(state)
    ck_meta = {"kind": "model", "config": config.to_json(), "num_classes": classes,
               "source": {"file": Path(path).name, "format": "onnx"}}
    return net.eval(), Checkpoint({"model": {k: v.clone() for k, v in state.items()}}, ck_meta)


def _classes(model: onnx.ModelProto) -> int:
    """The output's class dimension where the graph declares it, else 10."""
    dims = model.graph.output[0].type.tensor_type.shape.dim
    if len(dims) == 2 and dims[1].HasField("dim_value") and dims[1].dim_value > 0:
        return int(dims[1].dim_value)
    return 10
