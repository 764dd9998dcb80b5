"""The CLI's own error: a one-line message for the user, exit status 2."""

from __future__ import annotations


class CLIError(Exception):
    """A usage or input problem, reported as `asyncflow: error: <message>` (exit 2)."""
