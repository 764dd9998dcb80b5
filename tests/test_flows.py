"""Flows: the seed's flow examples, final state determination, naming, options and calling."""

import asyncio
import datetime
import importlib.util
import re
import sys
import threading

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
import trio
import trio.lowlevel

from asyncflow import Flow, flow, task
from asyncflow.exceptions import FailedRun, FlowRunNameError, InvalidDefinitionError
from asyncflow.runtime import flow_run
from asyncflow.states import Completed, Failed, State, StateType

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
RUN_NAME = r"[a-z]+(?:-[a-z]+)+"  # generated adjective-animal names like 'sage-mongoose'

# -- the first examples -----------------------------------------------------------------------


def test_hello_world_flow_returns_its_value(registry, logs):
    """Seed: `my_flow()` returns "Hello, world!" and the run ends Completed()."""

    @flow
    def my_flow() -> str:
        return "Hello, world!"

    assert my_flow() == "Hello, world!"
    (record,) = registry.runs(kind="flow")
    assert record.state_names == ["Pending", "Running", "Completed"]
    assert f"Flow run '{record.name}' - Finished in state Completed()" in logs.lines


def test_named_flow_is_recorded_under_its_name(registry, logs):
    """Seed: `@flow(name="My Flow")` identifies the flow (and its runs) by that name."""

    @flow(name="My Flow")
    def my_flow() -> str:
        return "Hello, world!"

    assert my_flow.name == "My Flow"
    assert my_flow() == "Hello, world!"
    (record,) = registry.runs(kind="flow", spec_name="My Flow")
    assert f"asyncflow.engine - Created flow run '{record.name}' for flow 'My Flow'" in logs.lines


def test_get_repo_info_logs_slug_name_and_prints(registry, logs, capsys):
    """Seed repo_info.py (no network): created/finished lines name the flow 'get-repo-info'."""

    @flow
    def get_repo_info():
        repo = {"stargazers_count": 12146, "forks_count": 1245}
        print("PrefectHQ/prefect repository statistics 🤓:")
        print(f"Stars 🌠 : {repo['stargazers_count']}")
        print(f"Forks 🍴 : {repo['forks_count']}")

    assert get_repo_info() is None
    (record,) = registry.runs(kind="flow")
    assert re.fullmatch(RUN_NAME, record.name)
    assert logs.lines == [
        f"asyncflow.engine - Created flow run '{record.name}' for flow 'get-repo-info'",
        f"Flow run '{record.name}' - Beginning flow run '{record.name}' for flow 'get-repo-info'",
        f"Flow run '{record.name}' - Finished in state Completed()",
    ]
    assert capsys.readouterr().out == (
        "PrefectHQ/prefect repository statistics 🤓:\nStars 🌠 : 12146\nForks 🍴 : 1245\n"
    )


def test_sync_flow_runs_in_the_calling_thread():
    """Seed: flows are executed in the main thread by default (the caller's thread)."""

    @flow
    def where() -> int:
        return threading.get_ident()

    assert where() == threading.get_ident()


# -- composing and nesting --------------------------------------------------------------------


@flow(name="Nestedflow")
def my_nested_flow(msg):
    print(f"Nestedflow says: {msg}")


@task(name="Print Hello")
def print_hello(name):
    msg = f"Hello {name}!"
    print(msg)
    return msg


@flow(name="Hello Flow")
def hello_world(name="world"):
    message = print_hello(name)
    my_nested_flow(message)


def test_hello_py_output_and_log_lines(registry, logs, capsys):
    """Seed hello.py: prints and log lines in the seed's order, nested run linked to parent."""
    assert hello_world("Marvin") is None
    assert capsys.readouterr().out == "Hello Marvin!\nNestedflow says: Hello Marvin!\n"
    parent, child = registry.runs(kind="flow")
    assert (parent.spec_name, child.spec_name) == ("Hello Flow", "Nestedflow")
    assert logs.lines == [
        f"asyncflow.engine - Created flow run '{parent.name}' for flow 'Hello Flow'",
        # Prefect 3's line, beside the seed's
        f"Flow run '{parent.name}' - Beginning flow run '{parent.name}' for flow 'Hello Flow'",
        "Task run 'Print Hello-0' - Created task run 'Print Hello-0' for task 'Print Hello'",
        "Task run 'Print Hello-0' - Finished in state Completed()",
        f"Flow run '{parent.name}' - Created subflow run '{child.name}' for flow 'Nestedflow'",
        f"Flow run '{child.name}' - Beginning subflow run '{child.name}' for flow 'Nestedflow'",
        f"Flow run '{child.name}' - Finished in state Completed()",
        f"Flow run '{parent.name}' - Finished in state Completed()",
    ]
    assert child.parent_flow_run_id == parent.id
    assert child.parameters == {"msg": "Hello Marvin!"}
    assert parent.parameters == {"name": "Marvin"}


def test_hello_world_default_parameter(registry, capsys):
    """Seed compose example: `hello_world()` uses its default name="world"."""
    hello_world()
    assert capsys.readouterr().out == "Hello world!\nNestedflow says: Hello world!\n"
    parent = next(registry.runs(kind="flow", spec_name="Hello Flow"))
    assert parent.parameters == {"name": "world"}


