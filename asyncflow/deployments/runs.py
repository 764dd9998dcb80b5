"""`run_deployment`: start a run of a deployment from anywhere (another process, a script,
the CLI, inside a flow) through the run store's queue, and a `FlowRun` to wait on.

The run is added `Scheduled` at its scheduled time (now by default); a process serving the
deployment claims and runs it (asyncflow.deployments.serve). Parameters are checked
against the deployment's stored schema first: bad ones raise here and nothing is queued.
Inside a flow, `as_subflow=True` records a task run in the calling flow run standing for
the child (its states follow the child's as far as the call waits) and links the child to
it, as for a nested flow. If the calling flow run is cancelled while it waits, the child is
cancelled too: a child it awaits lives within it. A timeout only stops the waiting.
"""

from __future__ import annotations

import datetime
import json
import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from asyncflow._awaiting import awaited_by_caller
from asyncflow.deployments.remote import is_api
from asyncflow.engine.interrupts import interruptible
from asyncflow.states import DEFAULT_NAMES, State, StateType

#: Seconds between two looks at the run's state while waiting, unless `poll_interval=`.
POLL_INTERVAL = 0.2

_TERMINAL = frozenset(
    {StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED}
)


@dataclass
class FlowRun:
    """A flow run of a deployment as the run store has it (what `run_deployment` returns).

    `wait()` waits for it to end and refreshes it; `result()` is its persisted result.
    Both work awaited (`await flow_run.wait()`) in async code too.
    """

    id: UUID
    name: str
    flow_name: str
    deployment: str | None
    state: State[Any]
    parameters: dict[str, Any]
    tags: tuple[str, ...]
    expected_start_time: datetime.datetime | None  # its scheduled time
    start_time: datetime.datetime | None
    end_time: datetime.datetime | None
    created: datetime.datetime
    parent_task_run_id: UUID | None = None
    url: str = field(default="", repr=False)  # the store it is in

    @property
    def state_type(self) -> StateType:
        return self.state.type

    @property
    def state_name(self) -> str:
        return self.state.name

    def wait(self, timeout: float | None = None, poll_interval: float = POLL_INTERVAL) -> Any:
        """Wait until the run is final (or `timeout` seconds) and refresh this object;
        returns it."""
        if awaited_by_caller():
            return self.await_final(timeout, poll_interval)
        _check_wait(timeout, poll_interval)
        client = _client(self.url)
        pk = client.pk_of(self.id)
        _wait_sync(client, pk, timeout, poll_interval)
        self._refresh(_read(self.url, self.id))
        return self

    async def await_final(
        self, timeout: float | None = None, poll_interval: float = POLL_INTERVAL
    ) -> FlowRun:
        """`wait()` as a coroutine."""
        import anyio.to_thread

        _check_wait(timeout, poll_interval)
        client = _client(self.url)
        pk = await anyio.to_thread.run_sync(client.pk_of, self.id)
        await _wait_async(client, pk, timeout, poll_interval)
        self._refresh(await anyio.to_thread.run_sync(_read, self.url, self.id))
        return self

    def result(self, raise_on_failure: bool = True) -> Any:
        """The run's persisted result (MissingResult when it was not persisted: the child
        flow needs `persist_result=True`, or a result_storage). A Failed, Crashed or
        Cancelled run raises FailedRun, CrashedRun or CancelledRun (returned instead with
        `raise_on_failure=False`); a run not final yet raises UnfinishedRun."""
        if awaited_by_caller():
            return self.aresult(raise_on_failure)
        return self._result(raise_on_failure)

    async def aresult(self, raise_on_failure: bool = True) -> Any:
        """`result()` as a coroutine."""
        import anyio.to_thread

        return await anyio.to_thread.run_sync(self._result, raise_on_failure)

    def _result(self, raise_on_failure: bool) -> Any:
        from asyncflow import exceptions
        from asyncflow.store import load_result

        what = f"Flow run {self.name!r} ({self.id}) of {self.deployment!r}"
        type_ = self.state.type
        if type_ is StateType.COMPLETED:
            if not self.url:
                return load_result(self.id, None)
            return _client(self.url).result(self.id)
        errors = {
            StateType.FAILED: exceptions.FailedRun,
            StateType.CRASHED: exceptions.CrashedRun,
            StateType.CANCELLED: exceptions.CancelledRun,
        }
        if type_ in errors:
            message = f"{what} ended {self.state.name}: {self.state.message or 'no message'}"
            error = errors[type_](message)
            if raise_on_failure:
                raise error
            return error
        raise exceptions.UnfinishedRun(
            f"{what} is {self.state.name}, not final: wait for it (`flow_run.wait()`)."
        )

    def _refresh(self, stored: Any) -> None:
        fresh = _flow_run(stored, self.url)
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(fresh, name))


