"""What every child process shares: timing, RSS readings and the result protocol.

Stdlib only, and only cheap modules at import time: the Prefect child imports this module
with Prefect's interpreter, and the import-time workload must not have its figure lowered by
modules we loaded first (so `json` is imported when the result is written, not here).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

RESULT_MARKER = "BENCH_RESULT "

Result = dict[str, Any]
Workload = Callable[[int, int], Result]


def best_of(repeats: int, run: Callable[[], float]) -> float:
    """The fastest of `repeats` runs: the least disturbed by other load on a shared machine."""
    return min(run() for _ in range(max(1, repeats)))


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of `fn` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def per_item(seconds: float, n: int, **extra: Any) -> Result:
    """A result whose headline figure is microseconds per item."""
    return {"seconds": seconds, "per_item_us": seconds / n * 1e6, **extra}


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """Current resident set size (Linux /proc; elsewhere the peak is the best we have)."""
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def emit(result: Result) -> None:
    """Hand the result to the harness: one marked JSON line on stdout."""
    import json

    result.setdefault("peak_rss_bytes", peak_rss_bytes())
    result["emitted_at"] = time.time()
    sys.stdout.write(RESULT_MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()


def child_main(workloads: dict[str, Workload], hard_exit: bool = False) -> None:
    """Entry point of a child: ``python -m benchmarks.side_x WORKLOAD N REPEATS``.

    `hard_exit` ends the process right after the result is written. The Prefect side uses it
    for workloads whose figure is already taken, because tearing down Prefect's temporary
    server can take longer than the workload itself and says nothing about it.
    """
    name, n, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    try:
        workload = workloads[name]
    except KeyError:
        sys.exit(f"unknown workload {name!r}; known: {', '.join(sorted(workloads))}")
    emit(workload(n, repeats))
    if hard_exit:
        sys.stderr.flush()
        os._exit(0)