def test_nested_flow_relationship_recorded_by_a_task_run(registry):
    """Seed: a task run in the parent stands for the child (child/parent ids in state_details)."""
    hello_world("Marvin")
    parent, child = registry.runs(kind="flow")
    link = registry.get(child.parent_task_run_id)
    assert link.kind == "task"
    assert link.parent_flow_run_id == parent.id
    assert link.child_flow_run_id == child.id
    assert link.state.state_details.child_flow_run_id == child.id
    assert child.state.state_details.parent_task_run_id == link.id


def test_nested_flow_resolves_futures_into_data(registry):
    """Seed: nested flow runs resolve passed task futures into data."""

    @task
    def make() -> int:
        return 20

    @flow
    def child(x):
        return x

    @flow
    def parent():
        return child(make.submit()) + 1

    assert parent() == 21


# -- async flows and calling conventions ------------------------------------------------------


@task
async def print_values(values):
    for value in values:
        await asyncio.sleep(0.01)
        print(value, end=" ")


@flow
async def async_flow():
    print("Hello, I'm an async flow")
    await print_values([1, 2])
    coros = [print_values("abcd"), print_values("6789")]
    await asyncio.gather(*coros)


def test_seed_async_flow_with_asyncio_run(registry, capsys):
    """Seed: `asyncio.run(async_flow())` runs one task, then two concurrently."""
    assert asyncio.run(async_flow()) is None
    out = capsys.readouterr().out
    head, tail = out.split("\n", 1)
    assert head == "Hello, I'm an async flow"
    tokens = tail.split()
    assert tokens[:2] == ["1", "2"]
    assert sorted(tokens[2:]) == sorted("abcd6789")
    assert set(tokens[2:4]) == {"a", "6"}  # the two gathered task runs interleave
    (record,) = registry.runs(kind="flow")
    assert record.state_names == ["Pending", "Running", "Completed"]
    tasks = list(registry.runs(kind="task", spec_name="print_values"))
    assert len(tasks) == 3
    assert all(t.parent_flow_run_id == record.id for t in tasks)
    assert all(t.state_names == ["Pending", "Running", "Completed"] for t in tasks)


@flow
async def add_async(a: int, b: int = 1) -> int:
    await anyio.lowlevel.checkpoint()
    return a + b


@pytest.mark.anyio
async def test_await_async_flow_on_running_loop(registry):
    """`await my_flow()` runs on the caller's loop (asyncio or trio) and returns its result."""
    assert await add_async(2, b=3) == 5
    (record,) = registry.runs(kind="flow")
    assert record.state_names == ["Pending", "Running", "Completed"]


@pytest.mark.anyio
async def test_async_flow_return_state(registry):
    """`await my_flow(return_state=True)` gives the final State instead of the result."""
    state = await add_async(1, return_state=True)
    assert isinstance(state, State)
    assert state.is_completed()
    assert state.result() == 2


def test_asyncio_run_of_async_flow(registry):
    """`asyncio.run(my_flow())` runs an async flow to completion."""
    assert asyncio.run(add_async(40, 2)) == 42
    assert next(registry.runs(kind="flow")).state.is_completed()


def test_trio_run_of_async_flow(registry):
    """`trio.run(my_flow)` runs an async flow under trio, even when it uses trio APIs."""

    @flow
    async def on_trio() -> str:
        await trio.lowlevel.checkpoint()
        return "trio"

    assert trio.run(on_trio) == "trio"
    assert next(registry.runs(kind="flow")).state_names == ["Pending", "Running", "Completed"]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_anyio_run_awaiting_a_flow(backend):
    """`anyio.run(main)` where main awaits an async flow works on both backends."""

    async def main() -> int:
        return await add_async(5)

    assert anyio.run(main, backend=backend) == 6


def test_async_flow_inside_a_running_trio_program(registry):
    """An async flow awaited in the middle of a trio program uses that program's loop."""

    @flow
    async def uses_trio_nursery() -> list[int]:
        results: list[int] = []

        async def add(i: int) -> None:
            await trio.lowlevel.checkpoint()
            results.append(i)

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(add, i)
        return sorted(results)

    async def program() -> list[int]:
        await trio.lowlevel.checkpoint()
        return await uses_trio_nursery()

    assert trio.run(program) == [0, 1, 2]


@pytest.mark.anyio
async def test_sync_flow_called_from_async_flow(registry):
    """A sync flow called inside an async flow runs and is recorded as its child."""

    @flow
    def sync_child(x: int) -> int:
        return x * 2

    @flow
    async def async_parent() -> int:
        return sync_child(21)

    assert await async_parent() == 42
    parent, child = registry.runs(kind="flow")
    assert child.parent_flow_run_id == parent.id
    assert child.state_names == ["Pending", "Running", "Completed"]
    assert parent.state.is_completed()


@pytest.mark.anyio
async def test_sync_flow_called_from_plain_async_code(registry):
    """A sync flow called from plain async code (no parent flow) returns its result."""

    @flow
    def sync_flow(x: int) -> int:
        return x + 1

    assert sync_flow("1") == 2
    (record,) = registry.runs(kind="flow")
    assert record.parent_flow_run_id is None