def run_deployment(
    name: str,
    parameters: dict[str, Any] | None = None,
    scheduled_time: datetime.datetime | None = None,
    flow_run_name: str | None = None,
    timeout: float | None = None,
    poll_interval: float = POLL_INTERVAL,
    tags: list[str] | None = None,
    idempotency_key: str | None = None,
    as_subflow: bool = True,
) -> Any:
    """Start a run of deployment `name` (`"flow name/deployment name"`) and return its
    `FlowRun` when it ends, or after `timeout` seconds (0: at once, Scheduled).

    `parameters` override the deployment's defaults and are checked against its schema
    first (ParameterBindError / ParameterTypeError, nothing queued); ObjectNotFound for an
    unknown deployment. The same `idempotency_key` gives back the run it made first. In
    async code, `await run_deployment(...)` (or `arun_deployment`).
    """
    if awaited_by_caller():
        return arun_deployment(
            name, parameters, scheduled_time, flow_run_name, timeout, poll_interval, tags,
            idempotency_key, as_subflow,
        )  # fmt: skip
    if timeout != 0 and _in_event_loop():
        raise RuntimeError(
            "run_deployment() would block the event loop while it waits: "
            "use `await run_deployment(...)` (or `await arun_deployment(...)`) here, "
            "or timeout=0."
        )
    _check_wait(timeout, poll_interval)
    client, made = _create(name, parameters, scheduled_time, flow_run_name, tags, idempotency_key)
    stand_in = _StandIn.open(name, made, as_subflow)
    try:
        if timeout == 0 and made.added:
            flow_run = made.as_queued(client.url)
        else:
            if timeout != 0:
                _wait_sync(client, made.pk, timeout, poll_interval)
            flow_run = _flow_run(_read(client.url, made.id), client.url)
    except BaseException as exc:
        if stand_in is not None:
            stand_in.abandon(exc, client)
        raise
    if stand_in is not None:
        stand_in.close(flow_run)
    return flow_run


async def arun_deployment(
    name: str,
    parameters: dict[str, Any] | None = None,
    scheduled_time: datetime.datetime | None = None,
    flow_run_name: str | None = None,
    timeout: float | None = None,
    poll_interval: float = POLL_INTERVAL,
    tags: list[str] | None = None,
    idempotency_key: str | None = None,
    as_subflow: bool = True,
) -> FlowRun:
    """`run_deployment` as a coroutine."""
    import anyio.to_thread

    _check_wait(timeout, poll_interval)
    client, made = await anyio.to_thread.run_sync(
        lambda: _create(name, parameters, scheduled_time, flow_run_name, tags, idempotency_key)
    )
    stand_in = _StandIn.open(name, made, as_subflow)
    try:
        if timeout == 0 and made.added:
            flow_run = made.as_queued(client.url)
        else:
            if timeout != 0:
                await _wait_async(client, made.pk, timeout, poll_interval)
            stored = await anyio.to_thread.run_sync(_read, client.url, made.id)
            flow_run = _flow_run(stored, client.url)
    except BaseException as exc:
        if stand_in is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(stand_in.abandon, exc, client)
        raise
    if stand_in is not None:
        stand_in.close(flow_run)
    return flow_run


