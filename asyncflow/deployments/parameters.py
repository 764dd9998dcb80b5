"""A deployment's parameters checked against the JSON schema stored with it.

`run_deployment` may run where the flow cannot be imported (another machine, a CLI), so it
checks parameters against the schema the serving process stored (`Signature.json_schema`,
made by pydantic), before the run is queued. This covers the JSON Schema keywords pydantic
writes for parameters (types, `enum`/`const`, `anyOf`/`oneOf`/`allOf`, `$ref` into
`$defs`, object properties, array items, numeric and length bounds, `pattern`); other
keywords (`format`...) are not checked here: the serving process validates each run with
pydantic again when it starts it.
"""

from __future__ import annotations

import math
import re
from typing import Any

_TYPES: dict[str, Any] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer())
    ),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def check_parameters(schema: dict[str, Any], parameters: dict[str, Any], what: str) -> None:
    """Raise ParameterBindError (unknown or missing names) or ParameterTypeError (a value
    the schema refuses, every one listed) for JSON-able `parameters`."""
    from asyncflow.exceptions import ParameterBindError, ParameterTypeError

    properties = schema.get("properties", {})
    if schema.get("additionalProperties") is False:
        unknown = sorted(set(parameters) - set(properties))
        if unknown:
            raise ParameterBindError(
                f"{what} has no parameter(s) {', '.join(map(repr, unknown))}; "
                f"its parameters: {', '.join(properties) or 'none'}."
            )
    missing = [name for name in schema.get("required", ()) if name not in parameters]
    if missing:
        raise ParameterBindError(
            f"{what} needs the parameter(s) {', '.join(map(repr, missing))}, which have no default."
        )
    errors: list[str] = []
    for name, value in parameters.items():
        if name in properties:
            _check(properties[name], value, f"parameter {name!r}", schema, errors)
    if errors:
        raise ParameterTypeError(
            f"{what}: invalid parameters: " + "; ".join(errors),
            [{"msg": error} for error in errors],
        )


def _check(node: Any, value: Any, where: str, root: dict[str, Any], errors: list[str]) -> None:
    """Append to `errors` what makes `value` invalid for schema `node`."""
    if not isinstance(node, dict) or not node:
        return
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        _check(target, value, where, root, errors)
    for key in ("anyOf", "oneOf"):
        options = node.get(key)
        if options and not any(_valid(o, value, root) for o in options):
            errors.append(f"{where}: {value!r} matches none of the allowed types")
            return
    for sub in node.get("allOf", ()):
        _check(sub, value, where, root, errors)
    kind = node.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_TYPES.get(k, lambda v: True)(value) for k in kinds):
            errors.append(f"{where}: {value!r} is not of type {' or '.join(kinds)}")
            return
    if "enum" in node and value not in node["enum"]:
        allowed = ", ".join(map(repr, node["enum"]))
        errors.append(f"{where}: {value!r} is not one of {allowed}")
    if "const" in node and value != node["const"]:
        errors.append(f"{where}: {value!r} is not {node['const']!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        _bounds(node, value, where, errors)
    if isinstance(value, str):
        _string(node, value, where, errors)
    if isinstance(value, list):
        _array(node, value, where, root, errors)
    if isinstance(value, dict):
        _object(node, value, where, root, errors)


def _valid(node: Any, value: Any, root: dict[str, Any]) -> bool:
    found: list[str] = []
    _check(node, value, "", root, found)
    return not found


def _bounds(node: dict[str, Any], value: float, where: str, errors: list[str]) -> None:
    for key, sign, words in (
        ("minimum", -1, "less than"),
        ("maximum", 1, "greater than"),
        ("exclusiveMinimum", -1, "not greater than"),
        ("exclusiveMaximum", 1, "not less than"),
    ):
        bound = node.get(key)
        if not isinstance(bound, (int, float)):
            continue
        over = (value - bound) * sign
        if over > 0 or (over == 0 and key.startswith("exclusive")):
            errors.append(f"{where}: {value!r} is {words} {bound!r}")


def _string(node: dict[str, Any], value: str, where: str, errors: list[str]) -> None:
    if "minLength" in node and len(value) < node["minLength"]:
        errors.append(f"{where}: {value!r} is shorter than {node['minLength']} characters")
    if "maxLength" in node and len(value) > node["maxLength"]:
        errors.append(f"{where}: {value!r} is longer than {node['maxLength']} characters")
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        try:
            matched = re.search(pattern, value) is not None
        except re.error:  # (a pattern Python's re cannot read: pydantic checks it later)
            matched = True
        if not matched:
            errors.append(f"{where}: {value!r} does not match {pattern!r}")


def _array(
    node: dict[str, Any], value: list[Any], where: str, root: dict[str, Any], errors: list[str]
) -> None:
    if "minItems" in node and len(value) < node["minItems"]:
        errors.append(f"{where}: has fewer than {node['minItems']} items")
    if "maxItems" in node and len(value) > node["maxItems"]:
        errors.append(f"{where}: has more than {node['maxItems']} items")
    prefix = node.get("prefixItems", [])
    for i, item in enumerate(value):
        sub = prefix[i] if i < len(prefix) else node.get("items")
        _check(sub, item, f"{where}[{i}]", root, errors)


def _object(
    node: dict[str, Any], value: dict[str, Any], where: str, root: dict[str, Any], errors: list[str]
) -> None:
    properties = node.get("properties", {})
    for name in node.get("required", ()):
        if name not in value:
            errors.append(f"{where}: field {name!r} is required")
    extra = node.get("additionalProperties")
    for key, item in value.items():
        if key in properties:
            _check(properties[key], item, f"{where}.{key}", root, errors)
        elif extra is False:
            errors.append(f"{where}: field {key!r} is not allowed")
        elif isinstance(extra, dict):
            _check(extra, item, f"{where}.{key}", root, errors)


__all__ = ["check_parameters"]