@pytest.mark.anyio
async def test_sync_flow_in_worker_thread_from_async_flow(registry):
    """README: `await anyio.to_thread.run_sync(sync_flow)` frees the loop, still links the child."""

    @flow
    def sync_child() -> int:
        return threading.get_ident()

    @flow
    async def async_parent() -> int:
        return await anyio.to_thread.run_sync(sync_child)

    child_thread = await async_parent()
    assert child_thread != threading.get_ident()
    parent, child = registry.runs(kind="flow")
    assert child.parent_flow_run_id == parent.id


@pytest.mark.anyio
async def test_async_nested_flows_run_concurrently_in_task_group(registry):
    """Seed: async nested flows can run concurrently with AnyIO task groups."""
    first_started = anyio.Event()
    second_started = anyio.Event()

    @flow
    async def first():
        first_started.set()
        await second_started.wait()  # deadlocks unless both run at once

    @flow
    async def second():
        second_started.set()
        await first_started.wait()

    @flow
    async def parent():
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(first)
                tg.start_soon(second)

    await parent()
    runs = list(registry.runs(kind="flow"))
    assert len(runs) == 3
    assert all(r.state.is_completed() for r in runs)
    assert {r.parent_flow_run_id for r in runs[1:]} == {runs[0].id}


def test_async_nested_flows_run_concurrently_with_asyncio_gather(registry):
    """Seed: async nested flows can run concurrently with asyncio.gather."""

    @flow
    async def child(i: int, events: list) -> int:
        events[i].set()
        await events[1 - i].wait()
        return i

    @flow
    async def parent() -> list[int]:
        events = [asyncio.Event(), asyncio.Event()]
        return list(await asyncio.wait_for(asyncio.gather(child(0, events), child(1, events)), 5))

    assert asyncio.run(parent()) == [0, 1]
    assert len(list(registry.runs(kind="flow", spec_name="child"))) == 2


# -- flows on methods -------------------------------------------------------------------------


class MyClass:
    value = "class value"

    def __init__(self) -> None:
        self.value = "instance value"

    @flow
    def my_instance_method(self):
        return self.value

    @classmethod
    @flow
    def my_class_method(cls):
        return cls.value

    @staticmethod
    @flow
    def my_static_method():
        return "static"

    @flow
    async def my_async_instance_method(self, suffix: str):
        await anyio.lowlevel.checkpoint()
        return self.value + suffix

    @classmethod
    @flow
    async def my_async_class_method(cls):
        await anyio.lowlevel.checkpoint()
        return cls.value

    @staticmethod
    @flow
    async def my_async_static_method(x: int):
        await anyio.lowlevel.checkpoint()
        return x


def test_sync_method_flows(registry):
    """Seed: instance, class and static methods are flows (class/static decorator on top)."""
    assert MyClass().my_instance_method() == "instance value"
    assert MyClass.my_class_method() == "class value"
    assert MyClass.my_static_method() == "static"
    names = [r.spec_name for r in registry.runs(kind="flow")]
    assert names == ["my-instance-method", "my-class-method", "my-static-method"]
    assert all(r.state.is_completed() for r in registry.runs(kind="flow"))


@pytest.mark.anyio
async def test_async_method_flows(registry):
    """Seed: asynchronous instance, class and static method flows can be awaited."""
    assert await MyClass().my_async_instance_method("!") == "instance value!"
    assert await MyClass.my_async_class_method() == "class value"
    assert await MyClass.my_async_static_method("7") == 7
    assert len(list(registry.runs(kind="flow"))) == 3


def test_instance_method_flow_binds_per_instance():
    """Each instance's bound flow sees its own `self`."""
    a, b = MyClass(), MyClass()
    b.value = "other"
    assert (a.my_instance_method(), b.my_instance_method()) == ("instance value", "other")


def test_flow_above_classmethod_and_staticmethod_is_accepted():
    """Prefect accepts `@flow` on top of `@classmethod` / `@staticmethod`, so does asyncflow."""

    class EitherOrder:
        value = "class value"

        @flow  # type: ignore[arg-type]
        @classmethod
        def from_class(cls) -> str:
            return cls.value

        @flow  # type: ignore[arg-type]
        @staticmethod
        def plain(x: int) -> int:
            return x + 1

    assert EitherOrder.from_class() == "class value"
    assert EitherOrder().from_class() == "class value"
    assert EitherOrder.plain(1) == 2
    assert EitherOrder().plain(2) == 3
    assert EitherOrder.from_class.with_options(name="renamed")() == "class value"


# -- generators -------------------------------------------------------------------------------


