"""Results a remote runner keeps on its cluster for the task runs that consume them.

A run on a remote runner returns its value to the flow, which records it. When runs
submitted to the same runner before that take its future as an argument, they are given
the cluster's copy instead of the flow's, so the data does not travel back. The copy is
kept only while such consumers are pending: once the flow holds the value and the last of
them has ended it is released, and a worker lost after that holds nothing anyone would
compute again. A consumer submitted after the value reached the flow gets the flow's copy,
as any argument (the flow may have changed it by then).

A consumer gets the value as its task returned it: like every argument on a cluster, it is
a copy, and a change made to it in place is not seen by the flow.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple


class Place(NamedTuple):
    """An argument of a submitted run that holds futures: its index or keyword, the value
    as passed (with the futures), and the futures in it."""

    at: int | str
    raw: Any
    futures: list[Any]


class Output:
    """One task run's result as its runner sees it."""

    __slots__ = ("consumers", "delivered", "ref", "value")

    def __init__(self) -> None:
        self.consumers = 0  # pending runs of this runner that take the result
        self.delivered = False  # the value reached the flow
        self.ref: Any = None  # the cluster's copy, while kept
        self.value: Any = None  # the flow's copy, while kept (`ref` stands for it)


class Submission:
    """What `prepare` gives every attempt of one task run: the runner's options taken at
    submission, the run's own output, the kept outputs it consumes and where."""

    __slots__ = ("inputs", "options", "output", "owner", "places")

    def __init__(
        self, owner: Handoff, options: Any, inputs: list[Output], places: list[Place]
    ) -> None:
        self.owner = owner
        self.options = options
        self.output = Output()
        self.inputs = inputs
        self.places = places


class Handoff:
    """The kept results of one runner (one flow run's copy of it).

    `worth(value)`: whether a value is worth keeping on the cluster (small ones travel
    more cheaply with their consumers); `release(ref)`: drop the cluster's copy.
    """

    def __init__(self, worth: Callable[[Any], bool], release: Callable[[Any], None]) -> None:
        self._lock = threading.Lock()  # (prepare: the flow's thread; the rest: loop, gatherer)
        self._worth = worth
        self._release = release

    def submission(self, places: Sequence[Place], options: Any) -> Submission:
        """A run's submission, with the arguments that hold futures: those of runs on this
        runner whose values have not reached the flow yet count it as a consumer."""
        inputs: list[Output] = []
        used: list[Place] = []
        with self._lock:
            for place in places:
                found = False
                for future in place.futures:
                    upstream = getattr(future, "_remote", None)
                    if not isinstance(upstream, Submission) or upstream.owner is not self:
                        continue
                    output = upstream.output
                    if output.delivered:
                        continue
                    output.consumers += 1
                    inputs.append(output)
                    found = True
                if found:
                    used.append(place)
        return Submission(self, options, inputs, used)

    def delivered(self, submission: Submission, value: Any, ref: Any, keep: bool) -> bool:
        """An attempt's value reached the flow: keep `ref` for the pending consumers and
        return True, or return False (the caller releases it). `keep`: whether the run's
        result may be kept at all (not when the flow does not keep it in memory)."""
        output = submission.output
        keep = keep and output.consumers > 0 and self._worth(value)
        with self._lock:
            output.delivered = True
            if not keep or not output.consumers:
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


def substitute(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    places: Sequence[Place],
    refs: dict[int, Any],
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call's arguments with `refs` (the cluster's copies, by the id of the flow's) put
    where the futures of `places` were: nowhere else, and never inside what was passed as
    anything but a plain list, tuple or dict (`opaque`, `quote`, the user's objects)."""
    new_args = list(args)
    new_kwargs = dict(kwargs)
    for place in places:
        if isinstance(place.at, int):
            new_args[place.at] = _swap(place.raw, args[place.at], refs)
        else:
            new_kwargs[place.at] = _swap(place.raw, kwargs[place.at], refs)
    return tuple(new_args), new_kwargs


def _swap(raw: Any, value: Any, refs: dict[int, Any]) -> Any:
    kind = type(raw)
    if kind in (list, tuple) and type(value) is kind and len(value) == len(raw):
        items = [_swap(r, v, refs) for r, v in zip(raw, value, strict=True)]
        changed = any(new is not old for new, old in zip(items, value, strict=True))
        return kind(items) if changed else value
    if kind is dict and type(value) is dict and value.keys() == raw.keys():
        mapping = {key: _swap(raw[key], item, refs) for key, item in value.items()}
        changed = any(mapping[key] is not item for key, item in value.items())
        return mapping if changed else value
    return refs.get(id(value), value)


__all__ = ["Handoff", "Output", "Place", "Submission", "substitute"]
