"""ONNX files in and out, and the weight layers inside them. This is the one module that reads and
writes ONNX files: validated loads (qrdeploy.graphio.prevalidate before any C++ code, then the
checker; clean errors for truncated, garbage or hostile files; external data only inside the model's
folder; opset 13–21 with recorded conversions), atomic deterministic
saves (external data above 2 GB), metadata, and discovery of weight layers (Conv, ConvTranspose,
Gemm, MatMul with a constant weight, also behind Transpose / Identity / Cast / DequantizeLinear /
codebook chains) with the float32 weight each consumer actually sees."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import EncodeError
from onnx import helper, numpy_helper
from onnx.external_data_helper import (
    _get_all_tensors,
    load_external_data_for_model,
    uses_external_data,
)

from qrdeploy.core.fileio import atomic_write, atomic_write_bytes
from qrdeploy.errors import GraphError, first_line
from qrdeploy.graphio.prevalidate import Limits, prevalidate_file

log = logging.getLogger(__name__)

MIN_OPSET, MAX_OPSET = 13, 21
PROTO_LIMIT = 2**31 - 1  # protobuf cannot serialize a message above 2 GB
EXTERNAL_MIN_BYTES = 1024  # tensors below this stay inside the .onnx file
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
PASS_THROUGH = ("Transpose", "Identity", "Cast")
META_OPSET = "qrdeploy.opset_conversion"
# provenance written by qrdeploy.hardening.passes: key -> JSON type (a list holds objects)
PROVENANCE_JSON: dict[str, type] = {"qrdeploy.harden": list, "qrdeploy.records": list,
                                    "qrdeploy.bits": dict}


# ---------------------------------------------------------------- loading


def load_model(path: str | os.PathLike[str], *, check: bool = True,
               limits: Limits | None = None) -> onnx.ModelProto:
    """Load and validate an ONNX model. Before any C++ code sees it, qrdeploy.graphio.prevalidate
    checks declared sizes against `limits` and that external data lies inside the model's folder.
    A model outside opset 13–21 is converted (recorded in metadata) or refused."""
    path = Path(path)
    check_model_path(path)
    model = prevalidate_file(path, limits)
    _check_provenance(model, path)
    has_external = bool(_external_tensors(model))
    if has_external:
        _load_external(model, path)
    if not model.graph.node:
        raise GraphError(f"{path} has no graph nodes; it is not an ONNX classifier")
    if check:
        _check(model, path if has_external else None)
    return _supported_opset(model, path)


#: Suffixes of training checkpoints, which `qrdeploy export` turns into ONNX.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".bin")


def check_model_path(path: Path) -> None:
    """One-line GraphErrors for the usual wrong paths: missing, a folder, a checkpoint."""
    if path.is_dir():
        raise GraphError(f"{path} is a folder; pass the path of an .onnx file inside it")
    if not path.exists():
        raise GraphError(f"model file {path} does not exist; pass the path of an .onnx file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        raise GraphError(f"{path} is a training checkpoint, not ONNX; convert it first: "
                         f"qrdeploy export {path} -o {path.with_suffix('.onnx').name}")
    if suffix in CHECKPOINT_SUFFIXES:
        raise GraphError(f"{path} is a PyTorch checkpoint, not ONNX; export the model with "
                         "torch.onnx.export (qrdeploy export converts the .safetensors "
                         "checkpoints of qrdeploy train)")


def _check_provenance(model: onnx.ModelProto, path: Path) -> None:
    """The JSON that qrdeploy.hardening.passes writes into metadata must parse to the expected
    shape; an edited or corrupted value would otherwise fail deep inside inspect or harden."""
    meta = get_metadata(model)
    for key, kind in PROVENANCE_JSON.items():
        if key not in meta:
            continue
        try:
            value = json.loads(meta[key])
        except ValueError:
            value = None
        items_ok = kind is dict or all(isinstance(v, dict) for v in value or [])
        if not isinstance(value, kind) or not items_ok:
            raise GraphError(f"{path}: metadata {key!r} is not the JSON {kind.__name__} qrdeploy "
                             "writes; the file was edited or corrupted: harden the original again")


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in _get_all_tensors(model) if uses_external_data(t)]


def _load_external(model: onnx.ModelProto, path: Path) -> None:
    try:
        load_external_data_for_model(model, str(path.parent))
    except Exception as exc:
        raise GraphError(f"cannot read the external data of {path}: {exc}") from exc


def _check(model: onnx.ModelProto, path: Path | None) -> None:
    try:
        if path is not None or _tensor_bytes(model) > PROTO_LIMIT // 2:
            onnx.checker.check_model(str(path) if path else model)
        else:
            onnx.checker.check_model(model)
    except Exception as exc:
        first = first_line(exc, None)
        raise GraphError(f"the ONNX checker rejects the model: {first}; export it again") from exc


def opset_version(model: onnx.ModelProto) -> int:
    """The default-domain opset the model imports."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise GraphError("the model imports no default-domain opset; it is not a valid ONNX model")


