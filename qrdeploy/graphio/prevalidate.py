"""Pure-Python checks of an untrusted ONNX file before onnx.checker or onnxruntime (both C++,
both able to crash or exhaust memory on a hostile file) see it (docs/design.md, decision 8).

The file is parsed with protobuf only; then every tensor (initializers, Constant / attribute
tensors, sparse tensors, in every subgraph and function) is checked: a known data type, dims >= 0
whose product (exact Python int) is within `Limits.max_tensor_elements`, inline data whose size
matches shape and dtype, external data whose location stays in the model's folder (no '..' out,
no absolute path, no symbolic link, a regular file) and whose offset + length fit the real
file. Graph sizes (nodes, initializers, total tensor bytes, subgraph nesting) are checked against
`Limits`. Nothing is allocated from a declared size: only numbers are compared.

Example:
    model = prevalidate_file("model.onnx", Limits(max_total_bytes=2**30))
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import onnx
from google.protobuf.message import Message
from onnx import AttributeProto, TensorProto

from qrdeploy.errors import ConfigError, GraphError

_GIB = 2**30


@dataclass(frozen=True)
class Limits:
    """What an ONNX file may declare. All values are qrdeploy's [DEFAULT]s, sized for image
    classifiers (the paper's largest, WRN-32-10, has 46 M parameters, 0.2 GB)."""

    max_file_bytes: int = 2**31 - 1  # the .onnx file itself: protobuf's 2 GB ceiling
    max_total_bytes: int = 32 * _GIB  # all tensor data, inline and external
    max_tensor_elements: int = 2**33  # product of one tensor's dims
    max_rank: int = 16
    max_nodes: int = 1_000_000  # all graphs, subgraphs and functions together
    max_initializers: int = 1_000_000
    max_depth: int = 8  # nesting of subgraphs (If / Loop / Scan bodies)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"Limits.{f.name} must be an integer >= 1, got {value!r}")


# Bits per element; STRING has no fixed size (None).
_BITS: dict[str, int | None] = {
    "FLOAT": 32, "UINT8": 8, "INT8": 8, "UINT16": 16, "INT16": 16, "INT32": 32, "INT64": 64,
    "STRING": None, "BOOL": 8, "FLOAT16": 16, "DOUBLE": 64, "UINT32": 32, "UINT64": 64,
    "COMPLEX64": 64, "COMPLEX128": 128, "BFLOAT16": 16, "FLOAT8E4M3FN": 8, "FLOAT8E4M3FNUZ": 8,
    "FLOAT8E5M2": 8, "FLOAT8E5M2FNUZ": 8, "UINT4": 4, "INT4": 4, "FLOAT4E2M1": 4,
    "FLOAT8E8M0": 8, "UINT2": 2, "INT2": 2, "FLOAT6E2M3": 6, "FLOAT6E3M2": 6,
}
_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data",
                 "uint64_data")
_FIELD_OF = {"FLOAT": "float_data", "COMPLEX64": "float_data", "STRING": "string_data",
             "INT64": "int64_data", "DOUBLE": "double_data", "COMPLEX128": "double_data",
             "UINT32": "uint64_data", "UINT64": "uint64_data"}  # the rest: int32_data
_EXTERNAL_KEYS = {"location", "offset", "length", "checksum"}


# ---------------------------------------------------------------- files


def parse_file(path: str | os.PathLike[str], limits: Limits | None = None) -> onnx.ModelProto:
    """Parse an .onnx file with protobuf only, refusing files above Limits.max_file_bytes
    before reading them."""
    limits = limits or Limits()
    path = Path(path)
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise GraphError(f"{path} is {size:,} bytes, above the limit of "
                         f"{limits.max_file_bytes:,}; keep large weights in external data")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf's DecodeError, or RuntimeWarning / ValueError on junk
        raise GraphError(
            f"{path} is not a readable ONNX file ({type(exc).__name__}); it may be truncated or "
            "not ONNX: export it again") from None
    return model


