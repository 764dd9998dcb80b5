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
from asyncflow.task_runners.handoff import Handoff, Place, Submission, substitute

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
        self._functions: dict[Callable[..., Any], Any] = {}  # fn -> its Ray remote function
        self._handoff = Handoff(_worth_keeping, _drop)
        self._calls: dict[tuple[Callable[..., Any], str], Any] = {}  # (fn, name) -> .options

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
        ray = _import_ray()
        if not ray.is_initialized():
            with sigterm_handler_kept():  # (ray.init puts in its own, which would end the
                ray.init(address=self.address, **self.init_kwargs)  # process unrecorded)
            self._owns_ray = True
        super().start()

    def submit_work(self, work: Callable[[], None]) -> None:  # pragma: no cover - remote
        raise RuntimeError("RayTaskRunner runs task bodies through run_remote")

    def prepare(self, places: Sequence[Place] = ()) -> Submission:
        """The submission's `remote_options`, and which upstream results stay in Ray's
        object store for it."""
        return self._handoff.submission(places, _options.get())

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
        keep = bool(getattr(task, "cache_result_in_memory", True))
        while True:
            kept = self._handoff.kept(submission, _alive)
            try:
                value, ref = await self._attempt(ray, task, fn, args, kwargs, submission, kept)
            except _InputsLost:
                self._handoff.forget(submission)  # (lost with a worker: send the flow's copy)
                continue
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as exc:
                raise WorkerLost(f"Ray lost the worker running it ({type(exc).__name__})") from None
            if submission is not None:
                self._handoff.delivered(submission, value, ref, keep)
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
        if refs and submission is not None:
            slots = {key: _Slot(i) for i, key in enumerate(kept)}
            args, kwargs = substitute(args, kwargs, submission.places, slots)
        try:
            ref = self._call(ray, fn, task.name, submission).remote(args, kwargs, *refs)
        except (TypeError, ValueError) as exc:
            raise SerializationError(
                f"Task {task.name!r} cannot be sent to Ray: its function or arguments cannot "
                f"be serialized ({type(exc).__name__}: {exc})."
            ) from exc
        try:
            value = await completion(ref.future(), cancel=lambda: ray.cancel(ref))
        except ray.exceptions.RayTaskError as exc:  # (the body's own exception)
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, BaseException) else exc) from None
        except ray.exceptions.ObjectLostError as exc:  # (not from the body: Ray's own)
            if exc.object_ref_hex in {kept_ref.hex() for kept_ref in refs}:
                raise _InputsLost(str(exc)) from None
            raise
        return value, ref

    def _call(
        self, ray: Any, fn: Callable[..., Any], name: str, submission: Submission | None
    ) -> Any:
        """The task's Ray remote function (made, and so sent to Ray, once per flow run)
        with its name and the submission's options."""
        remote = self._functions.get(fn)
        if remote is None:
            remote = self._functions[fn] = ray.remote(max_retries=0)(_body_of(fn))
        options = submission.options if submission is not None else None
        if options:
            return remote.options(name=name, **options)
        call = self._calls.get((fn, name))
        if call is None:  # (`.options` is not cheap: once per task and flow run)
            call = self._calls[fn, name] = remote.options(name=name)
        return call

    def shutdown(self, wait: bool = True) -> None:
        self._started = False
        self._functions = {}
        self._calls = {}
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
    """`value` with its `_Slot`s replaced (only containers that hold one are rebuilt)."""
    kind = type(value)
    if kind is _Slot:
        return values[value.index]
    if kind in (list, tuple):
        items = [_fill(item, values) for item in value]
        changed = any(new is not old for new, old in zip(items, value, strict=True))
        return kind(items) if changed else value
    if kind is dict:
        mapping = {key: _fill(item, values) for key, item in value.items()}
        changed = any(mapping[key] is not item for key, item in value.items())
        return mapping if changed else value
    return value


def _call_with(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *values: Any
) -> Any:
    """What a Ray worker runs for one attempt: `values` are the kept results Ray resolved,
    put back in the places their `_Slot`s hold."""
    if values:
        args, kwargs = _fill(args, values), _fill(kwargs, values)
    return call_body(fn, args, kwargs)


class _InputsLost(Exception):
    """Ray lost a kept input of an attempt (with its node) before the attempt ran."""


def _body_of(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What a Ray worker runs for an attempt of `fn`'s task."""

    def body(args: tuple[Any, ...], kwargs: dict[str, Any], *values: Any) -> Any:
        return _call_with(fn, args, kwargs, *values)

    body.__name__ = body.__qualname__ = getattr(fn, "__name__", "task")
    return body


def _worth_keeping(value: Any) -> bool:
    # (Ray inlines small objects in the tasks that take them itself; a scalar is never
    # worth a slot)
    return not isinstance(value, (int, float, complex, type(None)))


def _alive(ref: Any) -> bool:
    return True  # (a lost object shows when a task that takes it fails)


def _drop(ref: Any) -> None:
    """Ray frees an object once no ObjectRef to it is left: the handoff has dropped its own."""


__all__ = ["RayTaskRunner", "remote_options"]