def _supported_opset(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    version = opset_version(model)
    if MIN_OPSET <= version <= MAX_OPSET:
        return model
    target = MIN_OPSET if version < MIN_OPSET else MAX_OPSET
    log.info("%s: opset %d is outside %d-%d; converting to %d", path.name, version,
             MIN_OPSET, MAX_OPSET, target)
    return convert_opset(model, target)


def convert_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """Convert with onnx.version_converter; the conversion is recorded in metadata, never silent."""
    version = opset_version(model)
    if version == target:
        return model
    try:
        converted = onnx.version_converter.convert_version(model, target)
        onnx.checker.check_model(converted)
    except Exception as exc:
        first = first_line(exc, None)
        raise GraphError(
            f"cannot convert the model from opset {version} to {target} ({first}); export it "
            f"at an opset in {MIN_OPSET}-{MAX_OPSET}") from exc
    done = get_metadata(converted).get(META_OPSET)
    step = f"{version}->{target}"
    set_metadata_inplace(converted, {META_OPSET: f"{done},{step}" if done else step})
    return converted


# ---------------------------------------------------------------- saving


def _tensor_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def _over_limit(model: onnx.ModelProto) -> bool:
    """Above protobuf's 2 GB? upb's ByteSize itself raises EncodeError past the limit."""
    try:
        return bool(model.ByteSize() > PROTO_LIMIT)
    except EncodeError:
        return True


def model_to_bytes(model: onnx.ModelProto) -> bytes:
    """Deterministic serialization; models above 2 GB must be saved with save_model."""
    if _over_limit(model):
        raise GraphError("the model is above 2 GB and cannot be serialized in one piece; "
                         "save it with save_model (external data)")
    return bytes(model.SerializeToString(deterministic=True))


def save_model(
    model: onnx.ModelProto, path: str | os.PathLike[str], *, external_data: bool | None = None
) -> Path:
    """Write atomically (temporary file + rename). external_data None: only above 2 GB; the data
    then goes to '<name>.data' beside the model (written and renamed before the model itself)."""
    path = Path(path)
    big = _over_limit(model) if external_data is None else external_data
    if not big:
        return atomic_write_bytes(path, model_to_bytes(model))
    data_name = f"{path.name}.data"
    stub = _external_stub(model, data_name, path.parent)
    return atomic_write_bytes(path, stub.SerializeToString(deterministic=True))


def _external_stub(model: onnx.ModelProto, data_name: str, folder: Path) -> onnx.ModelProto:
    """A copy of the model whose large initializers point into `data_name`, which is written
    tensor by tensor (one tensor in memory at a time) and renamed into place."""
    stub = onnx.ModelProto()
    stub.CopyFrom(_without_initializers(model))
    folder.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            for t in model.graph.initializer:
                stub.graph.initializer.append(_stub_tensor(t, fh, data_name))

    atomic_write(folder / data_name, write)
    return stub


def _stub_tensor(t: onnx.TensorProto, fh: Any, data_name: str) -> onnx.TensorProto:
    raw = t.raw_data if t.HasField("raw_data") else numpy_helper.from_array(
        numpy_helper.to_array(t)).raw_data
    if len(raw) < EXTERNAL_MIN_BYTES:
        return t
    out = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims)
    offset = fh.tell()
    fh.write(raw)
    out.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
        out.external_data.add(key=key, value=value)
    return out