def prevalidate_file(path: str | os.PathLike[str], limits: Limits | None = None
                     ) -> onnx.ModelProto:
    """parse_file, then prevalidate against the file's folder; an error names the file (a command
    may read several models)."""
    try:
        model = parse_file(path, limits)
        prevalidate(model, Path(path).parent, limits)
    except GraphError as exc:
        if str(path) in str(exc):
            raise
        raise GraphError(f"{path}: {exc}") from exc
    return model


# ---------------------------------------------------------------- the walk


@dataclass
class _Tally:
    """Running totals over the whole model, checked as they grow so a huge file stops early."""

    limits: Limits
    nodes: int = 0
    initializers: int = 0
    total_bytes: int = 0

    def add(self, what: str, amount: int) -> None:
        value = getattr(self, what) + amount
        setattr(self, what, value)
        limit = getattr(self.limits, f"max_{what}")
        if value > limit:
            label = what.replace("_", " ")
            raise GraphError(f"the model declares more than {limit:,} {label} (Limits.max_{what});"
                             " it is not a classifier qrdeploy handles, or the file is hostile")


def prevalidate(model: onnx.ModelProto, folder: str | os.PathLike[str],
                limits: Limits | None = None) -> None:
    """Check a parsed model's declared sizes and external data (relative to `folder`) before
    any C++ code or allocation sees them; raises GraphError with a one-line reason."""
    limits = limits or Limits()
    if not model.HasField("graph"):
        raise GraphError("the file has no graph (no graph nodes); it is not an ONNX model")
    _check_text(model)
    tally = _Tally(limits)
    base = Path(folder).resolve()
    for t in _tensors(model, tally):
        _check_tensor(t, base, limits, tally)


def _check_text(msg: Message) -> None:
    """Every string field must be text: protobuf hands invalid UTF-8 in ONNX's proto2 string
    fields back as bytes, which then fails far away (metadata keys, node names)."""
    for fd, value in msg.ListFields():
        if fd.type not in (fd.TYPE_STRING, fd.TYPE_MESSAGE):
            continue
        for v in value if fd.is_repeated else (value,):
            if fd.type == fd.TYPE_MESSAGE:
                _check_text(v)
            elif not isinstance(v, str):
                raise GraphError(f"the {type(msg).__name__}.{fd.name} field holds bytes that are "
                                 "not UTF-8 text; the file is corrupt: export it again")


def _tensors(model: onnx.ModelProto, tally: _Tally) -> Iterator[TensorProto]:
    yield from _graph_tensors(model.graph, 0, tally)
    for fn in model.functions:
        yield from _node_tensors(fn.node, 1, tally)


def _graph_tensors(g: onnx.GraphProto, depth: int, tally: _Tally) -> Iterator[TensorProto]:
    if depth > tally.limits.max_depth:
        raise GraphError(f"subgraphs are nested deeper than {tally.limits.max_depth} "
                         "(Limits.max_depth); the file is not a classifier qrdeploy handles")
    tally.add("initializers", len(g.initializer) + len(g.sparse_initializer))
    for v in (*g.input, *g.output, *g.value_info):
        _check_value_info(v, tally.limits)
    yield from g.initializer
    for sp in g.sparse_initializer:
        yield from _sparse(sp, tally.limits)
    yield from _node_tensors(g.node, depth, tally)


def _node_tensors(nodes: Sequence[onnx.NodeProto], depth: int, tally: _Tally
                  ) -> Iterator[TensorProto]:
    tally.add("nodes", len(nodes))
    for node in nodes:
        for a in node.attribute:
            yield from _attribute_tensors(a, depth, tally)


def _attribute_tensors(a: AttributeProto, depth: int, tally: _Tally) -> Iterator[TensorProto]:
    # every field is walked whatever `a.type` says: a hostile file may set both
    if a.HasField("t"):
        yield a.t
    yield from a.tensors
    if a.HasField("sparse_tensor"):
        yield from _sparse(a.sparse_tensor, tally.limits)
    for sp in a.sparse_tensors:
        yield from _sparse(sp, tally.limits)
    if a.HasField("g"):
        yield from _graph_tensors(a.g, depth + 1, tally)
    for sub in a.graphs:
        yield from _graph_tensors(sub, depth + 1, tally)