def test_generator_flow_running_while_yielding(registry, capsys):
    """Seed: a generator flow is Running while it yields and Completed when exhausted."""

    @flow
    def generator():
        yield from range(10)

    @flow
    def consumer(x):
        print(x)

    it = generator()
    first = next(it)
    (gen_record,) = registry.runs(kind="flow", spec_name="generator")
    assert gen_record.state_types[-1] is StateType.RUNNING
    consumer(first)
    for val in it:
        consumer(val)
    gen_record = next(registry.runs(kind="flow", spec_name="generator"))
    assert gen_record.state_names == ["Pending", "Running", "Completed"]
    consumers = list(registry.runs(kind="flow", spec_name="consumer"))
    assert len(consumers) == 10
    assert all(c.parent_flow_run_id is None for c in consumers)
    assert all(c.state.is_completed() for c in consumers)
    assert capsys.readouterr().out == "".join(f"{i}\n" for i in range(10))


def test_returned_generator_is_consumed_into_list(registry, capsys):
    """Seed: a generator returned from a flow is fully consumed; its values become a list."""

    def gen():
        yield from [1, 2, 3]
        print("Generator consumed!")

    @flow
    def f():
        return gen()

    assert f() == [1, 2, 3]
    assert capsys.readouterr().out == "Generator consumed!\n"
    assert next(registry.runs(kind="flow")).state.is_completed()


def test_yielded_generator_is_not_consumed(capsys):
    """Seed: a generator *yielded* by a flow is passed on unconsumed."""

    def gen():
        yield from [1, 2, 3]
        print("Generator consumed!")

    @flow
    def f():
        yield gen

    generator = next(f())
    assert capsys.readouterr().out == ""
    assert list(generator()) == [1, 2, 3]
    assert capsys.readouterr().out == "Generator consumed!\n"


def test_generator_flow_raising_fails(registry):
    """An exception raised inside a generator flow fails the run and reaches the consumer."""

    @flow
    def broken():
        yield 1
        raise ValueError("stream broke")

    it = broken()
    assert next(it) == 1
    with pytest.raises(ValueError, match="stream broke"):
        next(it)
    (record,) = registry.runs(kind="flow")
    assert record.state_names == ["Pending", "Running", "Failed"]


@pytest.mark.anyio
async def test_async_generator_flow(registry):
    """Seed: an async generator flow yields values, Running meanwhile, then Completed."""

    @flow
    async def agen(n: int):
        for i in range(n):
            await anyio.lowlevel.checkpoint()
            yield i

    seen = []
    async for value in agen("3"):
        seen.append(value)
        (record,) = registry.runs(kind="flow")
        assert record.state_types[-1] is StateType.RUNNING
    assert seen == [0, 1, 2]
    (record,) = registry.runs(kind="flow")
    assert record.state_names == ["Pending", "Running", "Completed"]


# -- final state determination ----------------------------------------------------------------


def test_raised_exception_fails_the_run(registry, logs):
    """Seed: an exception raised in the flow function marks the run FAILED; the call re-raises."""

    @flow
    def boom():
        raise ValueError("kaput")

    with pytest.raises(ValueError, match="kaput"):
        boom()
    (record,) = registry.runs(kind="flow")
    assert record.state_names == ["Pending", "Running", "Failed"]
    failed_lines = [r for r in logs.records if r.getMessage().startswith("Finished in state")]
    (line,) = failed_lines
    assert line.levelname == "ERROR"
    assert line.getMessage().startswith("Finished in state Failed(")
    error_line = next(
        r for r in logs.records if r.getMessage() == "Encountered exception during execution:"
    )
    assert error_line.exc_info is not None
    assert isinstance(error_line.exc_info[1], ValueError)


def test_return_state_true_gives_failed_state_without_raising():
    """`return_state=True` returns the Failed state; its result is the raised exception."""

    @flow
    def boom():
        raise ValueError("kaput")

    state = boom(return_state=True)
    assert state.is_failed()
    assert state.type is StateType.FAILED
    assert "ValueError" in state.message
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, ValueError)
    assert str(exc) == "kaput"


def test_return_state_true_on_completed_run():
    """`return_state=True` returns a Completed state carrying the return value."""

    @flow
    def fine() -> int:
        return 7

    state = fine(return_state=True)
    assert state.is_completed()
    assert state.result() == 7
    assert str(state) == "Completed()"


@task
def add_one(x):
    return x + 1


def test_failed_task_with_return_state_does_not_fail_flow(registry):
    """Seed: a task failing under `return_state=True` leaves the flow Completed."""

    @flow
    def my_flow():
        state = add_one("1", return_state=True)
        assert state.is_failed()
        return

    assert my_flow() is None
    (record,) = registry.runs(kind="flow")
    assert record.state.is_completed()


def test_returning_the_failed_task_state_fails_flow(registry):
    """Seed: if the failed state were returned from the flow, the run would be FAILED."""

    @flow
    def my_flow():
        return add_one("1", return_state=True)

    state = my_flow(return_state=True)
    assert state.is_failed()
    with pytest.raises(TypeError):
        my_flow()


def test_other_return_values_complete(registry):
    """Seed: any other returned object ends the run COMPLETED with that object as result."""
    marker = object()

    @flow
    def returns(value):
        return value

    for value in (marker, {"a": 1}, [1, 2], (), None, ValueError("not raised")):
        state = returns(value, return_state=True)
        assert state.is_completed()
        assert state.result() is value or state.result() == value


@task
def always_fails_task():
    raise ValueError("I fail successfully")


@task
def always_succeeds_task():
    print("I'm fail safe!")
    return "success"


