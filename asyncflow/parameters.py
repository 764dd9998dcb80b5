"""Binding call arguments to a signature and validating them with pydantic.

One `Signature` per decorated function. The pydantic validator is built on the first
validated call and reused: decoration stays cheap and `import asyncflow` does not pay
for pydantic's schema machinery.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

from asyncflow.exceptions import ParameterBindError, ParameterSizeError, ParameterTypeError

_P = inspect.Parameter


def callable_name(fn: Any) -> str:
    """The name of a function, of the function a `functools.partial` wraps, or of the class
    of a callable object."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__name__


class Signature:
    """A function's parameters: bind, validate, size-check, and rebuild the call."""

    __slots__ = (
        "_adapter",
        "_all_names",
        "_defaults",
        "_exact",
        "fn",
        "has_var_keyword",
        "has_var_positional",
        "names",
        "params",
        "plain",
        "sig",
    )

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.sig = inspect.signature(fn)
        self.params = self.sig.parameters
        self.names = set(self.params)
        self.has_var_keyword = any(p.kind is _P.VAR_KEYWORD for p in self.params.values())
        self.has_var_positional = any(p.kind is _P.VAR_POSITIONAL for p in self.params.values())
        self._adapter: Any = None
        self._exact: dict[str, type] = {}  # parameters annotated with a plain scalar type
        # Parameters that take a value by position or keyword, in order, when that is all
        # there is: `bind` then skips inspect's general (2-3x slower) binding, and a call
        # can pass every value by keyword.
        plain = all(p.kind is _P.POSITIONAL_OR_KEYWORD for p in self.params.values())
        self.plain: tuple[str, ...] | None = tuple(self.params) if plain else None
        self._all_names = frozenset(self.params)
        self._defaults = {
            name: p.default for name, p in self.params.items() if p.default is not _P.empty
        }

    # -- binding ------------------------------------------------------------------------------
    def bind(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[dict[str, Any], frozenset[str]]:
        """(parameter name -> value with defaults filled in, names the caller passed)."""
        plain = self.plain
        if plain is not None and not kwargs and len(args) == len(plain):
            # The common call, every parameter by position: `zip`'s `strict` keyword alone
            # would cost more than the rest, and the lengths are checked here.
            return dict(zip(plain, args)), self._all_names  # noqa: B905
        if plain is not None and len(args) <= len(plain):
            given = dict(zip(plain, args, strict=False))  # fewer args than parameters is fine
            if kwargs:
                keys = kwargs.keys()
                if keys - self.names or keys & given.keys():
                    plain = None  # unknown or doubled: inspect words the error
                given.update(kwargs)
            if plain is not None:
                if len(given) == len(plain):
                    return (given if not kwargs else _ordered(given, plain)), frozenset(given)
                filled = _with_defaults(given, plain, self._defaults)
                if filled is not None:
                    return filled, frozenset(given)
        # Anything unusual, errors included, takes inspect's path (and its messages).
        try:
            bound = self.sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise ParameterBindError(
                f"Error binding parameters for function '{callable_name(self.fn)}': {exc}.\n"
                f"Function '{callable_name(self.fn)}' has signature '{self.sig}' but received "
                f"args: {args} and kwargs: {list(kwargs)}."
            ) from None
        explicit = frozenset(bound.arguments)
        bound.apply_defaults()
        return dict(bound.arguments), explicit

    def not_mapped(self, explicit: frozenset[str], bound: bool) -> frozenset[str]:
        """Parameters `.map()` never iterates: defaults (not in `explicit`), `**kwargs`,
        and the instance of a bound method (the first parameter, when `bound`)."""
        names = [n for n, p in self.params.items() if n not in explicit or p.kind is _P.VAR_KEYWORD]
        if bound and self.params:
            names.append(next(iter(self.params)))
        return frozenset(names)

    def name_fields(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """`parameters` with a **kwargs entry spread out, for run-name templates."""
        if not self.has_var_keyword:
            return parameters
        spread: dict[str, Any] = {}
        named: dict[str, Any] = {}
        for key, value in parameters.items():
            param = self.params.get(key)
            if param is not None and param.kind is _P.VAR_KEYWORD and isinstance(value, dict):
                spread.update(value)
            else:
                named[key] = value
        return {**spread, **named}

    def to_call(self, parameters: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Positional and keyword arguments that reproduce `parameters` as a call."""
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        # Parameters before a *args must be passed by position, or *args could not follow.
        by_position = self.has_var_positional
        for name, p in self.params.items():
            if name not in parameters:
                by_position = False  # a gap: what follows can only go by keyword
                continue
            value = parameters[name]
            if p.kind is _P.VAR_POSITIONAL:
                args.extend(value)
                by_position = False
            elif p.kind is _P.VAR_KEYWORD:
                kwargs.update(value)
            elif p.kind is _P.POSITIONAL_ONLY or (
                by_position and p.kind is _P.POSITIONAL_OR_KEYWORD
            ):
                args.append(value)
            else:
                kwargs[name] = value
        return tuple(args), kwargs

    # -- validation ---------------------------------------------------------------------------
    def validate(
        self, parameters: dict[str, Any], explicit: frozenset[str], what: str
    ) -> dict[str, Any]:
        """Coerce the passed values to their annotations (defaults are taken as they are)."""
        adapter = self._adapter or self._build_adapter()
        # A value whose type is exactly its annotation's scalar type is valid as it is and
        # pydantic would return it unchanged: skipping the call saves ~1 µs per run.
        exact = self._exact
        for name in explicit:
            if exact.get(name) is not type(parameters[name]):
                return _validated(adapter, parameters, explicit, what)
        return parameters

    def json_schema(self) -> dict[str, Any]:
        """The parameters as a JSON schema: an object with a property per parameter (its
        type and JSON-able default) and the required ones (a deployment's schema)."""
        import json

        adapter = self._adapter or self._build_adapter()
        try:
            schema: dict[str, Any] = adapter.json_schema()
        except Exception:  # a type pydantic cannot describe: any value, by name
            schema = {"type": "object", "properties": {name: {} for name in self.params}}
        schema["title"] = "Parameters"
        properties = schema.setdefault("properties", {})
        for name, default in self._defaults.items():
            if name in properties:
                try:
                    json.dumps(default)
                except (TypeError, ValueError):
                    continue
                properties[name]["default"] = default
        schema["required"] = [
            name
            for name, p in self.params.items()
            if p.default is _P.empty and p.kind not in (_P.VAR_POSITIONAL, _P.VAR_KEYWORD)
        ]
        return schema

    def _build_adapter(self) -> Any:
        from pydantic import ConfigDict, TypeAdapter
        from typing_extensions import TypedDict

        try:
            hints = typing.get_type_hints(self.fn, include_extras=True)
        except Exception:  # unresolvable forward references: validate what we can
            hints = {}
        fields: dict[str, Any] = {}
        for name, p in self.params.items():
            ann = hints.get(name, Any)
            if p.kind is _P.VAR_POSITIONAL:
                ann = tuple[ann, ...]  # type: ignore[valid-type]
            elif p.kind is _P.VAR_KEYWORD:
                ann = dict[str, ann]  # type: ignore[valid-type]
            fields[name] = ann
            if isinstance(ann, type) and ann in _SCALARS:
                self._exact[name] = ann
        config = ConfigDict(arbitrary_types_allowed=True)

        def adapter_for(fields: dict[str, Any]) -> Any:
            make: Any = TypedDict
            td = make(f"{callable_name(self.fn)}_parameters", fields, total=False)
            td.__pydantic_config__ = config
            return TypeAdapter(td)

        try:
            adapter = adapter_for(fields)
        except Exception:
            # pydantic cannot build a schema for some annotation: pass that one through as is.
            for name, ann in list(fields.items()):
                try:
                    TypeAdapter(ann, config=config)
                except Exception:
                    fields[name] = Any
            adapter = adapter_for(fields)
        self._adapter = adapter
        return adapter


def _validated(
    adapter: Any, parameters: dict[str, Any], explicit: frozenset[str], what: str
) -> dict[str, Any]:
    """`parameters` with the passed values (`explicit`) validated by pydantic."""
    given = {k: v for k, v in parameters.items() if k in explicit}
    try:
        validated = adapter.validate_python(given)
    except Exception as exc:
        from pydantic import ValidationError

        if not isinstance(exc, ValidationError):
            raise
        errors = exc.errors(include_url=False)
        lines = "\n".join(
            f" - {'.'.join(str(part) for part in err['loc'])}: {err['msg']}" for err in errors
        )
        raise ParameterTypeError(
            f"{what} received invalid parameters:\n{lines}",
            [dict(e) for e in errors],
        ) from None
    return {**parameters, **validated}


# Comprehensions live in these helpers, not in `bind`, `validate`: one in a function makes
# closure cells of the names it reads on every call, even when it does not run.
def _ordered(given: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {n: given[n] for n in names}


def _with_defaults(
    given: dict[str, Any], names: tuple[str, ...], defaults: dict[str, Any]
) -> dict[str, Any] | None:
    """`given` completed from `defaults` in signature order, or None if a value is missing."""
    if not all(n in given or n in defaults for n in names):
        return None
    return {n: given[n] if n in given else defaults[n] for n in names}


_SCALARS = (int, float, str, bytes, bool)

_to_json: Callable[..., bytes] | None = None


def check_size(parameters: dict[str, Any], limit: int, what: str) -> None:
    """Raise ParameterSizeError when the JSON form of `parameters` exceeds `limit` bytes."""
    if not parameters:
        return
    global _to_json
    if _to_json is None:  # pydantic is imported on first use: keeps `import asyncflow` fast
        from pydantic_core import to_json

        _to_json = to_json
    try:
        size = len(_to_json(parameters, serialize_unknown=True))
    except ValueError:  # e.g. bytes that are not UTF-8: measure them as base64 instead
        size = len(_to_json(parameters, serialize_unknown=True, bytes_mode="base64"))
    if size > limit:
        raise ParameterSizeError(
            f"{what} parameters are {size / 1024:.1f} KB when serialized; the limit is "
            f"{limit / 1024:.0f} KB. Pass large data by reference (a path, a URL, a key)."
        )