def _sparse(sp: onnx.SparseTensorProto, limits: Limits) -> Iterator[TensorProto]:
    _elements(list(sp.dims), f"sparse tensor {sp.values.name!r}", limits)
    yield sp.values
    yield sp.indices


def _check_value_info(v: onnx.ValueInfoProto, limits: Limits) -> None:
    if not v.type.HasField("tensor_type") or not v.type.tensor_type.HasField("shape"):
        return
    dims = v.type.tensor_type.shape.dim
    if len(dims) > limits.max_rank:
        raise GraphError(f"value {v.name!r} has rank {len(dims)}, above Limits.max_rank "
                         f"{limits.max_rank}")
    bad = [d.dim_value for d in dims if d.HasField("dim_value") and d.dim_value < 0]
    if bad:
        raise GraphError(f"value {v.name!r} declares a negative dimension {bad[0]}; "
                         "dimensions must be >= 0")


# ---------------------------------------------------------------- one tensor


def _elements(dims: list[int], what: str, limits: Limits) -> int:
    if len(dims) > limits.max_rank:
        raise GraphError(f"{what} has rank {len(dims)}, above Limits.max_rank {limits.max_rank}")
    if any(d < 0 for d in dims):
        raise GraphError(f"{what} declares dims {dims[:8]}; dimensions must be >= 0")
    n = math.prod(dims)  # exact: Python ints do not overflow
    if n > limits.max_tensor_elements:
        raise GraphError(f"{what} declares {n:,} elements (dims {dims[:8]}), above "
                         f"Limits.max_tensor_elements {limits.max_tensor_elements:,}")
    return n


def _dtype_name(t: TensorProto) -> str:
    name = TensorProto.DataType.Name(t.data_type) if t.data_type in _CODES else "?"
    if name not in _BITS:
        raise GraphError(f"tensor {t.name!r} has data type {t.data_type}, which is not a "
                         "known ONNX tensor type; export the model again")
    return name


_CODES = set(TensorProto.DataType.values()) - {TensorProto.UNDEFINED}


