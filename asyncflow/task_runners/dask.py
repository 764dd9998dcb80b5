"""`DaskTaskRunner`: sync task bodies on a Dask cluster (extra `[dask]`: `distributed`).

Only the body travels: each attempt of a task run is one `client.submit(..., pure=False)`
with Dask's own retries off, and the run's lifecycle (states, retries, timeouts, logs,
the store) stays in the flow's process, so workers need no settings, no store and no API.
A run in flight holds no thread here: its completion wakes the loop that drives it.

By default the runner starts a `distributed.LocalCluster` for the flow run and closes it
when the flow run ends; given an `address` or a `cluster`, it connects to that scheduler
with one client per process, shared by the flow runs and closed at exit, and leaves the
cluster running.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import queue
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from asyncflow.exceptions import SerializationError, WorkerLost
from asyncflow.task_runners.base import TaskRunner, call_body, completion
from asyncflow.task_runners.handoff import Handoff, Place, Submission, substitute


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise ImportError(
            "DaskTaskRunner needs the [dask] extra: pip install 'asyncflow[dask]'"
        ) from None
    return distributed


# What of a `dask.annotate(...)` block around a submission goes to Dask's `submit` (it
# runs later, on another thread, where the block is not in force).
_SUBMIT_ANNOTATIONS = ("resources", "priority", "workers", "allow_other_workers")


class DaskTaskRunner(TaskRunner):
    """Runs submitted sync tasks on Dask.

    `cluster`: a running cluster object to use (not closed by the runner); `address`: a
    scheduler to connect to; otherwise `cluster_class` (default `distributed.LocalCluster`,
    or its import path as a string) is started with `cluster_kwargs`, made adaptive with
    `adapt_kwargs` if given, and closed with the flow run. `client_kwargs` go to
    `distributed.Client`.

    A cluster this runner starts does not re-run a task whose worker died
    (`distributed.scheduler.allowed-failures` is 0): the run fails, and the task's own
    retries decide. A cluster you pass keeps its own setting: Dask may run such a task
    again on another worker before asyncflow hears of it.
    """

    in_thread = False
    remote = True
    abandons_running = True
    #: Results at least this large (`dask.sizeof`) stay on the cluster for the runs of this
    #: runner that take them, while any is pending; smaller ones travel with each consumer
    #: (a fetch between workers costs more than sending a small value along).
    keep_on_cluster_bytes = 64 * 1024

    def __init__(
        self,
        cluster: Any = None,
        address: str | None = None,
        cluster_class: Any = None,
        cluster_kwargs: dict[str, Any] | None = None,
        adapt_kwargs: dict[str, Any] | None = None,
        client_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if cluster is not None and address is not None:
            raise ValueError("Give a cluster or an address, not both.")
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be a scheduler address string, got {address!r}.")
        for name, value in (("cluster_kwargs", cluster_kwargs), ("adapt_kwargs", adapt_kwargs),
                            ("client_kwargs", client_kwargs)):  # fmt: skip
            if value is not None and not isinstance(value, dict):
                raise TypeError(f"{name} must be a dict, got {value!r}.")
        if (cluster is not None or address is not None) and (cluster_class or cluster_kwargs):
            raise ValueError("cluster_class and cluster_kwargs are for a cluster it starts.")
        self.cluster = cluster
        self.address = address
        self.cluster_class = cluster_class
        self.cluster_kwargs = dict(cluster_kwargs or {})
        self.adapt_kwargs = None if adapt_kwargs is None else dict(adapt_kwargs)
        self.client_kwargs = dict(client_kwargs or {})
        self._client: Any = None
        self._own_cluster: Any = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._gatherer: threading.Thread | None = None
        self._lock = threading.Lock()
        self._functions: dict[Callable[..., Any], Any] = {}
        self._tokens: list[Any] = []
        self._handoff = Handoff(self._worth_keeping, _release)

    def duplicate(self) -> DaskTaskRunner:
        return type(self)(
            self.cluster, self.address, self.cluster_class,
            self.cluster_kwargs or None, self.adapt_kwargs, self.client_kwargs or None,
        )  # fmt: skip

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and (
            other.cluster is self.cluster and other.address == self.address
            and other.cluster_class == self.cluster_class
            and other.cluster_kwargs == self.cluster_kwargs
            and other.adapt_kwargs == self.adapt_kwargs
            and other.client_kwargs == self.client_kwargs
        )  # fmt: skip

    def __hash__(self) -> int:
        return hash((type(self), self.address))

    @property
    def client(self) -> Any:
        """The runner's `distributed.Client` (None until it starts)."""
        return self._client

    def start(self) -> None:
        if self._client is None:
            distributed = _import_distributed()
            if self.address is not None:
                self._client = _shared_client(distributed, self.address, self.client_kwargs)
            elif self.cluster is not None:
                address = self.cluster.scheduler_address
                self._client = _shared_client(distributed, address, self.client_kwargs)
            else:
                self._own_cluster = self._start_cluster(distributed)
                self._client = distributed.Client(self._own_cluster, **self.client_kwargs)
        super().start()

    def _start_cluster(self, distributed: Any) -> Any:
        import dask

        cls = self.cluster_class or distributed.LocalCluster
        if isinstance(cls, str):
            from importlib import import_module

            module, _, name = cls.rpartition(".")
            cls = getattr(import_module(module), name)
        # (a worker lost mid-task fails the run at once; the task's retries decide)
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            cluster = cls(**self.cluster_kwargs)
        if self.adapt_kwargs is not None:
            cluster.adapt(**self.adapt_kwargs)
        return cluster

    def submit_work(self, work: Callable[[], None]) -> None:  # pragma: no cover - remote
        raise RuntimeError("DaskTaskRunner runs task bodies through run_remote")

    def prepare(self, places: Sequence[Place] = ()) -> Submission:
        """The submission's `dask.annotate(...)` block (what Dask's `submit` takes of it),
        and which upstream results stay on the cluster for it."""
        from dask.base import get_annotations

        annotations = get_annotations()
        options = {name: annotations[name] for name in _SUBMIT_ANNOTATIONS if name in annotations}
        return self._handoff.submission(places, options)

    def finished(self, prepared: Any) -> None:
        self._handoff.finished(prepared)

    async def run_remote(
        self,
        task: Any,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        prepared: Any = None,
    ) -> Any:
        if self._client is None:
            self.start()
        submission = prepared if isinstance(prepared, Submission) else None
        while True:
            refs = self._handoff.kept(submission, _alive)
            try:
                return await self._attempt(task, fn, args, kwargs, submission, refs)
            except _InputsLost:
                if any(not _alive(ref) for ref in refs.values()):
                    continue  # an input kept on the cluster was lost: send the flow's copy
                self._functions.pop(fn, None)  # (its copy may be gone with the worker too)
                raise
            except WorkerLost:
                self._functions.pop(fn, None)
                raise

    async def _attempt(
        self,
        task: Any,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        submission: Submission | None,
        refs: dict[int, Any],
    ) -> Any:
        if refs and submission is not None:
            args, kwargs = substitute(args, kwargs, submission.places, refs)
        # The token is a dependency of the attempt only until it has finished: released
        # then, it leaves Dask unable to compute the result again if a worker holding it
        # dies (it would otherwise, for a result kept for a consumer).
        token = self._token()
        try:
            future = self._client.submit(
                call_body, self._function(fn), args, kwargs, token,
                key=f"{task.name}-{uuid.uuid4().hex}", pure=False, retries=0,
                **(submission.options if submission is not None else {}),
            )  # fmt: skip
        except Exception as exc:
            token.release()
            cause = exc.__cause__ or exc  # (Dask's TypeError names its graph, not the value)
            raise SerializationError(
                f"Task {task.name!r} cannot be sent to Dask: its function or arguments cannot "
                f"be serialized ({type(cause).__name__}: {cause})."
            ) from exc
        outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()  # (gatherer sets)
        keep = bool(getattr(task, "cache_result_in_memory", True))

        def finished(f: Any) -> None:  # (in a thread of Dask's client)
            token.release()  # (as soon as it can be: until then Dask could run it again)
            self._queue.put(_Finished(f, outcome, submission, keep))

        future.add_done_callback(finished)
        self._ensure_gatherer()
        # Dask cannot stop a task that is running: stopped, a queued one is dropped and a
        # running one abandoned on its worker (cancelled with others by the gathering
        # thread; its run here ends Cancelled or TimedOut).
        return await completion(outcome, cancel=lambda: self._queue.put(future))

    def _token(self) -> Any:
        while True:
            if not self._tokens:  # (one round trip for many attempts; every worker has them)
                self._tokens = self._client.scatter([None] * 256, broadcast=True, hash=False)
            token = self._tokens.pop()
            if _alive(token):  # (else lost with every worker that had it)
                return token

    def _function(self, fn: Callable[..., Any]) -> Any:
        """The task's function as the cluster has it: sent to every worker once per flow
        run (a Dask future of it), not with each submission."""
        sent = self._functions.get(fn)
        if sent is None or sent.status != "finished":  # (none yet, or lost with a worker)
            sent = self._functions[fn] = self._client.scatter(fn, broadcast=True, hash=False)
        return sent

    def _worth_keeping(self, value: Any) -> bool:
        from distributed.sizeof import safe_sizeof

        return bool(safe_sizeof(value) >= self.keep_on_cluster_bytes)

    def _ensure_gatherer(self) -> None:
        if self._gatherer is None:
            with self._lock:
                if self._gatherer is None:
                    self._gatherer = threading.Thread(
                        target=self._gather, args=(self._client, self._queue),
                        name="asyncflow-dask-results", daemon=True,
                    )  # fmt: skip
                    self._gatherer.start()

    def _gather(self, client: Any, queue_: queue.SimpleQueue[Any]) -> None:
        """The thread that talks to the cluster for the runs: fetches the values of
        finished futures, many per round trip, hands each to its run and releases what the
        flow holds now; cancels the futures of stopped runs, many per call."""
        while True:
            item = queue_.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < 1000:
                try:
                    item = queue_.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    queue_.put(None)  # (after this batch)
                    break
                batch.append(item)
            stopped = [item for item in batch if not isinstance(item, _Finished)]
            if stopped:
                try:
                    client.cancel(stopped)
                except Exception:  # (a closing client: the runs ended already)
                    pass
            finished = [item for item in batch if isinstance(item, _Finished)]
            good = [item for item in finished if item.future.status == "finished"]
            values: list[Any] = []
            if good:
                try:
                    values = client.gather([item.future for item in good])
                except BaseException:  # (lost meanwhile: each is asked on its own below)
                    good, values = [], []
            for item, value in zip(good, values, strict=True):
                sub = item.submission
                try:
                    kept = sub is not None and self._handoff.delivered(
                        sub, value, item.future, item.keep
                    )
                except Exception:  # (this thread must go on: the value is delivered anyway)
                    kept = False
                if not kept:
                    item.future.release()
                item.outcome.set_result(value)
            fetched = {id(item) for item in good}
            for item in finished:
                if id(item) not in fetched:
                    item.outcome.set_exception(_failure(item.future))
                    item.future.release()

    def shutdown(self, wait: bool = True) -> None:
        self._started = False
        client, self._client = self._client, None
        cluster, self._own_cluster = self._own_cluster, None
        gatherer, self._gatherer = self._gatherer, None
        functions, self._functions = list(self._functions.values()), {}
        tokens, self._tokens = self._tokens, []
        if gatherer is not None:
            self._queue.put(None)
            gatherer.join(30)
            self._queue = queue.SimpleQueue()
        if cluster is not None:  # (its own client and cluster, for this flow run only)
            client.close()
            cluster.close()
        elif client is not None:  # (shared: what this flow run put on the cluster goes)
            for future in (*tokens, *functions):
                future.release()

    def __repr__(self) -> str:
        where = self.address or ("a given cluster" if self.cluster is not None else "local")
        return f"{type(self).__name__}({where})"