def test_seed_return_a_future(registry, logs, capsys):
    """Seed 'Return a future': the flow returns the succeeding task's future -> Completed;
    the call gives back that task run's state, as in Prefect."""

    @flow
    def always_succeeds_flow():
        x = always_fails_task.submit().result(raise_on_failure=False)
        y = always_succeeds_task.submit(wait_for=[x])
        return y

    returned = always_succeeds_flow()
    assert returned.is_completed() and returned.result() == "success"
    (record,) = registry.runs(kind="flow")
    assert record.spec_name == "always-succeeds-flow"
    assert record.state.is_completed()
    assert record.state.message == "All states completed."
    assert (
        f"Flow run '{record.name}' - Finished in state Completed('All states completed.')"
        in logs.lines
    )
    assert "I'm fail safe!" in capsys.readouterr().out
    failed_task = next(registry.runs(kind="task", spec_name="always_fails_task"))
    assert failed_task.state.is_failed()
    assert any(
        r.levelname == "ERROR"
        and r.getMessage() == "Encountered exception during execution:"
        and getattr(r, "run_label", "") == f"Task run '{failed_task.name}'"
        for r in logs.records
    )


@task
def bad_task():
    raise ValueError("I am bad task")


@task
def foo_task():
    return "foo"


@flow
def bar_flow():
    return "bar"


def test_seed_return_multiple_states(registry, logs):
    """Seed: returning (failed, completed, completed) states -> Failed('1/3 states failed.')."""

    @flow
    def always_fails_flow():
        x = bad_task(return_state=True)
        y = foo_task(return_state=True)
        z = bar_flow(return_state=True)
        return x, y, z

    state = always_fails_flow(return_state=True)
    assert state.is_failed()
    assert state.message == "1/3 states failed."
    x, y, z = state.data
    assert (x.is_failed(), y.result(), z.result()) == (True, "foo", "bar")
    parent = next(registry.runs(kind="flow", spec_name="always-fails-flow"))
    child = next(registry.runs(kind="flow", spec_name="bar-flow"))
    assert f"Flow run '{child.name}' - Finished in state Completed()" in logs.lines
    finished = next(
        r
        for r in logs.records
        if r.getMessage() == "Finished in state Failed('1/3 states failed.')"
    )
    assert finished.levelname == "ERROR"
    assert getattr(finished, "run_label", None) == f"Flow run '{parent.name}'"
    # the call gives back the returned states, failed or not (Prefect does the same)
    x, y, z = always_fails_flow()
    assert (x.is_failed(), y.is_completed(), z.result()) == (True, True, "bar")
    with pytest.raises(ValueError, match="I am bad task"):
        always_fails_flow(return_state=True).result()


def test_seed_return_multiple_states_repr(registry):
    """Seed: the failed flow state's repr lists each state's message, type, result and run id."""

    @flow
    def always_fails_flow():
        return (
            bad_task(return_state=True),
            foo_task(return_state=True),
            bar_flow(return_state=True),
        )

    state = always_fails_flow(return_state=True)
    pattern = (
        r"Failed\(message='1/3 states failed\.', type=FAILED, result=\("
        rf"Failed\(message='[^']*', type=FAILED, result=ValueError\('I am bad task'\), "
        rf"task_run_id={UUID}\), "
        rf"Completed\(message=None, type=COMPLETED, result='foo', task_run_id={UUID}\), "
        rf"Completed\(message=None, type=COMPLETED, result='bar', "
        rf"(?:task_run_id|flow_run_id)={UUID}\)"
        rf"\), flow_run_id={UUID}\)"
    )
    assert re.fullmatch(pattern, repr(state)), repr(state)


def test_returned_futures_list_with_a_failure_fails(registry):
    """Seed: returned futures resolve to states; a failure -> Failed('1/3 states failed.')."""

    @flow
    def futures_flow():
        return [bad_task.submit(), foo_task.submit(), foo_task.submit()]

    state = futures_flow(return_state=True)
    assert state.is_failed()
    assert state.message == "1/3 states failed."
    assert str(state) == "Failed('1/3 states failed.')"


def test_returned_states_all_completed(registry, logs):
    """Returned states that all completed -> Completed('All states completed.')."""

    @flow
    def all_good():
        return [foo_task(return_state=True), foo_task.submit(), bar_flow(return_state=True)]

    state = all_good(return_state=True)
    assert state.is_completed()
    assert str(state) == "Completed('All states completed.')"
    assert [s.result() for s in state.data] == ["foo", "foo", "bar"]


def test_returned_set_of_states_is_judged(registry):
    """Seed: multiple states may be returned in a set too."""

    @flow
    def set_flow():
        return {bad_task(return_state=True), foo_task(return_state=True)}

    state = set_flow(return_state=True)
    assert state.is_failed()
    assert state.message == "1/2 states failed."