def _check_tensor(t: TensorProto, base: Path, limits: Limits, tally: _Tally) -> None:
    what = f"tensor {t.name!r}"
    n = _elements(list(t.dims), what, limits)
    name = _dtype_name(t)
    bits = _BITS[name]
    nbytes = -(-n * bits // 8) if bits is not None else 0
    if t.data_location == TensorProto.EXTERNAL:
        _check_external(t, base, nbytes if bits is not None else None)
    elif t.data_location != TensorProto.DEFAULT:
        raise GraphError(f"{what} has data_location {t.data_location}; expected 0 (inline) "
                         "or 1 (external)")
    else:
        _check_inline(t, name, n, bits)
    tally.add("total_bytes", nbytes if bits is not None else len(t.SerializeToString()))


def _check_inline(t: TensorProto, name: str, n: int, bits: int | None) -> None:
    what = f"tensor {t.name!r} ({name}, dims {list(t.dims)[:8]})"
    present = [f for f in _TYPED_FIELDS if len(getattr(t, f))]
    if t.HasField("raw_data"):
        if present or bits is None:
            raise GraphError(f"{what} mixes raw_data with typed data or is a STRING; "
                             "export the model again")
        want = -(-n * bits // 8)
        if len(t.raw_data) != want:
            raise GraphError(f"{what} holds {len(t.raw_data):,} bytes of raw_data, expected "
                             f"{want:,} from its shape; the file is corrupt")
        return
    field = _FIELD_OF.get(name, "int32_data")
    if any(f != field for f in present):
        raise GraphError(f"{what} stores its values in {present}, expected {field}")
    count = len(getattr(t, field))
    per = 2 if name.startswith("COMPLEX") else 1
    allowed = {n * per} | ({-(-n * bits // 32), -(-n * bits // 8)} if bits and bits < 8 else set())
    if count not in allowed:
        raise GraphError(f"{what} holds {count:,} values in {field}, expected {n * per:,}; "
                         "the file is corrupt")


def _external_entries(t: TensorProto) -> dict[str, str]:
    entries: dict[str, str] = {}
    for e in t.external_data:
        if e.key not in _EXTERNAL_KEYS and not (e.key == "basepath" and not e.value):
            raise GraphError(f"tensor {t.name!r} has external-data key {e.key[:40]!r}; "
                             f"allowed: {', '.join(sorted(_EXTERNAL_KEYS))}")
        entries[e.key] = e.value
    return entries


def _int_entry(t: TensorProto, entries: dict[str, str], key: str) -> int | None:
    raw = entries.get(key)
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 20:
        raise GraphError(f"tensor {t.name!r} has external-data {key} {raw[:40]!r}; expected a "
                         "non-negative integer")
    return int(raw)


def _check_external(t: TensorProto, base: Path, nbytes: int | None) -> None:
    if nbytes is None:
        raise GraphError(f"STRING tensor {t.name!r} cannot live in external data")
    if t.HasField("raw_data") or any(len(getattr(t, f)) for f in _TYPED_FIELDS):
        raise GraphError(f"tensor {t.name!r} is external but also holds inline data; the file "
                         "is corrupt")
    entries = _external_entries(t)
    target = data_file(t.name, entries.get("location", ""), base)
    offset = _int_entry(t, entries, "offset") or 0
    length = _int_entry(t, entries, "length")
    size = target.stat().st_size
    stored = size - offset if length is None else length
    if offset > size or (length is not None and offset + length > size):
        raise GraphError(f"tensor {t.name!r} reads bytes {offset:,}..{offset + (length or 0):,}"
                         f" of {target.name}, which has {size:,}; the data file is truncated")
    if stored != nbytes:
        raise GraphError(f"tensor {t.name!r} declares {stored:,} bytes of external data, "
                         f"expected {nbytes:,} from its shape; the file is corrupt")


def external_files(path: str | os.PathLike[str]) -> list[Path]:
    """The external data files a model file's initializers name, each checked by `data_file`
    (the one place external-data names are checked), in first-use order."""
    p = Path(path)
    model = parse_file(p)
    base = p.resolve().parent
    out: dict[Path, None] = {}
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            out[data_file(t.name, _external_entries(t).get("location", ""), base)] = None
    return list(out)


def data_file(tensor: str, location: str, base: Path) -> Path:
    """The external data file of a tensor, refused unless it is a regular file inside `base`
    (the resolved model folder): no '..' out, no absolute path, no symlink."""
    if not location or "\x00" in location or Path(location).is_absolute() \
            or location.startswith(("/", "\\")) or ":" in location:
        raise _outside(tensor, location, base)
    try:
        target = (base / location).resolve()  # follows symlinks: a link out is refused here
        linked = _has_symlink(base, location)
    except (OSError, RuntimeError) as exc:  # name too long, symlink loop
        raise GraphError(f"external data location {location[:80]!r} of tensor {tensor!r} "
                         f"cannot be resolved ({type(exc).__name__}); the file is corrupt"
                         ) from None
    if not target.is_relative_to(base) or target == base:
        raise _outside(tensor, location, base)
    if linked:  # onnx refuses them too; say so before it does
        raise GraphError(f"external data {location[:80]!r} of tensor {tensor!r} goes through a "
                         "symbolic link; copy the data file itself beside the .onnx file")
    try:
        mode = target.stat().st_mode
    except OSError:
        mode = 0
    if not stat.S_ISREG(mode):  # missing, a folder, or a FIFO / device that would block a read
        raise GraphError(f"external data file {location!r} of tensor {tensor!r} is missing "
                         "or not a regular file; copy it beside the .onnx file")
    return target


def _has_symlink(base: Path, location: str) -> bool:
    p = base
    for part in Path(location).parts:
        p = p / part
        if p.is_symlink():
            return True
    return False


def _outside(tensor: str, location: str, base: Path) -> GraphError:
    return GraphError(f"tensor {tensor!r} points to external data {location[:80]!r} outside the "
                      f"model's folder {base}; keep the data file beside the .onnx file")


def file_bytes(path: str | Path) -> int:
    """Size of an ONNX file plus the external-data files its initializers name (each checked as
    above: inside the model's folder, a regular file)."""
    p = Path(path)
    return p.stat().st_size + sum(f.stat().st_size for f in external_files(p))