# -- making the run -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Made:
    id: UUID
    pk: Any  # (its key in the store; its id, through a server's API)
    added: bool
    row: tuple[Any, ...] = ()  # (name, flow name, parameters JSON, deployment, when, ...)
    created: float = 0.0
    queued: FlowRun | None = None  # (through a server's API: the run as it answered)

    def as_queued(self, url: str) -> FlowRun:
        """The run as this call queued it (Scheduled), without reading it back: a server
        may claim it at once, and `timeout=0` answers with the run as it was made."""
        if self.queued is not None:
            return self.queued
        name, flow_name, parameters, deployment, when, _, tags = self.row
        at = datetime.datetime.fromtimestamp(self.created, datetime.timezone.utc)
        scheduled = datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
        state: State[Any] = State(StateType.SCHEDULED, timestamp=self.created)
        return FlowRun(
            id=self.id, name=name, flow_name=flow_name, deployment=deployment, state=state,
            parameters=json.loads(parameters), tags=tuple(json.loads(tags)),
            expected_start_time=scheduled, start_time=None, end_time=None, created=at, url=url,
        )  # fmt: skip


def _create(
    name: str,
    parameters: dict[str, Any] | None,
    scheduled_time: datetime.datetime | None,
    flow_run_name: str | None,
    tags: list[str] | None,
    idempotency_key: str | None,
) -> tuple[Any, _Made]:
    from asyncflow.exceptions import StoreError
    from asyncflow.settings import get_settings
    from asyncflow.store import recording_url

    _check_call(name, parameters, scheduled_time, flow_run_name, idempotency_key)
    settings = get_settings()
    if settings.api_url is not None:  # (through a server: it checks and queues)
        from asyncflow.deployments.remote import ApiClient

        api = ApiClient(settings.api_url, settings.api_key)
        stored, added = api.create(
            name, parameters, scheduled_time, flow_run_name, tags, idempotency_key
        )
        run = _flow_run(stored, api.url)
        return api, _Made(stored.id, stored.id, added, created=time.time(), queued=run)
    url = recording_url()
    if url is None:
        raise StoreError(
            "run_deployment() needs a run store (the queue serving processes take runs "
            "from): ASYNCFLOW_STORE is 'memory'."
        )
    try:
        return _queue(url, name, parameters, scheduled_time, flow_run_name, tags, idempotency_key)
    except StoreError:  # (a dropped connection, a replaced file: once more, connected anew)
        _forget(_client(url))
        return _queue(url, name, parameters, scheduled_time, flow_run_name, tags, idempotency_key)


def _check_call(
    name: Any,
    parameters: Any,
    scheduled_time: Any,
    flow_run_name: Any,
    idempotency_key: Any,
) -> None:
    if not isinstance(name, str) or name.count("/") != 1 or "" in name.split("/"):
        raise ValueError(
            f"Deployment name {name!r} is not valid: it is 'flow name/deployment name'."
        )
    if parameters is not None and not isinstance(parameters, dict):
        raise TypeError(f"parameters must be a dict, got {type(parameters).__name__}.")
    if scheduled_time is not None and not isinstance(scheduled_time, datetime.datetime):
        raise TypeError(f"scheduled_time must be a datetime, got {scheduled_time!r}.")
    if flow_run_name is not None and (not isinstance(flow_run_name, str) or not flow_run_name):
        raise ValueError(f"flow_run_name must be a non-empty string, got {flow_run_name!r}.")
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str) or not idempotency_key
    ):
        raise ValueError(f"idempotency_key must be a non-empty string, got {idempotency_key!r}.")


def _queue(
    url: str,
    name: str,
    parameters: dict[str, Any] | None,
    scheduled_time: datetime.datetime | None,
    flow_run_name: str | None,
    tags: list[str] | None,
    idempotency_key: str | None,
) -> tuple[_Client, _Made]:
    client = _client(url)
    client.store.check_open()
    made = _add(client, name, parameters, scheduled_time, flow_run_name, tags, idempotency_key)
    return client, made