def test_seed_return_manual_state(registry, logs, capsys):
    """Seed 'Return a manual state': Completed(message=...) is the run's final state."""

    @flow
    def always_succeeds_flow():
        always_fails_task.submit()
        y = always_succeeds_task.submit()
        if y.result() == "success":
            return Completed(message="I am happy with this result")
        else:
            return Failed(message="How did this happen!?")

    state = always_succeeds_flow(return_state=True)
    assert state.type is StateType.COMPLETED
    assert state.message == "I am happy with this result"
    (record,) = registry.runs(kind="flow")
    assert record.state_names == ["Pending", "Running", "Completed"]
    assert record.state.message == "I am happy with this result"
    assert (
        f"Flow run '{record.name}' - Finished in state Completed('I am happy with this result')"
        in logs.lines
    )


def test_returned_manual_failed_state_fails_run(registry):
    """A returned Failed(message=...) ends the run Failed; calling it raises with that message."""

    @flow
    def manual_failure():
        return Failed(message="How did this happen!?")

    state = manual_failure(return_state=True)
    assert state.is_failed()
    assert str(state) == "Failed('How did this happen!?')"
    with pytest.raises(FailedRun, match=re.escape("How did this happen!?")):
        manual_failure()


def test_returned_completed_state_with_data_gives_result():
    """A returned Completed(data=x) makes the call return x."""

    @flow
    def with_data():
        return Completed(message="done", data=123)

    assert with_data() == 123


def test_seed_custom_named_state(registry, logs):
    """Seed: Completed(name="Skipped") logs `Skipped('No work to do', type=COMPLETED)`."""

    @flow
    def my_flow(work_to_do: bool):
        if not work_to_do:
            return Completed(message="No work to do", name="Skipped")
        else:
            return Completed(message="Work was done 💪")

    state = my_flow(work_to_do=False, return_state=True)
    assert state.name == "Skipped"
    assert state.type is StateType.COMPLETED
    assert state.is_completed()
    (skipped_run,) = registry.runs(kind="flow")
    assert (
        f"Flow run '{skipped_run.name}' - "
        "Finished in state Skipped('No work to do', type=COMPLETED)" in logs.lines
    )
    assert skipped_run.state_names == ["Pending", "Running", "Skipped"]
    assert skipped_run.state.type is StateType.COMPLETED
    state = my_flow(work_to_do=True, return_state=True)
    assert str(state) == "Completed('Work was done 💪')"


def test_custom_named_state_with_emoji_message():
    """The seed's emoji message is kept verbatim in the custom state's display."""

    @flow
    def my_flow():
        return Completed(message="No work to do 💤", name="Skipped")

    assert str(my_flow(return_state=True)) == "Skipped('No work to do 💤', type=COMPLETED)"


# -- naming, description, version ------------------------------------------------------------


def test_default_name_is_function_name_as_slug():
    """Default flow name comes from the function name (`get_repo_info` -> `get-repo-info`)."""

    @flow
    def get_repo_info():
        pass

    @flow
    def single():
        pass

    assert get_repo_info.name == "get-repo-info"
    assert single.name == "single"
    assert flow(name="Hello Flow")(lambda: None).name == "Hello Flow"


def test_flow_object_keeps_function_identity():
    """A flow keeps the wrapped function's __name__, __doc__ and __wrapped__."""

    def documented():
        """Docs here."""

    f = flow(documented)
    assert isinstance(f, Flow)
    assert f.__name__ == "documented"
    assert f.__doc__ == "Docs here."
    assert f.__wrapped__ is documented
    assert f.fn is documented


def test_description_from_argument_or_docstring():
    """Seed: `description` defaults to the function's docstring."""

    @flow(name="My Flow", description="My flow with a name and description", log_prints=True)
    def described():
        """Ignored docstring."""

    @flow
    def docstring_only():
        """Fetch and summarise the data."""

    @flow
    def undocumented():
        pass

    assert described.description == "My flow with a name and description"
    assert docstring_only.description == "Fetch and summarise the data."
    assert undocumented.description is None


def _load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def test_version_is_hash_of_defining_file(tmp_path):
    """Seed: without `version`, the version is a hash of the file defining the flow."""
    source = (
        "from asyncflow import flow\n\n@flow\ndef a():\n    pass\n\n@flow\ndef b():\n    pass\n"
    )
    first = tmp_path / "flows_one.py"
    first.write_text(source)
    second = tmp_path / "flows_two.py"
    second.write_text(source + "# changed\n")
    one = _load_module(first, "asyncflow_test_flows_one")
    two = _load_module(second, "asyncflow_test_flows_two")
    assert isinstance(one.a.version, str)
    assert one.a.version  # not empty
    assert one.a.version == one.b.version  # same file, same hash
    assert one.a.version != two.a.version  # different content, different hash


def test_explicit_version_wins():
    """An explicit `version` string is used as given."""

    @flow(version="2024.1")
    def versioned():
        pass

    assert versioned.version == "2024.1"


def test_version_none_when_file_cannot_be_found():
    """Seed: if the defining file cannot be located, the version is None."""
    namespace = {"__name__": "asyncflow_no_such_module"}
    code = compile("def nowhere():\n    pass\n", "<no file>", "exec")
    exec(code, namespace)
    assert flow(namespace["nowhere"]).version is None


# -- flow_run_name ----------------------------------------------------------------------------


