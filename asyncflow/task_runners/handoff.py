"""Results a remote runner keeps on its cluster for the task runs that consume them.

A run on a remote runner returns its value to the flow, which records it. When runs
submitted to the same runner take that value as an argument, the cluster's copy is passed
to them instead of the flow's, so the data does not travel back. The copy is kept only
while such consumers are pending: once the flow holds the value and the last of them has
ended it is released, and a worker lost after that holds nothing anyone would recompute.
A consumer submitted after the release gets the flow's copy, as any argument.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any


class Output:
    """One task run's result as its runner sees it."""

    __slots__ = ("consumers", "ref", "value")

    def __init__(self) -> None:
        self.consumers = 0  # pending runs of this runner that take the result
        self.ref: Any = None  # the cluster's copy, while kept
        self.value: Any = None  # the flow's copy, while kept (`ref` stands for it)


class Submission:
    """What `prepare` gives every attempt of one task run: the runner's options taken at
    submission, the run's own output and the kept outputs it consumes."""

    __slots__ = ("inputs", "options", "output", "owner")

    def __init__(self, owner: Handoff, options: Any, inputs: list[Output]) -> None:
        self.owner = owner
        self.options = options
        self.output = Output()
        self.inputs = inputs


class Handoff:
    """The kept results of one runner (one flow run's copy of it).

    `worth(value)`: whether a value is worth keeping on the cluster (small ones travel
    more cheaply with their consumers); `release(ref)`: drop the cluster's copy.
    """

    def __init__(self, worth: Callable[[Any], bool], release: Callable[[Any], None]) -> None:
        self._lock = threading.Lock()  # (prepare: the flow's thread; the rest: loop, gatherer)
        self._worth = worth
        self._release = release

    def submission(self, upstreams: Iterable[Any], options: Any) -> Submission:
        """A run's submission; `upstreams`: the futures in its arguments. Those of runs on
        this runner that have not delivered yet, or are kept, count it as a consumer."""
        inputs: list[Output] = []
        with self._lock:
            for future in upstreams:
                upstream = getattr(future, "_remote", None)
                if not isinstance(upstream, Submission) or upstream.owner is not self:
                    continue
                output = upstream.output
                if future.done() and output.ref is None:
                    continue  # (delivered and not kept: the flow's copy will be sent)
                output.consumers += 1
                inputs.append(output)
        return Submission(self, options, inputs)

    def delivered(self, submission: Submission, value: Any, ref: Any) -> bool:
        """An attempt's value reached the flow: keep `ref` for the pending consumers and
        return True, or return False (the caller releases it)."""
        output = submission.output
        if not output.consumers or not self._worth(value):
            return False
        with self._lock:
            if not output.consumers:
                return False
            previous, output.ref, output.value = output.ref, ref, value
        if previous is not None:  # (an earlier attempt's, which came too late)
            self._release(previous)
        return True

    def kept(self, submission: Any, alive: Callable[[Any], bool]) -> dict[int, Any]:
        """For an attempt of `submission`: the cluster's copies of its inputs, by the `id`
        of the flow's copy they stand for. Copies found lost are dropped."""
        if not isinstance(submission, Submission) or not submission.inputs:
            return {}
        refs: dict[int, Any] = {}
        lost: list[Any] = []
        with self._lock:
            for output in submission.inputs:
                if output.ref is None:
                    continue
                if alive(output.ref):
                    refs[id(output.value)] = output.ref
                else:
                    lost.append(output.ref)
                    output.ref = output.value = None
        for ref in lost:
            self._release(ref)
        return refs

    def forget(self, submission: Submission | None) -> None:
        """The cluster's copies of the inputs of `submission` were found lost: drop them
        (their consumers get the flow's copies from now on)."""
        self.kept(submission, lambda ref: False)

    def finished(self, submission: Any) -> None:
        """The run is final: it no longer needs its inputs; a copy no run needs is released."""
        if not isinstance(submission, Submission):
            return
        unneeded: list[Any] = []
        with self._lock:
            inputs, submission.inputs = submission.inputs, []
            for output in inputs:
                output.consumers -= 1
                if not output.consumers and output.ref is not None:
                    unneeded.append(output.ref)
                    output.ref = output.value = None
        for ref in unneeded:
            self._release(ref)


def substitute(value: Any, refs: dict[int, Any], nested: bool) -> Any:
    """`value` with the flow's copies of kept results replaced by the cluster's (inside
    lists, tuples and dicts too when `nested`: Dask resolves them there, Ray only at the top
    level of the arguments)."""
    ref = refs.get(id(value))
    if ref is not None:
        return ref
    if nested:
        if type(value) in (list, tuple):
            items = [substitute(item, refs, True) for item in value]
            if any(new is not old for new, old in zip(items, value, strict=True)):
                return type(value)(items)
        elif type(value) is dict:
            mapping = {key: substitute(item, refs, True) for key, item in value.items()}
            if any(mapping[key] is not item for key, item in value.items()):
                return mapping
    return value


__all__ = ["Handoff", "Output", "Submission", "substitute"]
