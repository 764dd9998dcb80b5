"""Import time: ``python -m benchmarks.side_import MODULE[,MODULE...]`` in a fresh process.

Imports nothing but `sys` and `time` before the timed import (the result protocol's `json`
comes after), so the figure is a cold import. One interpreter serves all three sides:
``asyncflow``; the floor ``anyio,pydantic,sniffio``; ``prefect``.
"""

import sys
import time

if __name__ == "__main__":
    names = sys.argv[1].split(",")
    start = time.perf_counter()
    for name in names:
        __import__(name)
    seconds = time.perf_counter() - start
    version = getattr(sys.modules[names[0]], "__version__", None)

    from benchmarks._measure import emit

    emit({"seconds": seconds, "version": version})