def test_flow_run_name_template_with_format_spec(registry, logs):
    """Seed: flow_run_name="{name}-on-{date:%A}" renders with the parameters."""

    @flow(flow_run_name="{name}-on-{date:%A}")
    def my_flow(name: str, date: datetime.datetime):
        return flow_run.name

    thursday = datetime.datetime(2024, 1, 4, 12, tzinfo=datetime.timezone.utc)
    assert my_flow(name="marvin", date=thursday) == "marvin-on-Thursday"
    (record,) = registry.runs(kind="flow")
    assert record.name == "marvin-on-Thursday"
    assert "asyncflow.engine - Created flow run 'marvin-on-Thursday' for flow 'my-flow'" in (
        logs.lines
    )
    assert "Flow run 'marvin-on-Thursday' - Finished in state Completed()" in logs.lines


def test_flow_run_name_template_uses_coerced_parameters(registry):
    """The template sees validated values: an ISO string date still renders `{date:%A}`."""

    @flow(flow_run_name="{name}-on-{date:%A}")
    def my_flow(name: str, date: datetime.datetime):
        pass

    my_flow("marvin", "2021-01-01T02:00:19.180906")
    assert next(registry.runs(kind="flow")).name == "marvin-on-Friday"


def test_flow_run_name_callable(registry):
    """Seed: a callable flow_run_name, e.g. '<weekday>-is-a-nice-day'."""

    def generate_flow_run_name():
        date = datetime.datetime.now(datetime.timezone.utc)
        return f"{date:%A}-is-a-nice-day"

    @flow(flow_run_name=generate_flow_run_name)
    def my_flow(name: str):
        pass

    before = datetime.datetime.now(datetime.timezone.utc)
    my_flow(name="marvin")
    after = datetime.datetime.now(datetime.timezone.utc)
    name = next(registry.runs(kind="flow")).name
    assert name in {f"{before:%A}-is-a-nice-day", f"{after:%A}-is-a-nice-day"}


def test_flow_run_name_callable_reads_runtime(registry):
    """Seed: the callable reads asyncflow.runtime.flow_run -> 'my-flow-with-marvin-and-100'."""

    def generate_flow_run_name():
        flow_name = flow_run.flow_name
        parameters = flow_run.parameters
        name = parameters["name"]
        limit = parameters["limit"]
        return f"{flow_name}-with-{name}-and-{limit}"

    @flow(flow_run_name=generate_flow_run_name)
    def my_flow(name: str, limit: int = 100):
        return flow_run.name

    assert my_flow(name="marvin") == "my-flow-with-marvin-and-100"
    assert next(registry.runs(kind="flow")).name == "my-flow-with-marvin-and-100"


def test_flow_run_name_template_naming_missing_parameter_is_rejected():
    """A template naming a parameter the function lacks fails at decoration, naming it."""
    with pytest.raises(InvalidDefinitionError, match=r"'\{nme\}-run'.*nme.*not a parameter"):

        @flow(flow_run_name="{nme}-run")
        def my_flow(name: str):
            pass


def test_flow_run_name_missing_key_with_var_kwargs_fails_at_call():
    """With **kwargs the template is accepted; a key not passed raises FlowRunNameError."""

    @flow(flow_run_name="{region}-run")
    def flexible(**kwargs):
        return kwargs

    with pytest.raises(FlowRunNameError, match="missing parameter 'region'"):
        flexible(other=1)


def test_flow_run_name_template_renders_var_kwargs_key(registry):
    """A template the decorator accepted because of **kwargs renders from the passed keyword."""

    @flow(flow_run_name="{region}-run")
    def flexible(**kwargs):
        return kwargs

    assert flexible(region="eu") == {"region": "eu"}
    assert next(registry.runs(kind="flow")).name == "eu-run"


def test_flow_run_name_callable_returning_non_string_fails():
    """A flow_run_name callable must return a string; otherwise FlowRunNameError."""

    @flow(flow_run_name=lambda: 42)
    def numbered():
        pass

    with pytest.raises(FlowRunNameError, match="string"):
        numbered()


def test_flow_run_name_must_be_str_or_callable():
    """A flow_run_name that is neither a string nor a callable is rejected at decoration."""
    with pytest.raises(InvalidDefinitionError, match="flow_run_name"):
        flow(flow_run_name=123)(lambda: None)


# -- with_options -----------------------------------------------------------------------------


def test_with_options_returns_modified_copy(registry):
    """`with_options` returns a new flow with changed options; the original is unchanged."""

    @flow(name="Original", retries=1, description="orig")
    def base(x: int) -> int:
        return x + 1

    copy = base.with_options(name="Copy", flow_run_name="copy-{x}", retries=3)
    assert copy is not base
    assert isinstance(copy, Flow)
    assert (copy.name, copy.retries, copy.description) == ("Copy", 3, "orig")
    assert (base.name, base.retries, base.flow_run_name) == ("Original", 1, None)
    assert copy("4") == 5
    assert base(1) == 2
    copy_run, base_run = registry.runs(kind="flow")
    assert (copy_run.spec_name, copy_run.name) == ("Copy", "copy-4")
    assert base_run.spec_name == "Original"


