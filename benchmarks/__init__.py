"""asyncflow's benchmark harness: asyncflow vs the bare floor vs Prefect, in one run.

Run it with ``python -m benchmarks`` (see ``benchmarks/README.md``). This package imports
nothing at import time on purpose: its child processes measure ``import asyncflow`` and
the Prefect side imports it with Prefect's interpreter, where asyncflow is not installed.
"""