# Clients to the schedulers of given clusters and addresses, one per scheduler (and client
# options) for the process, shared by the flow runs: each new client costs a long-lived
# scheduler a megabyte or two that it does not give back.
_clients: dict[tuple[str, str], Any] = {}
_clients_lock = threading.Lock()


def _shared_client(distributed: Any, address: str, kwargs: dict[str, Any]) -> Any:
    key = (address, repr(sorted(kwargs.items())))
    with _clients_lock:
        client = _clients.get(key)
        if client is None or client.status != "running":  # (none yet, or its scheduler went)
            if not _clients:
                atexit.register(_close_clients)
            client = _clients[key] = distributed.Client(address, **kwargs)
        return client


def _close_clients() -> None:
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        try:
            client.close(timeout=5)
        except Exception:  # (at exit: the scheduler may be gone already)
            pass


class _Finished:
    """A finished attempt's future, for the gathering thread."""

    __slots__ = ("future", "keep", "outcome", "submission")

    def __init__(
        self,
        future: Any,
        outcome: concurrent.futures.Future[Any],
        submission: Submission | None,
        keep: bool,
    ) -> None:
        self.future = future
        self.outcome = outcome  # (what the attempt awaits)
        self.submission = submission
        self.keep = keep  # (its result may be kept on the cluster for consumers)