def queue_run(
    store: Any,
    name: str,
    parameters: dict[str, Any] | None = None,
    scheduled_time: datetime.datetime | None = None,
    flow_run_name: str | None = None,
    tags: list[str] | None = None,
    idempotency_key: str | None = None,
) -> tuple[FlowRun, bool]:
    """`run_deployment(..., timeout=0, as_subflow=False)` on a given store object (the HTTP
    API's): the run as queued, and whether this call queued it (False: an earlier call
    with the same idempotency key did). Errors as `run_deployment`'s."""
    _check_call(name, parameters, scheduled_time, flow_run_name, idempotency_key)
    client = _store_clients.get(store)
    if client is None:
        client = _store_clients.setdefault(store, _Client(store.url, store))
    made = _add(client, name, parameters, scheduled_time, flow_run_name, tags, idempotency_key)
    if made.added:
        return made.as_queued(store.url), True
    return _flow_run(store.read_run_sync(made.id), store.url), False


def _add(
    client: _Client,
    name: str,
    parameters: dict[str, Any] | None,
    scheduled_time: datetime.datetime | None,
    flow_run_name: str | None,
    tags: list[str] | None,
    idempotency_key: str | None,
) -> _Made:
    """Check the parameters against the deployment's schema and queue the run."""
    from asyncflow.deployments.deployment import _json
    from asyncflow.deployments.parameters import check_parameters
    from asyncflow.exceptions import ObjectNotFound
    from asyncflow.naming import generate_run_name

    deployment = client.store.read_deployment(name)
    if deployment is None:
        known = [d["name"] for d in client.store.list_deployments()]
        raise ObjectNotFound(
            f"No deployment {name!r} in the run store; known: "
            f"{', '.join(map(repr, known)) or 'none'} (a flow's `serve()` or "
            "`to_deployment(...).apply()` registers one)."
        )
    values = {**json.loads(deployment["parameters"]), **json.loads(_json(parameters or {}))}
    check_parameters(json.loads(deployment["parameter_schema"]), values, f"Deployment {name!r}")
    merged = sorted({*json.loads(deployment["tags"]), *(str(t) for t in tags or ())})
    when = time.time() if scheduled_time is None else scheduled_time.timestamp()
    row = (
        flow_run_name or generate_run_name(), deployment["flow_name"], json.dumps(values), name,
        when, deployment["entrypoint"], json.dumps(merged),
    )  # fmt: skip
    key = None if idempotency_key is None else f"{name}||{idempotency_key}"
    now = time.time()
    made = _Made(*client.create(row, key), row=row, created=now)
    if made.added:
        _wake_servers(name)
    return made


def _wake_servers(deployment: str) -> None:
    """A server in this process serving the deployment looks at the queue now."""
    import sys

    serving = sys.modules.get("asyncflow.deployments.serve")
    if serving is not None:
        serving.wake(deployment)


class _Client:
    """This process's connection to one store for run_deployment, and its session there
    (the keys of the runs it adds)."""

    def __init__(self, url: str, store: Any = None) -> None:
        from asyncflow.store import connect

        self.url = url
        self.store: Any = connect(url) if store is None else store
        self.lock = threading.Lock()
        self.session: int | None = None

    def create(self, row: tuple[Any, ...], key: str | None) -> tuple[UUID, int, bool]:
        from asyncflow.registry import new_prefix
        from asyncflow.store import writer
        from asyncflow.store.base import run_id_prefix

        with self.lock:  # (keys of one session are handed out one at a time)
            if self.session is None:
                identity = writer.process_identity()
                self.session = self.store.session_for(
                    identity[0], run_id_prefix(new_prefix()), *identity[1:]
                )
            return self.store.add_deployment_run(self.session, row, key)  # type: ignore[no-any-return]

    def pk_of(self, run: UUID) -> int:
        return int(self.store.key_of(run))

    def poll(self, pk: int, deadline: float | None = None) -> tuple[StateType, str] | None:
        return self.store.run_state(pk)  # type: ignore[no-any-return]

    def read(self, run_id: UUID) -> Any:
        return self.store.read_run_sync(run_id)

    def result(self, run_id: UUID) -> Any:
        from asyncflow.store import load_result

        return load_result(run_id, self.url)

    def cancel(self, run_id: UUID, why: str | None = None) -> str:
        return str(self.store.request_cancel(run_id, why=why)[0])


