"""`RayTaskRunner`: sync task bodies as Ray tasks (extra `[ray]`).

As with Dask, only the body travels (`ray.remote` with `max_retries=0`: asyncflow owns
retries), and the run's lifecycle stays in the flow's process. A run in flight holds no
thread here: its ObjectRef's completion wakes the loop that drives it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

from asyncflow.exceptions import SerializationError, WorkerLost
from asyncflow.task_runners.base import TaskRunner, call_body, completion

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
            ray.init(address=self.address, **self.init_kwargs)
            self._owns_ray = True
        if _remote_call is None:
            _remote_call = ray.remote(max_retries=0)(call_body)
        super().start()

    def submit_work(self, work: Callable[[], None]) -> None:  # pragma: no cover - remote
        raise RuntimeError("RayTaskRunner runs task bodies through run_remote")

    def prepare(self) -> dict[str, Any] | None:
        return _options.get()

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
        try:
            sent = self._functions.get(fn)
            if sent is None:  # (the function goes to Ray's object store once per flow run)
                sent = self._functions[fn] = ray.put(fn)
            call = _remote_call.options(name=task.name, **(prepared or {}))
            ref = call.remote(sent, args, kwargs)
        except (TypeError, ValueError) as exc:
            raise SerializationError(
                f"Task {task.name!r} cannot be sent to Ray: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            return await completion(ref.future(), cancel=lambda: ray.cancel(ref))
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, BaseException) else exc) from None
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as exc:
            self._functions.pop(fn, None)
            raise WorkerLost(f"Ray lost the worker running it ({type(exc).__name__})") from None

    def shutdown(self, wait: bool = True) -> None:
        self._started = False
        self._functions = {}
        if self._owns_ray:
            self._owns_ray = False
            _import_ray().shutdown()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address or 'local'})"


__all__ = ["RayTaskRunner", "remote_options"]