def _without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model with an empty initializer list (cheap: weights are not copied)."""
    out = onnx.ModelProto()
    _copy_fields(model, out, skip="graph")
    _copy_fields(model.graph, out.graph, skip="initializer")
    return out


def _copy_fields(src: Any, dst: Any, skip: str) -> None:
    for fd, value in src.ListFields():
        if fd.name == skip:
            continue
        if fd.is_repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def copy_without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Public form of the cheap structural copy the passes build their output from."""
    return _without_initializers(model)


# ---------------------------------------------------------------- metadata


def get_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def set_metadata_inplace(model: onnx.ModelProto, values: Mapping[str, str]) -> None:
    """Set keys in metadata_props (others kept), sorted by key for byte-stable files."""
    merged = get_metadata(model) | dict(values)
    del model.metadata_props[:]
    for key in sorted(merged):
        model.metadata_props.add(key=key, value=merged[key])


def delete_metadata_inplace(model: onnx.ModelProto, keys: Iterable[str]) -> None:
    """Remove keys from metadata_props (absent ones ignored), order kept."""
    drop = set(keys)
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in drop]
    del model.metadata_props[:]
    for key, value in keep:
        model.metadata_props.add(key=key, value=value)


def set_metadata(model: onnx.ModelProto, values: Mapping[str, str]) -> onnx.ModelProto:
    """A copy of the model with the given metadata keys set."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    set_metadata_inplace(out, values)
    return out


# ---------------------------------------------------------------- weight layers


@dataclass(frozen=True)
class WeightLayer:
    """A weight-carrying node and the initializer behind its weight input.

    channel_axis is the output-channel axis as the consumer sees the weight (Conv 0,
    ConvTranspose 1, Gemm transB=0 and MatMul: last, Gemm transB=1: 0); weight_axis is the same
    axis in the stored initializer (they differ behind a Transpose)."""

    index: int  # position among the weight layers (topological)
    node_index: int  # position of the consumer in graph.node
    node_name: str
    op_type: str
    weight_name: str  # root initializer: float weights, or integer codes behind DQ / codebook
    channel_axis: int
    weight_axis: int
    shape: tuple[int, ...]  # as the consumer sees it
    weight_shape: tuple[int, ...]  # as stored
    weight_dtype: str
    encoding: str  # float | qdq | int4 | codebook
    folded_bn: bool
    shared: bool  # the root or a chain tensor also feeds another node
    bias_name: str | None
    chain: tuple[str, ...]  # op types between the initializer and the consumer, consumer-first
    attrs: Mapping[str, Any] = field(default_factory=dict, hash=False)


def unique_name(base: str, taken: set[str]) -> str:
    """base, or base_1, base_2, ... : the first name not yet in the graph (added to taken)."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def real_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """The inputs a caller feeds (an initializer listed among the inputs has its default)."""
    inits = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in inits]


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The batch size the model's first fed input fixes (an edge export's 1), or None when it
    is dynamic."""
    inputs = real_inputs(model.graph)
    dims = inputs[0].type.tensor_type.shape.dim if inputs else []
    return int(dims[0].dim_value) if dims and dims[0].dim_value > 0 else None


def initializer_map(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: n for n in model.graph.node for out in n.output}


def _use_counts(model: onnx.ModelProto) -> Counter[str]:
    uses: Counter[str] = Counter(i for n in model.graph.node for i in n.input if i)
    uses.update(o.name for o in model.graph.output)
    return uses


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        out[a.name] = value.decode() if isinstance(value, bytes) else value
    return out


def _codebook_inputs(node: onnx.NodeProto, prod: dict[str, onnx.NodeProto],
                     inits: Mapping[str, Any]) -> list[onnx.NodeProto] | None:
    """[Gather, Cast] when node is Mul(Gather(codebook, Cast(codes)), scale), else None."""
    gather = next((prod[i] for i in node.input if i in prod and prod[i].op_type == "Gather"), None)
    if gather is None or gather.input[0] not in inits:
        return None
    cast = prod.get(gather.input[1])
    if cast is None or cast.op_type != "Cast":
        return None
    return [gather, cast]


