"""`RayTaskRunner`: sync task bodies as Ray tasks (extra `[ray]`).

As with Dask, only the body travels (`ray.remote` with `max_retries=0`: asyncflow owns
retries), and the run's lifecycle stays in the flow's process. A run in flight holds no
thread here: its ObjectRef's completion wakes the loop that drives it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from asyncflow._signals import sigterm_handler_kept
from asyncflow.exceptions import SerializationError, WorkerLost
from asyncflow.task_runners.base import TaskRunner, call_body, completion
from asyncflow.task_runners.handoff import Handoff, Submission, substitute

_options: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "asyncflow_ray_options", default=None
)


@contextlib.contextmanager
def remote_options(**options: Any) -> Iterator[None]:
    """Ray options (`num_cpus=`, `num_gpus=`, `resources=`, `memory=`, ...) for the task
    runs submitted in this block, as `ray.remote(...).options(**options)`."""
    token = _options.set({**(_options.get() or {}), **options})
    try:
        yield
    finally:
        _options.reset(token)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(
            "RayTaskRunner needs the [ray] extra: pip install 'asyncflow[ray]'"
        ) from None
    return ray


_remote_call: Any = None  # `ray.remote(call_body)`, made once Ray is imported


class RayTaskRunner(TaskRunner):
    """Runs submitted sync tasks on Ray: `ray.init(address, **init_kwargs)` when Ray is not
    initialised in this process yet (then shut down with the flow run), else the Ray that
    is (left running)."""

    in_thread = False
    remote = True

    def __init__(self, address: str | None = None, init_kwargs: dict[str, Any] | None = None):
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be a Ray address string, got {address!r}.")
        if init_kwargs is not None and not isinstance(init_kwargs, dict):
            raise TypeError(f"init_kwargs must be a dict, got {init_kwargs!r}.")
        self.address = address
        self.init_kwargs = dict(init_kwargs or {})
        self._owns_ray = False
        self._functions: dict[Callable[..., Any], Any] = {}
        self._handoff = Handoff(_always, _drop)

    def duplicate(self) -> RayTaskRunner:
        return type(self)(self.address, self.init_kwargs or None)

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and other.address == self.address
            and other.init_kwargs == self.init_kwargs
        )

    def __hash__(self) -> int:
        return hash((type(self), self.address))

    def start(self) -> None:
        global _remote_call
        ray = _import_ray()
        if not ray.is_initialized():
            with sigterm_handler_kept():  # (ray.init puts in its own, which would end the
                ray.init(address=self.address, **self.init_kwargs)  # process unrecorded)
            self._owns_ray = True
        if _remote_call is None:
            _remote_call = ray.remote(max_retries=0)(_call_with)
        super().start()

    def submit_work(self, work: Callable[[], None]) -> None:  # pragma: no cover - remote
        raise RuntimeError("RayTaskRunner runs task bodies through run_remote")

    def prepare(self, upstreams: Sequence[Any] = ()) -> Submission:
        """The submission's `remote_options`, and which upstream results stay in Ray's
        object store for it."""
        return self._handoff.submission(upstreams, _options.get())

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
        ray = _import_ray()
        if not self._started:
            self.start()
        submission = prepared if isinstance(prepared, Submission) else None
        while True:
            kept = self._handoff.kept(submission, _alive)
            try:
                value = await self._attempt(ray, task, fn, args, kwargs, submission, kept)
            except ray.exceptions.ObjectLostError:
                if not kept:
                    raise
                self._handoff.forget(submission)  # (lost with a worker: send the flow's copy)
                continue
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as exc:
                self._functions.pop(fn, None)
                raise WorkerLost(f"Ray lost the worker running it ({type(exc).__name__})") from None
            value, ref = value
            if submission is not None:
                self._handoff.delivered(submission, value, ref)
            return value

    async def _attempt(
        self,
        ray: Any,
        task: Any,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        submission: Submission | None,
        kept: dict[int, Any],
    ) -> tuple[Any, Any]:
        """The attempt's value and its ObjectRef."""
        # Kept results go as top-level arguments, which Ray resolves on the worker, and
        # `_Slot`s mark their places (an ObjectRef of the user's own inside the arguments
        # stays an ObjectRef, as it would on a thread).
        refs = list(kept.values())
        if refs:
            slots = {key: _Slot(i) for i, key in enumerate(kept)}
            args, kwargs = substitute(args, slots, True), substitute(kwargs, slots, True)
        try:
            sent = self._functions.get(fn)
            if sent is None:  # (the function goes to Ray's object store once per flow run)
                sent = self._functions[fn] = ray.put(fn)
            options = submission.options if submission is not None else None
            call = _remote_call.options(name=task.name, **(options or {}))
            ref = call.remote(sent, args, kwargs, *refs)
        except (TypeError, ValueError) as exc:
            raise SerializationError(
                f"Task {task.name!r} cannot be sent to Ray: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            value = await completion(ref.future(), cancel=lambda: ray.cancel(ref))
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, BaseException) else exc) from None
        return value, ref

    def shutdown(self, wait: bool = True) -> None:
        self._started = False
        self._functions = {}
        if self._owns_ray:
            self._owns_ray = False
            _import_ray().shutdown()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address or 'local'})"


class _Slot:
    """The place of the `index`-th kept result in an attempt's arguments."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Slot, (self.index,))


def _fill(value: Any, values: tuple[Any, ...]) -> Any:
    if type(value) is _Slot:
        return values[value.index]
    if type(value) in (list, tuple):
        return type(value)(_fill(item, values) for item in value)
    if type(value) is dict:
        return {key: _fill(item, values) for key, item in value.items()}
    return value


def _call_with(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *values: Any
) -> Any:
    """What a Ray worker runs for one attempt: `values` are the kept results Ray resolved,
    put back in the places their `_Slot`s hold."""
    if values:
        args, kwargs = _fill(args, values), _fill(kwargs, values)
    return call_body(fn, args, kwargs)


def _always(value: Any) -> bool:
    return True  # (Ray itself sends small objects along with the tasks that take them)


def _alive(ref: Any) -> bool:
    return True  # (a lost object shows when a task that takes it fails)


def _drop(ref: Any) -> None:
    """Ray frees an object once no ObjectRef to it is left: the handoff has dropped its own."""


__all__ = ["RayTaskRunner", "remote_options"]
