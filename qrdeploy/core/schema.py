"""A small JSON Schema validator for the subset qrdeploy's shipped schemas use, so that loading a
results file needs no third-party package (the tests check it agrees with `jsonschema`).

Supported keywords: type, properties, required, additionalProperties (bool or schema), items,
enum, const, minimum, maximum, minItems, pattern, $ref to "#/$defs/NAME", anyOf."""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


@cache
def load_schema(name: str) -> dict[str, Any]:
    """A schema shipped in qrdeploy/schemas/ (e.g. 'results.schema.json')."""
    text = resources.files("qrdeploy").joinpath("schemas", name).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _is(value: Any, name: str) -> bool:
    if isinstance(value, bool) and name in ("integer", "number"):
        return False
    return isinstance(value, _TYPES[name])


def errors(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str = "$") -> list[str]:
    """Every violation of `schema` by `value`, as 'path: problem' strings (empty when valid)."""
    if "$ref" in schema:
        return errors(value, root["$defs"][schema["$ref"].split("/")[-1]], root, path)
    if "anyOf" in schema:
        if any(not errors(value, s, root, path) for s in schema["anyOf"]):
            return []
        return [f"{path}: matches none of the allowed forms"]
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_is(value, t) for t in names):
            return [f"{path}: expected {'/'.join(names)}, got {type(value).__name__}"]
    out = _scalar(value, schema, path)
    if isinstance(value, dict):
        out += _object(value, schema, root, path)
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            out.append(f"{path}: expected at least {schema['minItems']} items")
        if "items" in schema:
            for i, v in enumerate(value):
                out += errors(v, schema["items"], root, f"{path}[{i}]")
    return out


def _scalar(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    out = []
    if "const" in schema and value != schema["const"]:
        out.append(f"{path}: expected {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{path}: expected one of {schema['enum']}, got {value!r}")
    if _is(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{path}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{path}: {value} is above the maximum {schema['maximum']}")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        out.append(f"{path}: {value[:40]!r} does not match {schema['pattern']}")
    return out


def _object(value: dict[str, Any], schema: dict[str, Any], root: dict[str, Any],
            path: str) -> list[str]:
    out = [f"{path}: missing key {k!r}" for k in schema.get("required", []) if k not in value]
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for k, v in value.items():
        if k in props:
            out += errors(v, props[k], root, f"{path}.{k}")
        elif extra is False:
            out.append(f"{path}: unexpected key {k!r}")
        elif isinstance(extra, dict):
            out += errors(v, extra, root, f"{path}.{k}")
    return out
