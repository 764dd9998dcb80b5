"""Names: flow-name slugs, generated run names, run-name templates."""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping
from typing import Any

from asyncflow.exceptions import FlowRunNameError, InvalidDefinitionError

_NON_SLUG = re.compile(r"[^a-z0-9]+")


def slugify(name: str) -> str:
    """``get_repo_info`` -> ``get-repo-info``; names with no slug-able characters stay as is."""
    slug = _NON_SLUG.sub("-", name.lower()).strip("-")
    return slug or name


_generate: Callable[[], str] | None = None


def generate_run_name() -> str:
    """An adjective-animal name such as ``sage-mongoose``."""
    global _generate
    if _generate is None:  # coolname is imported on first use: keeps `import asyncflow` fast
        _generate = _name_generator()
    return _generate()


def _name_generator() -> Callable[[], str]:
    """coolname's two-word names, drawn with two `random.choice` calls.

    coolname's `generate_slug(2)` walks its nested word lists on every call (~6 µs, a tenth
    of an async flow run). Its two-word pattern is one product, adjectives x animals, so
    drawing one word from each list, with its rule that the two words differ in their first
    four letters, gives the same names for well under a microsecond. The lists come from
    coolname's default generator; should their layout ever change, its `generate_slug` is
    used as it is.
    """
    import random

    import coolname

    try:
        (product,) = coolname._default._lists[2]._lists  # type: ignore[attr-defined]
        first, second = (list(words) for words in product._lists)
        if not (first and second and all(isinstance(w, str) for w in first + second)):
            raise ValueError("unexpected word lists")
    except Exception:
        return lambda: str(coolname.generate_slug(2))
    # `int(random() * n)` instead of `random.choice`: one C call instead of three Python
    # frames, with a bias (n / 2**53) far below anything a run name could show.
    rand = random.random
    n_first, n_second = len(first), len(second)

    def draw() -> str:
        while True:
            a, b = first[int(rand() * n_first)], second[int(rand() * n_second)]
            if a[:4] != b[:4]:
                return f"{a}-{b}"

    return draw


RunName = str | Callable[[], str] | None


def template_fields(template: str) -> set[str]:
    """Top-level names a ``str.format`` template refers to (``{date:%A}`` -> ``date``)."""
    fields: set[str] = set()
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InvalidDefinitionError(f"Run name template {template!r} is malformed: {exc}") from exc
    for _, field, _, _ in parsed:
        if field is None:
            continue
        root = re.split(r"[.\[]", field, maxsplit=1)[0]
        if root == "" or root.isdigit():
            raise InvalidDefinitionError(
                f"Run name template {template!r} uses a positional field; name the parameter, "
                "e.g. '{name}'."
            )
        fields.add(root)
    return fields


def check_template(
    template: RunName, parameter_names: set[str], accepts_any: bool, what: str
) -> None:
    """Fail at decoration time when a template names a parameter the function does not have."""
    if template is None or callable(template):
        return
    if not isinstance(template, str):
        raise InvalidDefinitionError(
            f"Expected string or callable for '{what}'; got {type(template).__name__} instead."
        )
    missing = template_fields(template) - parameter_names
    if missing and not accepts_any:
        raise InvalidDefinitionError(
            f"{what} {template!r} refers to {', '.join(sorted(missing))}, which "
            f"{'is not a parameter' if len(missing) == 1 else 'are not parameters'} of the "
            f"function (parameters: {', '.join(sorted(parameter_names)) or 'none'})."
        )


def render_run_name(template: RunName, parameters: Mapping[str, Any], what: str) -> str | None:
    """The run name from a template or callable; None when no template is set."""
    if template is None:
        return None
    try:
        name = template() if callable(template) else template.format(**parameters)
    except KeyError as exc:
        raise FlowRunNameError(
            f"{what} {template!r} refers to missing parameter {exc.args[0]!r}."
        ) from exc
    except Exception as exc:
        raise FlowRunNameError(f"{what} {template!r} could not be rendered: {exc!r}") from exc
    if not isinstance(name, str):
        raise FlowRunNameError(
            f"Callable {template!r} for '{what}' returned type {type(name).__name__} but a "
            "string is required."
        )
    return name