def test_with_options_validate_parameters_off():
    """`with_options(validate_parameters=False)` stops coercion for the copy only."""

    @flow
    def echo(x: int):
        return x

    assert echo("5") == 5
    assert echo.with_options(validate_parameters=False)("5") == "5"


def test_with_options_rejects_unknown_option():
    """`with_options(nmae=...)` raises InvalidDefinitionError suggesting 'name'."""

    @flow
    def f():
        pass

    with pytest.raises(InvalidDefinitionError, match="did you mean 'name'"):
        f.with_options(nmae="x")


def test_options_are_stored():
    """Decorator options are kept on the flow object."""

    @flow(retries=2, retry_delay_seconds=0.5, timeout_seconds=10, log_prints=True)
    def configured():
        pass

    assert configured.retries == 2
    assert configured.retry_delay_seconds == 0.5
    assert configured.timeout_seconds == 10
    assert configured.log_prints is True
    assert configured.validate_parameters is True


# -- retries and timeouts ---------------------------------------------------------------------


def test_flow_retries_until_success(registry):
    """Seed: with retries, a failing flow is retried; run_count counts the attempts."""
    attempts = []

    @flow(retries=2)
    def flaky():
        attempts.append(flow_run.run_count)
        if len(attempts) < 3:
            raise RuntimeError("not yet")
        return "ok"

    assert flaky() == "ok"
    assert attempts == [1, 2, 3]
    (record,) = registry.runs(kind="flow")
    assert record.state_types[0] is StateType.PENDING
    assert record.state_types[-1] is StateType.COMPLETED
    assert record.state_names.count("Retrying") == 2


def test_flow_failing_final_retry_ends_failed(registry):
    """Seed: if the flow fails on its final retry, the final state is Failed."""

    @flow(retries=1)
    def always_bad():
        raise RuntimeError("still bad")

    with pytest.raises(RuntimeError, match="still bad"):
        always_bad()
    (record,) = registry.runs(kind="flow")
    assert record.state.type is StateType.FAILED
    assert record.run_count == 2


@pytest.mark.anyio
async def test_async_flow_timeout_marks_failed(registry):
    """Seed: a flow exceeding timeout_seconds is marked failed (TimedOut, type FAILED)."""

    @flow(timeout_seconds=0.05)
    async def slow():
        await anyio.sleep(5)

    with anyio.fail_after(3):
        state = await slow(return_state=True)
    assert state.is_failed()
    assert state.name == "TimedOut"


# -- bad input --------------------------------------------------------------------------------


def test_decorating_non_callable_is_rejected():
    """`flow(42)` raises InvalidDefinitionError naming what it got."""
    with pytest.raises(InvalidDefinitionError, match=r"function or method.*int 42"):
        flow(42)


def test_decorating_a_string_hints_at_keyword_options():
    """`@flow("name")` raises InvalidDefinitionError suggesting `@flow(name=...)`."""
    with pytest.raises(InvalidDefinitionError, match=r"@flow\(name='My Flow'\)"):
        flow("My Flow")


def test_unknown_decorator_option_is_rejected():
    """`@flow(nmae="x")` raises InvalidDefinitionError with a 'did you mean' hint."""
    with pytest.raises(
        InvalidDefinitionError, match=r"unknown option.*'nmae'.*did you mean 'name'"
    ):

        @flow(nmae="x")
        def f():
            pass


def test_invalid_option_values_are_rejected():
    """Bad option values (negative retries, zero timeout, empty name) raise clear errors."""
    with pytest.raises(InvalidDefinitionError, match="retries"):
        flow(retries=-1)(lambda: None)
    with pytest.raises(InvalidDefinitionError, match="timeout_seconds"):
        flow(timeout_seconds=-1)(lambda: None)
    with pytest.raises(InvalidDefinitionError, match="name"):
        flow(name="")(lambda: None)


def test_invalid_definition_error_is_a_type_error():
    """Definition errors can also be caught as TypeError."""
    assert issubclass(InvalidDefinitionError, TypeError)


def test_generated_run_names_are_coolnames():
    """Run names are coolname's two-word names: adjective-animal, first 4 letters differ."""
    import coolname

    from asyncflow.naming import generate_run_name

    names = [generate_run_name() for _ in range(2000)]
    assert all(re.fullmatch(RUN_NAME, name) for name in names)
    assert len(set(names)) > 1900  # 368k possible names: repeats are rare
    # Every name is one coolname itself can produce: its words come from coolname's lists.
    adjectives, animals = set(), set()
    for _ in range(20000):
        first, second = coolname.generate(2)
        adjectives.add(first)
        animals.add(second)
    for name in names[:200]:
        first, second = name.split("-", 1)
        assert first[:4] != second[:4]
        assert first in adjectives and second in animals


def test_run_names_fall_back_to_coolname_when_its_lists_look_different(monkeypatch):
    """Should coolname's internals change, names still come from its public generate_slug."""
    import coolname

    from asyncflow import naming

    monkeypatch.setattr(coolname, "_default", object())
    monkeypatch.setattr(coolname, "generate_slug", lambda pattern: f"fallback-{pattern}")
    assert naming._name_generator()() == "fallback-2"