class _InputsLost(WorkerLost):
    """Dask lost what an attempt needed (a kept input, with its worker) before it ran."""


def _alive(ref: Any) -> bool:
    return ref.status == "finished"  # type: ignore[no-any-return]


def _release(ref: Any) -> None:
    ref.release()


def _failure(future: Any) -> BaseException:
    """Why a future did not finish: the task's exception, or WorkerLost when Dask lost the
    worker that ran it (the attempt crashed; the task's retries decide)."""
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError

    try:
        future.result(timeout=30)
    except KilledWorker as exc:
        return WorkerLost(f"Dask lost the worker running it ({exc})")
    except FutureCancelledError as exc:  # (not by us: lost with what it needed)
        return _InputsLost(f"Dask lost what it needed with a worker ({exc})")
    except BaseException as exc:  # (it is the run's outcome)
        return exc
    return RuntimeError(f"Dask future {future.key} has no value ({future.status})")


def get_dask_client() -> Any:
    """The Dask client for code inside a task running on a DaskTaskRunner (a worker's
    client: `distributed.get_client()`)."""
    distributed = _import_distributed()
    try:
        distributed.get_worker()
    except ValueError:
        raise RuntimeError(
            "get_dask_client() is for code inside a task run on a DaskTaskRunner."
        ) from None
    return distributed.get_client()


__all__ = ["DaskTaskRunner", "get_dask_client"]
