"""`serve`: run deployments' scheduled runs in this process, over the run store.

A serving process registers its deployments, then loops: it adds the runs of schedule slots
that are due (one run per slot, whatever the number of processes serving: the slot is a
unique key of the store), claims due runs of its deployments (each run is claimed once:
the claim moves it to Pending in one transaction, and this process answers for it from
then on, so its death crashes it), and runs each as an ordinary flow run that takes the
scheduled run's id (the registry alias that restarts use), at most `limit` at a time.

Catch-up, when no process served a schedule for a while: `"latest"` (the default) runs
only the most recent missed slot, `"none"` none, `"all"` the missed slots up to
`max_catchup`; missed slots that do not run are not created. Overlap, when a run of the
schedule is still going at its next slot: `"allow"` (the default) runs it anyway, `"skip"`
does not create that slot's run, `"buffer_one"` creates it unless one is already waiting.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import threading
import time
from typing import Any, Literal

import anyio
import anyio.to_thread

from asyncflow.deployments.deployment import RunnerDeployment, _json

#: Where a served run runs: in the serving process, or in a process of its own.
Isolation = Literal["inline", "process"]
#: Runs of one serving process at a time, unless `limit=` says otherwise.
DEFAULT_LIMIT = 8
#: Longest sleep between two looks at the store (runs other processes schedule, pauses).
POLL_SECONDS = 0.25
#: Seconds between two looks for dead processes' runs while serving (crash detection).
REAP_SECONDS = 2.0
#: Seconds a stopping server lets its runs finish before it cancels them (less than the
#: 10 s a container runtime usually waits before SIGKILL, so the cancels get recorded).
GRACE_PERIOD = 8.0
#: Longest wait for cancelled runs to record their end, before serving stops anyway.
CANCEL_WAIT = 10.0

logger = logging.getLogger("asyncflow.deployments")


def serve(
    *deployments: RunnerDeployment,
    limit: int | None = DEFAULT_LIMIT,
    grace_period: float = GRACE_PERIOD,
    pause_on_shutdown: bool = False,
    isolation: Isolation = "inline",
) -> None:
    """Serve these deployments until SIGINT (Ctrl-C) or SIGTERM: blocks. In a running event
    loop, use `await aserve(...)`.

    `isolation="inline"` (the default) runs each run in this process (sync flows in worker
    threads); `"process"` runs each in a new Python process, which loads the flow from its
    entrypoint (a module or file, not `__main__`): more memory and ~100 ms more per run,
    but a crash, a leak or a stuck C call stays in that run.

    On the signal it stops claiming runs, lets the running ones finish for `grace_period`
    seconds (a second signal cuts it short), then cancels the rest: they end Cancelled.
    `pause_on_shutdown=True` pauses the deployments' schedules as it stops (and serving
    them again resumes them); the default leaves them to the other serving processes.
    """
    import sniffio

    try:
        sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        pass
    else:
        raise RuntimeError(
            "serve() blocks, and an event loop is running here: use `await aserve(...)` "
            "(or `await my_flow.aserve(...)`) instead."
        )
    server = _server(deployments, limit, grace_period, pause_on_shutdown, isolation)
    try:
        anyio.run(lambda: server.run(signals=True))
    except KeyboardInterrupt:  # (a signal handler could not be set: not the main thread)
        logger.info("Stopped serving.")


async def aserve(
    *deployments: RunnerDeployment,
    limit: int | None = DEFAULT_LIMIT,
    pause_on_shutdown: bool = False,
    isolation: Isolation = "inline",
) -> None:
    """Serve these deployments until cancelled; the runs going then are cancelled (they
    end Cancelled). Signals are left to the application. Options as for `serve`."""
    server = _server(deployments, limit, GRACE_PERIOD, pause_on_shutdown, isolation)
    await server.run(signals=False)


def _server(
    deployments: tuple[RunnerDeployment, ...],
    limit: int | None,
    grace_period: float,
    pause_on_shutdown: bool,
    isolation: Isolation = "inline",
) -> _Server:
    if refusal is not None:
        raise RuntimeError(refusal)
    if not deployments:
        raise ValueError("serve() needs at least one deployment (flow.to_deployment(...)).")
    for deployment in deployments:
        if not isinstance(deployment, RunnerDeployment):
            raise TypeError(
                f"serve() takes deployments (flow.to_deployment(...)), got {deployment!r}."
            )
    names = [d.full_name for d in deployments]
    if len(set(names)) != len(names):
        raise ValueError(f"serve() got one deployment twice: {sorted(names)}.")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}.")
    if not isinstance(grace_period, (int, float)) or not grace_period >= 0:
        raise ValueError(f"grace_period must be a number of seconds >= 0, got {grace_period!r}.")
    if isolation not in ("inline", "process"):
        raise ValueError(f"isolation must be 'inline' or 'process', got {isolation!r}.")
    if isolation == "process":
        unplaced = [d.full_name for d in deployments if not d.flow.entrypoint]
        if unplaced:
            raise ValueError(
                f"isolation='process' loads each flow from its entrypoint, and {unplaced} "
                "have none: define the flow in a module or file, not in __main__."
            )
    server = _Server(list(deployments), limit or math.inf, grace_period, pause_on_shutdown)
    server.isolation = isolation
    return server


#: Why serve() may not start in this process (set while a run's own process loads its flow).
refusal: str | None = None

#: This process's running servers, which `run_deployment` wakes (see `wake`).
_serving: set[_Server] = set()


def wake(deployment: str) -> None:
    """A run of `deployment` was just queued in this process: its servers look now."""
    for server in list(_serving):
        if deployment in server.deployments:
            server.wake()


class _Server:
    def __init__(
        self,
        deployments: list[RunnerDeployment],
        limit: float,
        grace_period: float = GRACE_PERIOD,
        pause_on_shutdown: bool = False,
    ) -> None:
        self.deployments = {d.full_name: d for d in deployments}
        # each schedule's slot-key prefix, made once (a digest of the schedule)
        self.prefixes = {
            (d.full_name, i): f"{d.full_name}|{schedule_key(s)}|"
            for d in deployments
            for i, s in enumerate(d.schedules)
        }
        self.limiter = anyio.CapacityLimiter(limit)
        # sync flows get threads of their own: the loop's store calls must never queue
        # behind `limit` running flows in anyio's default pool
        self.threads = anyio.CapacityLimiter(limit if limit != math.inf else 10_000)
        self.grace_period = grace_period
        self.pause_on_shutdown = pause_on_shutdown
        self.isolation: Isolation = "inline"
        self.children: dict[Any, Any] = {}  # run id -> its process (isolation="process")
        self.running = 0
        self.active: dict[Any, Any] = {}  # run id -> Claimed, for the runs going here
        self.stopping = False  # no more claims
        self.hurry = False  # a second signal: no more grace
        self.cancelling = False  # the grace period is over: runs not started never start
        self.store: Any = None
        self.session = 0
        self.process_id = ""
        # a schedule nobody served before starts from here (no catch-up of older slots)
        self.started = datetime.datetime.now(datetime.timezone.utc)
        # per schedule: the time its slots were considered up to (skipped, paused, created)
        self.seen: dict[str, datetime.datetime] = {}
        self.failing = 0.0  # consecutive seconds of store errors (for the backoff)
        self.reaped = time.time()  # when crash detection last ran (opening the store did)
        self.soon: Any = None  # schedules a callback on the loop, from any thread
        self.wakeup: Any = None
        self.idle: Any = None  # set when the last run ends (while stopping)
        self.grace: Any = None  # the grace period's cancel scope

    def wake(self) -> None:
        """Look at the queue now (from any thread; never waits for the loop)."""
        soon = self.soon
        if soon is None:
            return
        try:
            soon(lambda: self.wakeup.set())
        except Exception:  # (the loop ended meanwhile: nothing to wake)
            pass

    async def run(self, signals: bool) -> None:
        await anyio.to_thread.run_sync(self._open)
        self.wakeup = anyio.Event()
        self.soon = _call_soon()
        _serving.add(self)
        try:
            async with anyio.create_task_group() as group:
                if signals and threading.current_thread() is threading.main_thread():
                    group.start_soon(self._on_signals)
                listener = self.store.queue_listener()
                if listener is not None:
                    group.start_soon(self._listen, listener)
                try:
                    await self._serve(group)
                    await self._shut_down()
                finally:
                    self._cancel_active()  # (cancelled from outside: the runs end Cancelled)
                group.cancel_scope.cancel()
        finally:
            _serving.discard(self)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._close)

    async def _serve(self, group: Any) -> None:
        from asyncflow.exceptions import StoreError

        while not self.stopping:
            try:
                wake = await anyio.to_thread.run_sync(self._tick)
                with anyio.CancelScope(shield=True):  # (runs it claims are never dropped)
                    claimed, due = await anyio.to_thread.run_sync(self._claim)
            except StoreError as exc:  # (locked, a dropped connection...): go on
                if getattr(exc, "permanent", False):
                    raise
                self.failing = min(max(self.failing * 2, 0.5), 10.0)
                logger.warning(
                    "Serving: the run store failed (%s); again in %gs.", exc, self.failing
                )
                await anyio.sleep(self.failing)
                continue
            self.failing = 0.0
            for run in claimed:
                self.running += 1
                self.active[run.id] = run
                group.start_soon(self._execute, run)
            if due is not None:  # (a queued run's time: run_deployment(scheduled_time=...))
                wake = min(wake, due - time.time())
            with anyio.move_on_after(max(0.0, min(wake, POLL_SECONDS))):
                await self.wakeup.wait()
            self.wakeup = anyio.Event()

    async def _listen(self, listener: Any) -> None:
        """Wake the loop when another process queues a run of ours (PostgreSQL NOTIFY).
        Only a shortcut: the loop polls anyway, so a listener that breaks stops, logged."""
        try:
            while True:
                names = await anyio.to_thread.run_sync(listener.wait, 1.0, abandon_on_cancel=True)
                if any(name in self.deployments for name in names):
                    self.wakeup.set()
        except Exception as exc:
            logger.warning("Serving: listening for queued runs failed (%r); polling only.", exc)
        finally:
            listener.close()

    async def _on_signals(self) -> None:
        import signal

        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if self.stopping:
                    self.hurry = True
                    if self.grace is not None:
                        self.grace.cancel()
                    logger.warning("Serving: a second signal; cancelling the runs now.")
                    continue
                self.stopping = True
                self.wakeup.set()
                logger.info(
                    "Serving: %s; no more runs are claimed, %d running get %gs to finish.",
                    signal.Signals(signum).name, len(self.active), self.grace_period,
                )  # fmt: skip

    async def _shut_down(self) -> None:
        """Stopping: grace for the runs going, then cancel them and wait for their ends."""
        self.idle = anyio.Event()
        if not self.active:
            self.idle.set()
        with anyio.move_on_after(self.grace_period) as self.grace:
            if not self.hurry:
                await self.idle.wait()
        if self.active:
            logger.warning("Serving: cancelling %d run(s) still going.", len(self.active))
        self.cancelling = True
        await anyio.to_thread.run_sync(self._ask_children)
        deadline = time.monotonic() + CANCEL_WAIT
        while self.active and time.monotonic() < deadline:
            self._cancel_active()  # (again: a run claimed a moment ago registers late)
            await anyio.sleep(0.1)

    def _ask_children(self) -> None:
        """Ask the runs in processes of their own to cancel (through the store)."""
        from asyncflow.exceptions import StoreError

        for run_id in list(self.children):
            try:
                self.store.request_cancel(run_id)
            except (StoreError, KeyError):
                pass  # (killed after CANCEL_WAIT instead)

    def _cancel_active(self) -> None:
        from asyncflow.engine.cancellation import cancel_local

        self.cancelling = True
        for run_id in list(self.active):
            if run_id not in self.children:  # (those in a process of their own: _stop_child)
                cancel_local(run_id)

    # -- the store (worker threads) -----------------------------------------------------------
    def _open(self) -> None:
        from asyncflow.exceptions import StoreError
        from asyncflow.registry import new_prefix
        from asyncflow.store import connect, recording_url, writer
        from asyncflow.store.base import run_id_prefix

        url = recording_url()
        if url is None:
            raise StoreError(
                "serve() needs a run store (the work queue of scheduled runs): "
                "ASYNCFLOW_STORE is 'memory'."
            )
        self.store = connect(url)
        writer.warm(url)  # (the runs' writer connects now, not at the first run)
        for deployment in self.deployments.values():
            row = deployment.to_row()
            if self.pause_on_shutdown and row["paused"] is None:
                stored = self.store.read_deployment(row["name"])
                if stored is not None and stored["paused"] == 2:
                    row["paused"] = 0  # (a server's pause at its shutdown: resumed; not a CLI's)
            self.store.save_deployment(row)
        identity = writer.process_identity()
        self.process_id = identity[0]
        # scheduled runs this process adds have keys (and ids) of their own session
        self.session = self.store.session_for(
            identity[0], run_id_prefix(new_prefix()), *identity[1:]
        )
        logger.info(
            "Serving %s (limit %s); Ctrl-C stops.",
            ", ".join(repr(n) for n in self.deployments),
            "none" if self.limiter.total_tokens == math.inf else int(self.limiter.total_tokens),
        )

    def _close(self) -> None:
        if self.store is None:
            return
        try:
            if self.pause_on_shutdown:
                for name in self.deployments:
                    stored = self.store.read_deployment(name)
                    if stored is not None and not stored["paused"]:  # (keep an operator's)
                        self.store.set_deployment_paused(name, True, on_shutdown=True)
                logger.info("Serving: paused %s.", ", ".join(map(repr, self.deployments)))
        finally:
            self.store.close()

    def _tick(self) -> float:
        """Add the runs of the slots that are due; seconds until the next one."""
        from asyncflow.naming import generate_run_name

        now = time.time()
        if now - self.reaped > REAP_SECONDS:  # a dead server's runs end Crashed, freeing
            self.reaped = now  # their share of concurrency limits (its slots stay ours)
            self.store.mark_crashed_runs()
        now_dt = _at(now)
        wake = POLL_SECONDS
        rows: list[tuple[Any, ...]] = []
        seen: dict[str, datetime.datetime] = {}  # kept only once the rows are in the store
        for name, deployment in self.deployments.items():
            stored = self.store.read_deployment(name)
            paused = stored is None or bool(stored["paused"])
            for index, schedule in enumerate(deployment.schedules):
                prefix = self.prefixes[name, index]
                if paused or not schedule.active:
                    seen[prefix] = now_dt  # (a paused slot is dropped, not caught up)
                    continue
                start = self.seen.get(prefix)
                if start is None:  # this server's first look: from the last slot created
                    last = self.store.last_slot(name, prefix)
                    start = self.started if last is None else _at(last)
                due = list(schedule.slots(start, now_dt)) if start < now_dt else []
                seen[prefix] = max(now_dt, start)
                due = _caught_up(schedule, due, now)
                if due and schedule.overlap != "allow":
                    waiting, going = self.store.open_slot_runs(name, prefix)
                    if schedule.overlap == "skip" and (waiting or going):
                        due = []
                    elif schedule.overlap == "buffer_one":
                        due = due[-1:] if not waiting else []
                parameters = {**deployment.parameters, **schedule.parameters}
                for slot in due:
                    rows.append(
                        (generate_run_name(), deployment.flow_name, _json(parameters), name,
                         slot.timestamp(), f"{prefix}{slot.isoformat()}",
                         deployment.flow.entrypoint, json.dumps(sorted(deployment.tags)))
                    )  # fmt: skip
                try:
                    upcoming = schedule.next_after(now_dt)
                except ValueError:  # (the schedule ended)
                    continue
                wake = min(wake, upcoming.timestamp() - now)
        # in key order: two servers adding the same slots lock them in the same order
        self.store.schedule_runs(self.session, sorted(rows, key=lambda row: row[5]))
        self.seen.update(seen)  # (a failed write leaves them to the next tick)
        return wake

    def _claim(self) -> tuple[list[Any], float | None]:
        """Claim the due runs this process has room for; and when the next queued run is
        due, if that is sooner than the next poll (None: not known)."""
        free = self.limiter.total_tokens - self.running
        if free < 1:
            return [], None
        exclusive = {  # a run of a non-"allow" schedule waits while another one goes
            name: [
                self.prefixes[name, i] for i, s in enumerate(d.schedules) if s.overlap != "allow"
            ]
            for name, d in self.deployments.items()
        }
        caps = {
            name: (d.concurrency_limit.limit, d.concurrency_limit.collision_strategy)
            for name, d in self.deployments.items()
            if d.concurrency_limit is not None
        }
        names = list(self.deployments)
        now = time.time()
        claimed = self.store.claim_runs(
            names, now, int(min(free, 100)), self.process_id,
            exclusive={k: v for k, v in exclusive.items() if v}, caps=caps,
        )  # fmt: skip
        if len(claimed) >= free:
            return claimed, None  # (full: the next run that ends wakes the loop)
        due = self.store.next_due(names)
        # (due by the claim's time and not claimed: held by a limit, the poll looks again;
        # due since: at once)
        return claimed, None if due is None or due <= now else due

    # -- running one --------------------------------------------------------------------------
    async def _execute(self, claimed: Any) -> None:
        from asyncflow.engine.context import Restarting, restart_var
        from asyncflow.registry import Alias
        from asyncflow.results.restore import Restore

        flow = self.deployments[claimed.deployment].flow
        restarting = Restarting(
            flow, Alias(claimed.id, claimed.pk, claimed.seq_base), claimed.name,
            Restore({}, 1), undo=None,
        )  # fmt: skip
        call: Any = flow
        started = False
        try:
            async with self.limiter:
                if self.cancelling:  # (stopping: a run that has not started never does)
                    await self._never_started(claimed)
                    return
                started = True
                if self.isolation == "process":
                    await self._in_subprocess(claimed, flow)
                elif flow.kind == "async":
                    token = restart_var.set(restarting)
                    try:
                        await call(**claimed.parameters, return_state=True)
                    finally:
                        restart_var.reset(token)
                else:

                    def run_sync() -> None:
                        restart_var.set(restarting)  # (this thread's own context copy)
                        call(**claimed.parameters, return_state=True)

                    # (cancelled, the loop stops waiting: the run was asked to stop, and a
                    # thread stuck in C must not hold the server past its shutdown)
                    await anyio.to_thread.run_sync(
                        run_sync, limiter=self.threads, abandon_on_cancel=True
                    )
        except anyio.get_cancelled_exc_class():
            if not started:  # (cancelled while it waited for its turn)
                await self._never_started(claimed)
            raise
        except Exception as exc:
            if restarting.used:
                raise  # (a bug: a flow run's call returns its state)
            message = f"The run could not start: {type(exc).__name__}: {exc}"
            logger.error("Deployment %r: %s", claimed.deployment, message)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.store.fail_claimed, claimed, message)
        finally:
            self.running -= 1
            self.active.pop(claimed.id, None)
            if not self.active and self.idle is not None:
                self.idle.set()
            if self.wakeup is not None:
                self.wakeup.set()  # (room for another run: claim now, not at the next poll)

    async def _never_started(self, claimed: Any) -> None:
        message = "The serving process stopped before the run started."
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.store.fail_claimed, claimed, message, "CANCELLED")

    async def _in_subprocess(self, claimed: Any, flow: Any) -> None:
        """Run a claimed run in a process of its own (asyncflow.deployments.isolated), which
        takes it over in the store; wait for it. A cancel asks it through the store (it ends
        the run Cancelled) and kills it only if it does not stop."""
        import subprocess
        import sys

        job = json.dumps(
            {**claimed._asdict(), "id": str(claimed.id), "owner": self.process_id,
             "entrypoint": flow.entrypoint}
        )  # fmt: skip
        command = [sys.executable, "-m", "asyncflow.deployments.isolated"]
        process = await anyio.open_process(command, stdin=subprocess.PIPE, stdout=None, stderr=None)
        self.children[claimed.id] = process
        try:
            assert process.stdin is not None
            await process.stdin.send(job.encode())
            await process.stdin.aclose()
            await process.wait()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._stop_child(claimed, process)
            raise
        finally:
            self.children.pop(claimed.id, None)
        if process.returncode != 0:
            await anyio.to_thread.run_sync(self._child_died, claimed, process.returncode)

    async def _stop_child(self, claimed: Any, process: Any) -> None:
        from asyncflow.exceptions import StoreError

        if process.returncode is None:
            try:
                await anyio.to_thread.run_sync(self.store.request_cancel, claimed.id)
            except (StoreError, KeyError):
                pass
            with anyio.move_on_after(CANCEL_WAIT):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
            await anyio.to_thread.run_sync(self._child_died, claimed, process.returncode)

    def _child_died(self, claimed: Any, code: int | None) -> None:
        """A run's process ended abnormally: its run ends Failed if the process never took it
        over, else crash detection (the process is dead) ends it Crashed, now."""
        message = f"The run's process exited with status {code} before the run started."
        if not self.store.fail_claimed(claimed, message, owner=self.process_id):
            self.store.mark_crashed_runs()


def _call_soon() -> Any:
    """How to run a callback on the current event loop from any thread, without waiting."""
    import sniffio

    if sniffio.current_async_library() == "trio":
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon
    import asyncio

    return asyncio.get_running_loop().call_soon_threadsafe


def _after_fork() -> None:
    _serving.clear()  # (their loops are not in the child)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def schedule_key(schedule: Any) -> str:
    """What names a schedule's slots in the store: its slug, else a digest of the schedule
    (so adding, removing or reordering a deployment's schedules keeps the others' keys)."""
    import hashlib

    from asyncflow.deployments.deployment import schedule_to_dict

    if schedule.slug:
        return str(schedule.slug).replace("|", "_")
    timing = {  # what decides its instants only (not its parameters or policies)
        k: v
        for k, v in schedule_to_dict(schedule).items()
        if k not in ("parameters", "active", "catchup", "max_catchup", "overlap", "slug")
    }
    data = json.dumps(timing, sort_keys=True)
    return "#" + hashlib.sha256(data.encode()).hexdigest()[:16]


def _at(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)


def _caught_up(schedule: Any, due: list[datetime.datetime], now: float) -> list[datetime.datetime]:
    """The due slots that run, by the schedule's catch-up policy. While served, one slot
    comes due at a time; several mean nobody served the schedule for a while."""
    if schedule.catchup == "none":  # only a slot just due (not one missed meanwhile)
        return [slot for slot in due[-1:] if now - slot.timestamp() < 2 * POLL_SECONDS]
    if len(due) <= 1 or schedule.catchup == "all":
        return due[-schedule.max_catchup :]
    return due[-1:]  # "latest"


__all__ = ["DEFAULT_LIMIT", "aserve", "serve"]