_clients: dict[str, Any] = {}  # (a _Client, or an ApiClient for a server's URL)
# (stores given to queue_run, e.g. the HTTP API's: a session each, gone with the store)
_store_clients: weakref.WeakKeyDictionary[Any, _Client] = weakref.WeakKeyDictionary()
_clients_lock = threading.Lock()


def _client(url: str) -> Any:
    """This process's client of a store, or of a server's API (for an http(s) URL)."""
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            if is_api(url):
                from asyncflow.deployments.remote import ApiClient
                from asyncflow.settings import get_settings

                client = _clients[url] = ApiClient(url, get_settings().api_key)
            else:
                client = _clients[url] = _Client(url)
        return client


def _forget(client: Any) -> None:
    """Drop a client whose connection failed: the next call connects again (a new session,
    so a store that was replaced gets a session of its own)."""
    url = client.url
    with _clients_lock:
        if _clients.get(url) is client:
            del _clients[url]
    if not isinstance(client, _Client):
        return
    try:
        client.store.close()
    except Exception:  # (closing a broken connection)
        pass


def _after_fork() -> None:
    global _clients_lock, _poller
    _clients.clear()
    _clients_lock = threading.Lock()  # (a fork while it was held leaves it held)
    _poller = None  # (its threads are not in the child)


if hasattr(os, "register_at_fork"):  # a child process opens connections of its own
    os.register_at_fork(after_in_child=_after_fork)


# -- waiting ------------------------------------------------------------------------------------
def _check_wait(timeout: float | None, poll_interval: float) -> None:
    if timeout is not None and (
        not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout < 0
    ):
        raise ValueError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}.")
    if not isinstance(poll_interval, (int, float)) or not poll_interval > 0:
        raise ValueError(f"poll_interval must be a number of seconds > 0, got {poll_interval!r}.")


def _poll(url: str, pk: Any, deadline: float | None = None) -> tuple[StateType, str] | None:
    """The run's latest state; a failed connection is opened again once (a server's API
    is asked again until `deadline`)."""
    from asyncflow.exceptions import StoreError

    client = _client(url)
    try:
        return client.poll(pk, deadline)  # type: ignore[no-any-return]
    except StoreError:
        _forget(client)
        return _client(url).poll(pk, deadline)  # type: ignore[no-any-return]


def _read(url: str, run_id: UUID) -> Any:
    """The stored run (a StoredRun); a failed connection is opened again once."""
    from asyncflow.exceptions import StoreError

    client = _client(url)
    try:
        return client.read(run_id)
    except StoreError:
        _forget(client)
        return _client(url).read(run_id)


_poller: Any = None  # a thread for the polls of sync waits (see _wait_sync)


@interruptible  # (a sync flow's timeout or cancellation stops it while it sleeps here)
def _wait_sync(client: _Client, pk: int, timeout: float | None, poll: float) -> None:
    """Poll until the run is final. The polls run in a thread of their own: an interrupt
    (the calling flow's timeout, a cancel) lands here, never inside the store's driver."""
    global _poller
    if _poller is None:
        from concurrent.futures import ThreadPoolExecutor

        _poller = ThreadPoolExecutor(4, thread_name_prefix="asyncflow-run-deployment")
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        state = _poller.submit(_poll, client.url, pk, deadline).result()
        if state is None or state[0] in _TERMINAL:
            return
        left = poll if deadline is None else min(poll, deadline - time.monotonic())
        if left <= 0:
            return
        time.sleep(left)


