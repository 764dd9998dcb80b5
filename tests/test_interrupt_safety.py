"""A sync run's timeout or cancellation never lands inside logging (issue 13, point 12).

An exception raised in a worker thread between a logging handler's `acquire()` and the
`try` that releases it left the lock held: every later log call in the process hung (seen
once in three runs of a large suite). One raised inside `emit`, or in `LogRecord`'s own
`except Exception`, was swallowed and the run never stopped. The load test below hung on
every run before the fix (2,000 chatty task runs; 400 were enough).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

LOAD_SCRIPT = """
import io, logging, sys, threading
from asyncflow import flow, task
from asyncflow.states import StateType

log = logging.getLogger("chatty")
log.propagate = False
handler = logging.StreamHandler(io.StringIO())
log.addHandler(handler)
log.setLevel(logging.INFO)

@task(timeout_seconds=0.003)
def chatty(i):
    while True:  # nothing but logging: the interrupt can only land in or around it
        log.info("line %d", i)

@flow
def inline(n):  # the main thread: SIGALRM
    return [chatty(i, return_state=True).type for i in range(n)]

@flow
def submitted(n):  # worker threads: asynchronous exceptions
    futures = [chatty.submit(i) for i in range(n)]
    return [f.state.type for f in futures if f.wait() is None]

done = threading.Event()
types = []
def main():
    types.extend(inline(int(sys.argv[1])))
    types.extend(submitted(int(sys.argv[2])))
    done.set()

threading.Thread(target=main, daemon=True).start()
if not done.wait(90):
    import faulthandler
    faulthandler.dump_traceback(all_threads=True)
    print("HANG", handler.lock, flush=True)
    import os
    os._exit(3)
print("lock free" if handler.lock.acquire(blocking=False) else "LOCK HELD")
print(sorted({t.value for t in types}), len(types))
"""


def _load(tmp_path: Any, inline: int, submitted: int, in_main_thread: bool = False) -> list[str]:
    """Run the load script in a fresh process; its last two output lines."""
    script = tmp_path / "load.py"
    text = LOAD_SCRIPT
    if in_main_thread:
        text = text.replace("threading.Thread(target=main, daemon=True).start()\n", "main()\n")
    script.write_text(text)
    env = {**os.environ, "ASYNCFLOW_STORE": "memory", "ASYNCFLOW_LOGGING_LEVEL": "CRITICAL"}
    result = subprocess.run(
        [sys.executable, str(script), str(inline), str(submitted)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-2:]


def test_timeouts_under_heavy_logging_never_hang_or_leak_a_lock(tmp_path: Any) -> None:
    # every run ended TimedOut (type FAILED), and the handler's lock is free
    assert _load(tmp_path, 0, 2000) == ["lock free", "['FAILED'] 2000"]


def test_main_thread_timeouts_under_heavy_logging(tmp_path: Any) -> None:
    """The same in the main thread, where SIGALRM delivers the interrupt: held back while
    the thread holds a logging lock, the signal comes again a moment later."""
    assert _load(tmp_path, 300, 0, in_main_thread=True) == ["lock free", "['FAILED'] 300"]
