"""A value that refuses to be pickled in the flow's process (whose pid Ray's workers get in
ASYNCFLOW_TEST_FLOW_PID): a consumer that gets one was given Ray's copy. Workers import
this module by name, so it is not part of a test module."""

from __future__ import annotations

import os
from typing import Any


class Big:
    def __init__(self, size: int) -> None:
        self.data = b"x" * size

    def __reduce__(self) -> Any:
        if str(os.getpid()) == os.environ.get("ASYNCFLOW_TEST_FLOW_PID"):
            raise RuntimeError("the flow's copy of a kept result was sent to Ray")
        return (Big, (len(self.data),))