async def _wait_async(client: _Client, pk: int, timeout: float | None, poll: float) -> None:
    import anyio
    import anyio.to_thread

    deadline = None if timeout is None else time.monotonic() + timeout
    # (an HTTP poll can be left behind when the wait is cancelled; a store's cannot: its
    # connection is in use until the call returns)
    leave = is_api(client.url)
    while True:
        state = await anyio.to_thread.run_sync(
            _poll, client.url, pk, deadline, abandon_on_cancel=leave
        )
        if state is None or state[0] in _TERMINAL:
            return
        left = poll if deadline is None else min(poll, deadline - time.monotonic())
        if left <= 0:
            return
        await anyio.sleep(left)


def _in_event_loop() -> bool:
    import sniffio

    try:
        sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return False
    return True


def _flow_run(stored: Any, url: str) -> FlowRun:
    state: State[Any] = State(
        stored.state_type, stored.state_name, stored.state_message,
        timestamp=(stored.end_time or stored.created).timestamp(),
    )  # fmt: skip
    return FlowRun(
        id=stored.id, name=stored.name, flow_name=stored.spec_name,
        deployment=stored.deployment, state=state, parameters=dict(stored.parameters or {}),
        tags=tuple(stored.tags), expected_start_time=stored.scheduled_time,
        start_time=stored.start_time, end_time=stored.end_time, created=stored.created,
        parent_task_run_id=stored.parent_task_run_id, url=url,
    )  # fmt: skip


# -- the task run standing for the child in the calling flow run ------------------------------
class _StandIn:
    def __init__(self, engine: Any, row: int, made: _Made) -> None:
        self.engine = engine
        self.row = row
        self.made = made

    @classmethod
    def open(cls, name: str, made: _Made, as_subflow: bool) -> _StandIn | None:
        from asyncflow.engine.context import current_flow_run
        from asyncflow.registry import FACT_CHILD, KIND_TASK

        engine = current_flow_run()
        if not as_subflow or engine is None:
            return None
        registry = engine.registry
        counter = engine.next_task_index(name)
        row = registry.add_run(KIND_TASK, name, engine.row, counter)
        registry.add_transition(row, StateType.RUNNING, time.time())
        # (a run made earlier under the same idempotency key keeps its parent; one queued
        # through a server's API is in another store than this flow run)
        if made.added and made.queued is None:
            registry.add_fact(row, FACT_CHILD, (engine.row, made.pk))
        return cls(engine, row, made)

    def _end(self, type_: StateType, name: str | None, message: str | None) -> None:
        self.engine.registry.add_transition(self.row, type_, time.time(), name, message)
        self.engine.task_finished(type_)

    def close(self, flow_run: FlowRun) -> None:
        state = flow_run.state
        if state.type in _TERMINAL:
            custom = None if state.name == DEFAULT_NAMES[state.type] else state.name
            self._end(state.type, custom, state.message)
        else:
            message = f"run_deployment returned while the run was {state.name} ({flow_run.id})."
            self._end(StateType.COMPLETED, None, message)

    def abandon(self, exc: BaseException, client: _Client) -> None:
        """The wait ended early: the store failed (the child goes on), or the calling flow
        run was stopped (its timeout, a cancel), which cancels the child it waited for."""
        from asyncflow.exceptions import ServerUnavailable, StoreError

        if isinstance(exc, (StoreError, ServerUnavailable, KeyError)):
            self._end(StateType.FAILED, None, f"{type(exc).__name__}: {exc}")
            return
        if not self.made.added:
            # (a run made earlier under the same idempotency key: its caller's, not ours)
            self._end(StateType.CANCELLED, None, "Its flow run was stopped while it waited.")
            return
        try:
            _client(client.url).cancel(self.made.id, why="its caller stopped waiting")
        except Exception:  # (the store is down: the child goes on; say so)
            import logging

            logging.getLogger("asyncflow.deployments").warning(
                "Could not cancel run %s with its caller.", self.made.id, exc_info=True
            )
        why = f" ({type(exc).__name__})" if isinstance(exc, Exception) else ""
        self._end(StateType.CANCELLED, None, f"Its flow run was stopped{why} while it waited.")


__all__ = ["POLL_INTERVAL", "FlowRun", "arun_deployment", "queue_run", "run_deployment"]
