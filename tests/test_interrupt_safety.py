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

from asyncflow import flow, task

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


# -- what a review of the first version found ---------------------------------------------------
AS_COMPLETED_SCRIPT = """
import time
from asyncflow import as_completed, flow, task

@task
def slow():
    for _ in range(60):  # slices: the cancellation reaches it between them
        time.sleep(0.01)

@flow(timeout_seconds=0.2)
def waits():
    for _ in as_completed([slow.submit()]):
        pass

started = time.monotonic()
state = waits(return_state=True)
print(state.name, round(time.monotonic() - started, 1))
time.sleep(0.3)  # a retry SIGALRM left over from the held-back interrupt ended the process
print("survived")
"""


def test_a_wait_in_as_completed_is_interrupted_and_no_stray_alarm_follows(tmp_path: Any) -> None:
    """The wait inside `as_completed` (asyncflow code) held the interrupt back until the child
    finished, and the retry SIGALRM armed meanwhile arrived after the run: 'Alarm clock'."""
    script = tmp_path / "waits.py"
    script.write_text(AS_COMPLETED_SCRIPT)
    env = {**os.environ, "ASYNCFLOW_STORE": "memory", "ASYNCFLOW_LOGGING_LEVEL": "CRITICAL"}
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    name, seconds = result.stdout.split()[:2]
    assert name == "TimedOut" and float(seconds) < 0.5
    assert result.stdout.strip().endswith("survived")


def test_a_pool_shrinks_back_to_its_limit_after_a_waiting_worker() -> None:
    import threading
    import time

    from asyncflow.task_runners import ThreadPoolTaskRunner

    active, peak, lock = [0], [0], threading.Lock()

    @task
    def leaf() -> int:
        return 1

    @task
    def parent() -> int:
        return leaf.submit().result()

    @task
    def busy() -> None:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.1)
        with lock:
            active[0] -= 1

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def run() -> None:
        parent.submit().result()  # a stand-in thread served `leaf` meanwhile
        for future in [busy.submit() for _ in range(4)]:
            future.wait()

    run()
    assert peak[0] == 1


def test_cancel_reaches_a_submitted_task_after_its_retry_delay() -> None:
    """The retry delay's guard reset the run's interrupt target to None, so a later
    `future.cancel()` could not interrupt the second attempt (it ran to completion)."""
    import time

    attempts = [0]

    @task(retries=1, retry_delay_seconds=0.05)
    def slow_second_attempt() -> str:
        attempts[0] += 1
        if attempts[0] == 1:
            raise ValueError("first attempt")
        for _ in range(30):
            time.sleep(0.05)
        return "ran to completion"

    @flow
    def run() -> tuple[str, float]:
        future = slow_second_attempt.submit()
        time.sleep(0.3)
        started = time.monotonic()
        future.cancel()
        future.wait()
        return future.state.type.value, time.monotonic() - started

    kind, seconds = run()
    assert kind == "CANCELLED" and seconds < 0.5