def _trace(name: str, prod: dict[str, onnx.NodeProto], inits: Mapping[str, Any]
           ) -> tuple[str, list[onnx.NodeProto]] | None:
    """(root initializer, chain nodes consumer-first) behind a weight input, or None."""
    chain: list[onnx.NodeProto] = []
    while name not in inits:
        node = prod.get(name)
        if node is None:
            return None
        if node.op_type in PASS_THROUGH or node.op_type == "DequantizeLinear":
            chain.append(node)
            name = node.input[0]
        elif node.op_type == "Mul" and (book := _codebook_inputs(node, prod, inits)):
            chain.extend([node, *book])
            name = book[1].input[0]
        else:
            return None
    return name, chain


def consumer_channel_axis(op_type: str, ndim: int, attrs: Mapping[str, Any]) -> int:
    """Output-channel axis of the weight as the consumer sees it (docs/passes.md, per-channel
    scales)."""
    if op_type == "Conv":
        return 0
    if op_type == "ConvTranspose":
        return 1
    if op_type == "Gemm":
        return 0 if attrs.get("transB", 0) else 1
    return ndim - 1  # MatMul: (…, K, N) weight, N outputs


def _stored_axis(axis: int, ndim: int, chain: list[onnx.NodeProto]) -> int:
    for node in chain:  # consumer-first: map the consumer's axis back to the stored tensor
        if node.op_type == "Transpose":
            axis = _perm(node, ndim)[axis]
    return axis


def _perm(node: onnx.NodeProto, ndim: int) -> list[int]:
    """The Transpose's permutation, checked: a hostile file may declare any list."""
    perm = [int(p) for p in _attrs(node).get("perm") or reversed(range(ndim))]
    if sorted(perm) != list(range(ndim)):
        raise GraphError(f"Transpose {node.name!r} has perm {perm[:8]} for a rank-{ndim} weight; "
                         f"expected a permutation of 0..{ndim - 1}: export the model again")
    return perm


def _encoding(chain: list[onnx.NodeProto], root: onnx.TensorProto) -> str:
    ops = [n.op_type for n in chain]
    if "Gather" in ops:
        return "codebook"
    if "DequantizeLinear" in ops:
        return "int4" if root.data_type == onnx.TensorProto.INT4 else "qdq"
    return "float"


def _folded_bn(node: onnx.NodeProto, root_name: str) -> bool:
    """Heuristic (documented in docs/passes.md): the dynamo exporter tags nodes it fused with a
    BatchNorm; the legacy exporter gives folded weights generated names like 'onnx::Conv_16'."""
    tags = " ".join(p.value for p in node.metadata_props)
    return "BatchNorm" in tags or root_name.startswith("onnx::")


def _node_name(node: onnx.NodeProto, i: int) -> str:
    return node.name or f"{node.op_type}_{i}"


def weight_layers(model: onnx.ModelProto) -> list[WeightLayer]:
    """Weight layers in topological order (graph order, which ONNX requires to be topological)."""
    inits, prod, uses = initializer_map(model), _producers(model), _use_counts(model)
    layers: list[WeightLayer] = []
    for i, node in enumerate(model.graph.node):
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
            continue
        found = _trace(node.input[1], prod, inits)
        if found is None:
            continue  # MatMul / Gemm of two activations: not a weight layer
        layers.append(_make_layer(len(layers), i, node, found, inits, uses))
    return layers


def _make_layer(index: int, i: int, node: onnx.NodeProto,
                found: tuple[str, list[onnx.NodeProto]], inits: Mapping[str, onnx.TensorProto],
                uses: Counter[str]) -> WeightLayer:
    root_name, chain = found
    root = inits[root_name]
    attrs = _attrs(node)
    view = _view_shape(tuple(root.dims), chain)
    _check_rank(node, view)
    axis = consumer_channel_axis(node.op_type, len(view), attrs)
    tensors = [root_name, *(n.output[0] for n in chain)]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
    return WeightLayer(
        index=index, node_index=i, node_name=_node_name(node, i), op_type=node.op_type,
        weight_name=root_name, channel_axis=axis, weight_axis=_stored_axis(axis, len(view), chain),
        shape=view, weight_shape=tuple(root.dims),
        weight_dtype=onnx.helper.tensor_dtype_to_np_dtype(root.data_type).name,
        encoding=_encoding(chain, root), folded_bn=_folded_bn(node, root_name),
        shared=any(uses[t] > 1 for t in tensors), bias_name=bias,
        chain=tuple(n.op_type for n in chain), attrs=attrs)


