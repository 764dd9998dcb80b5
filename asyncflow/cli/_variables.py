"""`asyncflow variable set | get | ls | unset`: the variables kept in the run store."""

from __future__ import annotations

import argparse
import json

from asyncflow.cli._errors import CLIError
from asyncflow.cli._format import clip, dumps, table


def _value(text: str) -> object:
    """VALUE as JSON when it parses, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def run(args: argparse.Namespace) -> int:
    from asyncflow.variables import Variable, list_variables

    command = args.variable_command
    try:
        if command == "set":
            variable = Variable.set(
                args.name, _value(args.value), tags=args.tag, overwrite=args.overwrite
            )
            if args.json:
                print(dumps(variable.model_dump(mode="json")))
            return 0
        if command == "get":
            missing = object()
            value = Variable.get(args.name, missing)
            if value is missing:
                raise CLIError(f"no variable {args.name!r}")
            print(json.dumps(value) if args.json or not isinstance(value, str) else value)
            return 0
        if command == "unset":
            if not Variable.unset(args.name):
                raise CLIError(f"no variable {args.name!r}")
            return 0
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    variables = list_variables()
    if args.json:
        print(dumps([v.model_dump(mode="json") for v in variables]))
    elif not variables:
        print("No variables set.")
    else:
        rows = [[v.name, clip(json.dumps(v.value), 60), ", ".join(v.tags)] for v in variables]
        print(table(["NAME", "VALUE", "TAGS"], rows))
    return 0