_MIN_RANK = {"Conv": 3, "ConvTranspose": 3, "Gemm": 2, "MatMul": 1}


def _check_rank(node: onnx.NodeProto, view: tuple[int, ...]) -> None:
    """A weight the consumer cannot use (e.g. a 1-D Conv kernel) is a malformed file."""
    low = _MIN_RANK[node.op_type]
    if len(view) < low or (node.op_type == "Gemm" and len(view) != 2):
        want = "rank 2" if node.op_type == "Gemm" else f"rank >= {low}"
        raise GraphError(f"{node.op_type} node {node.name!r} has a weight of shape {view}; "
                         f"expected {want}: the model is malformed, export it again")


def _view_shape(dims: tuple[int, ...], chain: list[onnx.NodeProto]) -> tuple[int, ...]:
    shape = dims
    for node in reversed(chain):  # stored-first
        if node.op_type == "Transpose":
            shape = tuple(shape[p] for p in _perm(node, len(shape)))
    return shape


def layer_weight(model: onnx.ModelProto, layer: WeightLayer) -> np.ndarray:
    """The float32 weight the consumer sees (dequantizing qdq, int4 and codebook encodings)."""
    inits, prod = initializer_map(model), _producers(model)
    node = model.graph.node[layer.node_index]
    return _evaluate(node.input[1], prod, inits).astype(np.float32)


def _evaluate(name: str, prod: dict[str, onnx.NodeProto],
              inits: Mapping[str, onnx.TensorProto]) -> np.ndarray:
    if name in inits:
        return numpy_helper.to_array(inits[name])
    node = prod.get(name)
    if node is None:
        raise GraphError(f"tensor {name!r} is not a constant; it cannot be read as a weight")
    args = [_evaluate(i, prod, inits) if i else None for i in node.input]
    return _eval_node(node, args)


def _eval_node(node: onnx.NodeProto, args: list[Any]) -> np.ndarray:
    try:
        return _eval_op(node, args)
    except (ValueError, IndexError, KeyError, TypeError) as exc:  # numpy's AxisError included
        first = first_line(exc, 160)
        raise GraphError(f"cannot evaluate the weight chain at {node.op_type} node "
                         f"{node.name!r} ({first}); the model is malformed: export it again"
                         ) from None


def _eval_op(node: onnx.NodeProto, args: list[Any]) -> np.ndarray:
    attrs = _attrs(node)
    op = node.op_type
    if op == "Identity":
        return np.asarray(args[0])
    if op == "Transpose":
        return np.transpose(args[0], attrs.get("perm"))
    if op == "Cast":
        return np.asarray(args[0]).astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
    if op == "Gather":
        return np.take(args[0], np.asarray(args[1]).astype(np.int64), axis=attrs.get("axis", 0))
    if op == "Mul":
        return np.asarray(args[0] * args[1], dtype=np.float32)
    if op == "DequantizeLinear":
        return _dequantize_linear(args, attrs)
    raise GraphError(f"cannot evaluate {op} node {node.name!r} in a weight chain")


def _dequantize_linear(args: list[Any], attrs: Mapping[str, Any]) -> np.ndarray:
    x, scale = np.asarray(args[0]), np.asarray(args[1], np.float32)
    zp = np.asarray(args[2]).astype(np.float32) if len(args) > 2 and args[2] is not None else 0
    shape = [1] * x.ndim
    if scale.ndim == 1:
        shape[attrs.get("axis", 1) % x.ndim] = -1
    zp = np.reshape(zp, shape) if np.ndim(zp) == 1 else zp
    return (x.astype(np.float32) - zp) * scale.reshape(shape)  # float32, as ORT computes it
