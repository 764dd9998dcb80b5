"""Where a migrating Prefect 3 user's code can tell the difference (issue 13)."""

from __future__ import annotations

from typing import Any

import pytest

from asyncflow import flow, task


# -- 4: tasks and flows as methods bind per instance --------------------------------------------
class Counter:
    def __init__(self, value: int) -> None:
        self.value = value

    @task
    def get(self) -> int:
        return self.value

    @task
    async def aget(self) -> int:
        return self.value

    @flow
    def total(self) -> int:
        return self.get() + self.get.submit().result()


def test_two_instances_do_not_share_a_binding() -> None:
    """`a.get()` returned `b`'s value: the bound copy went through pickling by name and was
    the one module-level task, re-bound by every attribute access."""
    a, b = Counter(1), Counter(2)
    get_a, get_b = a.get, b.get
    assert (get_a.fn, get_b.fn) == (Counter.get.fn, Counter.get.fn)

    @flow
    def both() -> tuple[int, int]:
        return get_a(), get_b()

    assert both() == (1, 2)
    assert (a.total(), b.total()) == (2, 4)


@pytest.mark.anyio
async def test_async_task_methods_bind_per_instance() -> None:
    a, b = Counter(10), Counter(20)

    @flow
    async def both() -> list[int]:
        return [await a.aget(), await b.aget(), await a.aget.submit()]

    assert await both() == [10, 20, 10]


def test_task_method_on_a_class_defined_in_a_function() -> None:
    """It raised AttributeError: the copy looked the task up by its qualified name, which
    has `<locals>` in it."""

    class Local:
        def __init__(self, n: int) -> None:
            self.n = n

        @task
        def double(self) -> int:
            return 2 * self.n

    @flow
    def run_plain() -> list[int]:
        return [Local(3).double(), Local(4).double.submit().result()]

    assert run_plain() == [6, 8]


def test_bound_method_map_keeps_the_instance() -> None:
    class Scaler:
        def __init__(self, k: int) -> None:
            self.k = k

        @task
        def scale(self, x: int) -> int:
            return self.k * x

    @flow
    def run() -> list[int]:
        return Scaler(3).scale.map([1, 2, 3]).result()

    assert run() == [3, 6, 9]


def test_with_options_on_a_bound_method_keeps_its_instance() -> None:
    @flow
    def run() -> int:
        return Counter(7).get.with_options(name="renamed")()

    assert run() == 7


def test_rebinding_does_not_touch_the_class_attribute() -> None:
    before = Counter.__dict__["get"]
    bound = Counter(1).get
    assert bound is not before
    assert Counter.__dict__["get"] is before
    assert before._bound is not None  # UNBOUND sentinel, not an instance
    assert not isinstance(before._bound, Counter)


# -- 5: nested submission never deadlocks the bounded pool --------------------------------------
@task
def nested(depth: int) -> int:
    if depth == 0:
        return 0
    return nested.submit(depth - 1).result() + 1


def test_deep_recursive_submission_does_not_deadlock() -> None:
    """33 levels of `.submit()` + `.result()` inside tasks hung: each waiting parent held one
    of the pool's 6 (cpus + 4) threads. A waiting worker no longer counts."""
    import threading

    @flow
    def deep() -> int:
        return nested.submit(40).result()

    done: list[int] = []
    thread = threading.Thread(target=lambda: done.append(deep()), daemon=True)
    thread.start()
    thread.join(60)
    assert done == [40]


def test_as_completed_in_a_worker_frees_its_slot() -> None:
    from asyncflow import as_completed
    from asyncflow.task_runners import ThreadPoolTaskRunner

    @task
    def leaf(i: int) -> int:
        return i

    @task
    def fan_out(n: int) -> int:
        return sum(f.result() for f in as_completed([leaf.submit(i) for i in range(n)]))

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def run() -> list[int]:
        return [f.result() for f in [fan_out.submit(5), fan_out.submit(6)]]

    import threading

    done: list[list[int]] = []
    thread = threading.Thread(target=lambda: done.append(run()), daemon=True)
    thread.start()
    thread.join(60)
    assert done == [[10, 15]]


# -- 11: validation and names as Prefect has them -----------------------------------------------
@pytest.mark.parametrize("char", ["/", "%", "&", ">", "<"])
def test_names_with_banned_characters_raise_invalid_name_error(char: str) -> None:
    from asyncflow.exceptions import InvalidNameError

    with pytest.raises(InvalidNameError, match="must not contain"):
        flow(name=f"a{char}b")(lambda: None)
    with pytest.raises(InvalidNameError):
        task(name=f"a{char}b")(lambda: None)
    assert issubclass(InvalidNameError, ValueError)


@pytest.mark.parametrize("reserved", ["return_state", "wait_for"])
def test_reserved_parameter_names_are_refused(reserved: str) -> None:
    from asyncflow.exceptions import ReservedArgumentError

    namespace: dict[str, Any] = {}
    exec(f"def fn({reserved}=None): pass", namespace)
    with pytest.raises(ReservedArgumentError, match=f"'{reserved}' is a reserved argument"):
        flow(namespace["fn"])
    with pytest.raises(ReservedArgumentError):
        task(namespace["fn"])


def test_more_than_50_retry_delays_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="more than 50 retry delays per task"):
        task(retries=60, retry_delay_seconds=[1] * 51)(lambda: None)
    task(retries=60, retry_delay_seconds=[1] * 50)(lambda: None)  # 50 is fine


def test_timeout_zero_means_no_timeout() -> None:
    @task(timeout_seconds=5)
    def t() -> int:
        return 1

    assert t.timeout_seconds == 5
    assert t.with_options(timeout_seconds=0).timeout_seconds is None
    assert flow(timeout_seconds=0)(lambda: None).timeout_seconds is None


def test_lambda_flows_are_named_unknown_lambda() -> None:
    assert flow(lambda: 1).name == "unknown-lambda"


def test_prefect_exception_names() -> None:
    from asyncflow import exceptions

    assert exceptions.PrefectException is exceptions.AsyncflowException
    assert issubclass(exceptions.ParameterBindError, exceptions.SignatureMismatchError)
    for name in ("MissingResult", "UnfinishedRun", "PausedRun", "SignatureMismatchError"):
        assert issubclass(getattr(exceptions, name), exceptions.PrefectException)


def test_bad_call_arguments_raise_signature_mismatch() -> None:
    from asyncflow.exceptions import SignatureMismatchError

    @flow
    def takes_one(x: int) -> int:
        return x

    with pytest.raises(SignatureMismatchError):
        takes_one(1, 2)  # type: ignore[call-arg]


def test_parameters_named_like_the_engines_own_arguments() -> None:
    """`spec=` / `self=` by keyword reached the engine's own parameters."""

    @task
    def takes(spec: int, self: int) -> int:
        return spec + self

    @flow
    def run() -> list[int]:
        return [
            takes(spec=1, self=2),
            takes.submit(spec=3, self=4).result(),
            *takes.map(spec=[5], self=[6]).result(),
        ]

    assert run() == [3, 7, 11]


# -- 7: returned Cancelled states are cancellations ----------------------------------------------
def test_returned_cancelled_states_cancel_the_flow(registry: Any) -> None:
    from asyncflow.states import Cancelled, Completed

    seen: list[str] = []

    @flow(on_cancellation=[lambda f, r, s: seen.append(s.message)])
    def returns_states() -> Any:
        return Completed(data=1), Cancelled(), Completed(data=2)

    state = returns_states(return_state=True)
    assert state.type.value == "CANCELLED"
    assert state.message == "1/3 states cancelled."
    assert seen == ["1/3 states cancelled."]


def test_a_cancellation_outweighs_a_failure_as_in_prefect() -> None:
    from asyncflow.states import Cancelled, Failed

    @flow
    def returns_states() -> Any:
        return Failed(), Cancelled()

    state = returns_states(return_state=True)
    assert state.type.value == "CANCELLED" and state.message == "1/2 states cancelled."


# -- 8: hook decorators and on_running -----------------------------------------------------------
def test_hook_decorator_methods() -> None:
    seen: list[tuple[str, str]] = []

    @flow
    def my_flow(fail: bool) -> None:
        if fail:
            raise ValueError("no")

    @my_flow.on_completion
    def done(f: Any, run: Any, state: Any) -> None:
        seen.append(("completion", state.type.value))

    @my_flow.on_failure
    def failed(f: Any, run: Any, state: Any) -> None:
        seen.append(("failure", state.type.value))

    @my_flow.on_running
    def running(f: Any, run: Any, state: Any) -> None:
        seen.append(("running", state.type.value))

    assert done.__name__ == "done"  # the decorator returns the function itself
    my_flow(False)
    my_flow(True, return_state=True)
    assert seen == [
        ("running", "RUNNING"),
        ("completion", "COMPLETED"),
        ("running", "RUNNING"),
        ("failure", "FAILED"),
    ]
    seen.clear()
    my_flow.with_options(name="copy")(False)  # copies keep the hooks
    assert seen == [("running", "RUNNING"), ("completion", "COMPLETED")]


@pytest.mark.anyio
async def test_task_on_running_hooks_async_and_per_attempt() -> None:
    seen: list[str | None] = []

    async def async_hook(t: Any, run: Any, state: Any) -> None:
        seen.append(state.name)

    attempts: list[int] = []

    @task(retries=1, on_running=[async_hook])
    async def flaky() -> int:
        attempts.append(1)
        assert seen, "the on_running hook ran before the body"
        if len(attempts) == 1:
            raise ValueError("first attempt")
        return 1

    @flow
    async def run() -> int:
        return await flaky()

    assert await run() == 1
    assert seen == ["Running", "Retrying"]


def test_quote_unquote() -> None:
    from asyncflow import quote

    value = [1, 2]
    assert quote(value).unquote() is value


# -- 6: what .map() iterates, and return_state on .submit() / .map() ----------------------------
def test_map_does_not_iterate_defaults_kwargs_or_the_instance() -> None:
    @task
    def add(x: int, extra: tuple[int, ...] = (10, 20, 30, 40), **options: Any) -> int:
        return x + len(extra) + len(options)

    class Items(list[int]):
        @task
        def at(self, i: int) -> int:
            return self[i]

    @flow
    def run() -> tuple[list[int], list[int]]:
        return (
            add.map([1, 2], scale=[0, 0, 0]).result(),  # `scale` lands in **options
            Items([7, 8, 9]).at.map([0, 2]).result(),
        )

    assert run() == ([6, 7], [7, 9])


def test_return_state_on_submit_and_map() -> None:
    from asyncflow.states import State

    @task
    def double(x: int) -> int:
        return 2 * x

    @flow
    def run() -> tuple[Any, Any]:
        return double.submit(2, return_state=True), double.map([1, 2], return_state=True)

    one, many = run()
    assert isinstance(one, State) and one.result() == 4
    assert [s.result() for s in many] == [2, 4]


# -- 1: what a flow or task call gives back ------------------------------------------------------
@task
def _one() -> int:
    return 1


@task
def _boom() -> None:
    raise ValueError("boom")


def test_a_flow_returning_a_task_state_gives_back_that_state() -> None:
    @flow
    def returns_state() -> Any:
        return _one(return_state=True)

    @flow
    def returns_future() -> Any:
        return _one.submit()

    for fl in (returns_state, returns_future):
        returned = fl()
        assert returned.is_completed() and returned.result() == 1
        assert fl(return_state=True).result().result() == 1

    @flow
    def returns_failed_state() -> Any:
        return _boom(return_state=True)

    with pytest.raises(ValueError, match="boom"):
        returns_failed_state()
    state = returns_failed_state(return_state=True)
    assert state.message == "1/1 states failed."
    inner = state.result(raise_on_failure=False)
    assert inner.is_failed() and isinstance(inner.data, ValueError)


def test_a_flow_returning_states_gives_them_back_even_when_one_failed() -> None:
    @flow
    def pair() -> Any:
        return _one(return_state=True), _boom(return_state=True)

    good, bad = pair()  # recorded Failed, yet the call does not raise (as in Prefect)
    assert good.is_completed() and bad.is_failed()
    state = pair(return_state=True)
    assert state.is_failed() and state.message == "1/2 states failed."
    with pytest.raises(ValueError, match="boom"):
        state.result()
    assert [s.type.value for s in state.result(raise_on_failure=False)] == ["COMPLETED", "FAILED"]


def test_futures_anywhere_in_a_flow_return_value_become_states() -> None:
    from collections import namedtuple

    Pair = namedtuple("Pair", "left right")

    @flow
    def nested() -> Any:
        return {"a": _one.submit(), "b": [(_one.submit(), 2)], "c": Pair(_one.submit(), 3)}

    value = nested()
    assert value["a"].is_completed() and value["a"].result() == 1
    assert value["b"][0][0].result() == 1 and value["b"][0][1] == 2
    assert isinstance(value["c"], Pair) and value["c"].left.result() == 1


def test_a_flow_returning_plain_data_keeps_the_same_object() -> None:
    data = {"x": [1, 2, {"y": (3,)}]}

    @flow
    def plain() -> Any:
        return data

    assert plain() is data


def test_manual_states_returned_by_a_flow() -> None:
    from asyncflow.exceptions import FailedRun
    from asyncflow.states import Completed, Failed

    @flow
    def completed() -> Any:
        return Completed(data=5)

    @flow
    def failed() -> Any:
        return Failed(data="hello!")

    assert completed() == 5
    with pytest.raises(FailedRun, match="hello!"):
        failed()
    assert failed(return_state=True).result(raise_on_failure=False) == "hello!"


def test_a_task_call_gives_back_what_the_task_returned() -> None:
    from asyncflow.states import Completed, Failed

    @task
    def manual_failed() -> Any:
        return Failed(message="nope")

    @task
    def manual_completed() -> Any:
        return Completed(data=7)

    @task
    def states() -> Any:
        return _one(return_state=True), _boom(return_state=True)

    @flow
    def calls() -> Any:
        a, b, c = manual_failed(), manual_completed(), states()
        return a, b, c, manual_completed.submit().result(), manual_failed.submit()

    a, b, c, seven, failed_future_state = calls(return_state=True).data
    assert a.is_failed() and a.message == "nope"
    assert b.is_completed() and b.data == 7 and seven == 7
    assert [s.type.value for s in c] == ["COMPLETED", "FAILED"]
    assert failed_future_state.is_failed()


def test_default_messages_of_state_exceptions() -> None:
    from asyncflow.exceptions import CancelledRun, CrashedRun, FailedRun
    from asyncflow.states import Cancelled, Crashed, Failed

    for make, error, text in (
        (Failed, FailedRun, "Run failed."),
        (Crashed, CrashedRun, "Run crashed."),
        (Cancelled, CancelledRun, "Run cancelled."),
    ):
        with pytest.raises(error) as info:
            make().result()
        assert str(info.value) == text


def test_raise_state_exception() -> None:
    from asyncflow.states import Completed, Failed, raise_state_exception

    assert raise_state_exception(Completed(data=1)) is None
    with pytest.raises(KeyError):
        raise_state_exception(Failed(data=KeyError("k")))


def test_result_of_an_unfinished_or_paused_state() -> None:
    from asyncflow.exceptions import PausedRun, UnfinishedRun
    from asyncflow.states import Paused, Pending, Running

    with pytest.raises(UnfinishedRun, match="Run is in PENDING state"):
        Pending().result()
    with pytest.raises(UnfinishedRun, match="RUNNING"):
        Running().result()
    with pytest.raises(PausedRun):
        Paused().result()


# -- 2: `await state.result()` -----------------------------------------------------------------
@pytest.mark.anyio
async def test_await_state_result_and_plain_result_both_work() -> None:
    from asyncflow.states import Completed, Failed, raise_state_exception

    @task
    async def two() -> int:
        return 2

    @flow
    async def uses_both() -> tuple[int, int, int]:
        state = await two(return_state=True)
        return state.result(), await state.result(), await state.aresult()

    assert await uses_both() == (2, 2, 2)
    state = Completed(data=3)
    assert await state.result() == 3
    assert state.result() == 3
    assert await state.result(raise_on_failure=False) == 3
    with pytest.raises(ValueError):
        await Failed(data=ValueError("x")).result()
    assert await raise_state_exception(state) is None
    with pytest.raises(ValueError):
        await raise_state_exception(Failed(data=ValueError("x")))


@pytest.mark.anyio
async def test_await_result_inside_an_async_generator_and_comprehension() -> None:
    from asyncflow.states import Completed

    states = [Completed(data=i) for i in range(3)]

    async def agen() -> Any:
        for s in states:
            yield await s.result()

    assert [v async for v in agen()] == [0, 1, 2]
    assert [await s.result() for s in states] == [0, 1, 2]
    assert [s.result() for s in states] == [0, 1, 2]


# -- 3: blocking on futures in async code -------------------------------------------------------
@pytest.mark.anyio
async def test_blocking_on_thread_futures_in_async_code_works() -> None:
    @task
    def inc(x: int) -> int:
        return x + 1

    @flow
    def sync_child() -> int:
        return 3

    @flow
    async def parent() -> Any:
        future = inc.submit(1)
        waited = inc.submit(2)
        waited.wait()
        return (
            future.result(),
            waited.state.is_completed(),
            inc.map([1, 2]).result(),
            sync_child(wait_for=[inc.submit(1)]),
        )

    assert await parent() == (2, True, [2, 3], 3)


@pytest.mark.anyio
async def test_blocking_on_an_async_task_future_on_its_own_loop_is_a_clear_error() -> None:
    from asyncflow.exceptions import FutureUsageError

    @task
    async def ainc(x: int) -> int:
        return x + 1

    @flow
    async def parent() -> Any:
        future = ainc.submit(1)
        with pytest.raises(FutureUsageError, match="await future"):
            future.result()
        with pytest.raises(FutureUsageError):
            ainc.map([1, 2]).result()
        return await future

    assert await parent() == 2


# -- 6: what .map() iterates ---------------------------------------------------------------------
@task
def _ident(x: Any) -> Any:
    return x


@task
def _kind(x: Any) -> str:
    return type(x).__name__


@task
def _three() -> list[int]:
    return [1, 2, 3]


def test_map_over_a_state_or_future_holding_a_list() -> None:
    @flow
    def mapping() -> Any:
        state = _three(return_state=True)
        return _ident.map(state).result(), _ident.map(_three.submit()).result()

    assert mapping() == ([1, 2, 3], [1, 2, 3])


def test_map_over_annotated_lists_wraps_each_element() -> None:
    from asyncflow import allow_failure, quote

    @flow
    def mapping() -> Any:
        futures = [_ident.submit(1), _boom.submit()]
        quoted_future = _ident.submit(9)
        return (
            _kind.map(quote([1, 2])).result(),
            _kind.map(allow_failure(futures)).result(),
            _kind.map(quote([quoted_future])).result(),
        )

    quoted, allowed, futures_quoted = mapping()
    assert quoted == ["int", "int"]
    assert allowed == ["int", "ValueError"]
    assert futures_quoted == ["TaskRunFuture"]


def test_map_over_a_failed_upstream_raises_upstream_task_error() -> None:
    from asyncflow.exceptions import UpstreamTaskError

    @flow
    def mapping() -> None:
        with pytest.raises(UpstreamTaskError, match="did not reach a 'COMPLETED' state"):
            _ident.map(_boom.submit())
        with pytest.raises(UpstreamTaskError, match="Upstream task run '"):
            _ident.map(_boom(return_state=True))

    mapping()


def test_opaque_resolves_the_top_level_only() -> None:
    from asyncflow import opaque

    @flow
    def passing() -> Any:
        inner = _ident.submit(1)
        nested = {"f": inner}
        return (
            _kind.submit(opaque(_ident.submit(5))).result(),  # resolved: int
            _ident.submit(opaque(nested)).result()["f"] is inner,  # not walked into
            _ident.submit(nested).result()["f"],  # walked into by default
        )

    assert passing() == ("int", True, 1)


# -- 8: tags --------------------------------------------------------------------------------------
def test_tags_context_adds_to_flow_and_task_runs() -> None:
    from asyncflow import runtime, tags

    @task(tags=["t1"])
    def tagged() -> tuple[list[str], list[str]]:
        return runtime.task_run.tags, runtime.flow_run.tags

    @flow
    def child() -> list[str]:
        return runtime.flow_run.tags

    @flow
    def parent() -> Any:
        with tags("inner") as current:
            inline, sub, submitted = tagged(), child(), tagged.submit().result()
        return inline, sub, submitted, runtime.flow_run.tags, tagged(), current

    assert tagged.tags == {"t1"} and isinstance(tagged.tags, set)
    with tags("outer", "x"):
        inline, sub, submitted, own, after, current = parent()
    assert current == {"inner", "outer", "x"}
    assert inline == submitted == (["inner", "outer", "t1", "x"], ["outer", "x"])
    assert sub == ["inner", "outer", "x"]
    assert own == ["outer", "x"]
    assert after == (["outer", "t1", "x"], ["outer", "x"])
    assert parent()[3] == []  # outside the block: no tags
    assert tagged.with_options(tags=["z"]).tags == {"z"}


@pytest.mark.anyio
async def test_tags_reach_async_tasks_in_the_task_group() -> None:
    from asyncflow import runtime, tags

    @task(tags=["a"])
    async def tagged() -> list[str]:
        return runtime.task_run.tags

    @flow
    async def parent() -> Any:
        with tags("b"):
            future = tagged.submit()
        return await future, await tagged()

    assert await parent() == (["a", "b"], ["a"])


def test_bad_tags_are_a_type_error() -> None:
    from asyncflow import tags

    with pytest.raises(TypeError, match="Tags must be strings"), tags(1):  # type: ignore[arg-type]
        pass
    with pytest.raises(TypeError, match="list of strings"):

        @task(tags="abc")
        def one_string() -> None: ...


def test_scheduled_start_time_outside_a_run_is_now() -> None:
    import datetime

    from asyncflow import runtime

    before = datetime.datetime.now(datetime.timezone.utc)
    value = runtime.flow_run.scheduled_start_time
    assert before <= value <= datetime.datetime.now(datetime.timezone.utc)


# -- 9: task runners as Prefect objects ---------------------------------------------------------
@task
def _add(x: int, y: int = 10) -> int:
    return x + y


def _record_init(path: str) -> None:
    with open(path, "a") as f:
        f.write("init\n")


def test_runner_submit_and_map_as_in_prefect() -> None:
    from asyncflow.task_runners import ThreadPoolTaskRunner

    with ThreadPoolTaskRunner(max_workers=2) as runner:
        future = runner.submit(_add, {"x": 1})
        chained = runner.submit(_add, {"x": future, "y": 1}, wait_for=[future])
        mapped = runner.map(_add, {"x": [1, 2, 3]})
        assert (future.result(), chained.result(), mapped.result()) == (11, 12, [11, 12, 13])

    @flow
    def inside() -> Any:
        with ThreadPoolTaskRunner() as own:
            return own.submit(_add, {"x": 5, "y": 5}).result()

    assert inside() == 10


def test_runner_must_be_started_and_parameters_checked() -> None:
    from asyncflow.task_runners import ThreadPoolTaskRunner

    runner = ThreadPoolTaskRunner()
    with pytest.raises(RuntimeError, match="not started"):
        runner.submit(_add, {"x": 1})
    with runner:
        with pytest.raises(TypeError, match="parameters must be a dict"):
            runner.submit(_add, [1])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="Expected an asyncflow task"):
            runner.submit(print, {})
    with runner:  # entered again after its shutdown: works again
        assert runner.submit(_add, {"x": 2}).result() == 12


def test_runner_equality_name_and_duplicate() -> None:
    from asyncflow.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    assert ThreadPoolTaskRunner(4) == ThreadPoolTaskRunner(4) != ThreadPoolTaskRunner(5)
    assert ThreadPoolTaskRunner() != ProcessPoolTaskRunner()
    assert ThreadPoolTaskRunner().name == "threadpool"
    assert ProcessPoolTaskRunner().name == "processpool"
    runner = ProcessPoolTaskRunner(2, initializer=_record_init, initargs=("x",))
    assert runner.duplicate() == runner
    with pytest.raises(TypeError, match="initializer must be callable"):
        ProcessPoolTaskRunner(initializer=3)  # type: ignore[arg-type]


def test_process_pool_initializer_runs_in_each_worker(tmp_path: Any) -> None:
    from asyncflow.task_runners import ProcessPoolTaskRunner

    marker = tmp_path / "inits"

    @flow(task_runner=ProcessPoolTaskRunner(1, initializer=_record_init, initargs=(str(marker),)))
    def in_processes() -> list[int]:
        return _add.map([1, 2]).result()

    assert in_processes() == [11, 12]
    assert marker.read_text() == "init\n"


# -- 11: messages and log lines -----------------------------------------------------------------
def test_option_errors_have_prefects_types_and_words() -> None:
    def fn() -> None: ...

    with pytest.raises(TypeError, match="Expected string for flow parameter 'name'; got int"):
        flow(name=3)(fn)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="Expected string or callable for 'flow_run_name'"):
        flow(flow_run_name=3)(fn)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="Expected iterable for 'on_completion'; got function"):
        flow(on_completion=lambda *a: None)(fn)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="Expected callables in 'on_failure'; got int"):
        task(on_failure=[1])(fn)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="`retry_jitter_factor` must be a number >= 0"):
        task(retry_jitter_factor=-1)(fn)

    @flow(flow_run_name=lambda: 5)  # type: ignore[arg-type,return-value]
    def badly_named() -> None: ...

    with pytest.raises(TypeError, match="for 'flow_run_name' returned type int but a string"):
        badly_named()


def test_beginning_and_retry_log_lines(logs: Any) -> None:
    attempts: list[int] = []

    @task(retries=2)
    def flaky() -> None:
        attempts.append(1)
        raise ValueError("nope")

    @task(retries=1, retry_delay_seconds=0.01)
    def fails_once() -> int:
        attempts.append(1)
        if len(attempts) < 5:
            raise KeyError("k")
        return 1

    @flow(retries=1)
    def retried() -> None:
        if not attempts:
            attempts.append(0)
            raise RuntimeError("first")

    @flow
    def outer() -> None:
        flaky(return_state=True)
        fails_once()

    outer()
    attempts.clear()
    retried()
    lines = logs.messages
    assert any(
        m.startswith("Beginning flow run '") and m.endswith("for flow 'outer'") for m in lines
    )
    assert (
        "Task run failed with exception: ValueError('nope') - Retry 1/2 will start immediately"
        in lines
    )
    assert "Task run failed with exception: ValueError('nope') - Retries are exhausted" in lines
    assert (
        "Task run failed with exception: KeyError('k') - Retry 1/1 will start "
        "0.01 second(s) from now"
    ) in lines
    assert (
        "Received non-final state 'AwaitingRetry' when proposing final state 'Failed' and will "
        "attempt to run again..."
    ) in lines


def test_a_returned_cancelling_state_ends_the_flow_cancelled_with_its_hooks() -> None:
    from asyncflow.states import Cancelling

    seen: list[str] = []

    @flow(on_cancellation=[lambda f, r, s: seen.append(s.type.value)])
    def cancels() -> Any:
        return Cancelling(message="stop here")

    state = cancels(return_state=True)
    assert state.is_cancelled() and state.message == "stop here"
    assert seen == ["CANCELLED"]


# -- review findings ------------------------------------------------------------------------------
def test_futures_in_container_subclasses_become_states() -> None:
    import collections

    @flow
    def returns_map() -> Any:
        return _ident.map([1, 2])

    @flow
    def returns_dicts() -> Any:
        ordered = collections.OrderedDict(a=_one.submit())
        default = collections.defaultdict(list, b=_one.submit())
        return ordered, default

    mapped = returns_map()
    assert type(mapped) is list and [s.result() for s in mapped] == [1, 2]
    ordered, default = returns_dicts()
    assert type(ordered) is collections.OrderedDict and ordered["a"].result() == 1
    assert type(default) is collections.defaultdict and default.default_factory is list
    assert default["b"].result() == 1

    @flow
    def returns_failed_futures() -> Any:
        return [_boom.submit(), _boom.submit()]

    assert returns_failed_futures(return_state=True).message == "2/2 states failed."


def test_a_task_returning_a_namedtuple_of_states() -> None:
    from collections import namedtuple

    Pair = namedtuple("Pair", "a b")

    @task
    def pair() -> Any:
        return Pair(_one(return_state=True), _one(return_state=True))

    @flow
    def runs() -> Any:
        return pair(return_state=True)

    state = runs()
    assert state.is_completed() and isinstance(state.data, Pair)
    assert [s.result() for s in state.data] == [1, 1]


def test_a_non_final_state_as_an_allowed_upstream_is_not_ready() -> None:
    from asyncflow import allow_failure
    from asyncflow.exceptions import UpstreamTaskError
    from asyncflow.states import Running

    @flow
    def runs() -> Any:
        with pytest.raises(UpstreamTaskError):
            _ident(allow_failure(Running()))
        return _ident(allow_failure(Running()), return_state=True)

    assert runs(return_state=True).result(raise_on_failure=False).name == "NotReady"


@pytest.mark.anyio
async def test_await_get_state_exception() -> None:
    from asyncflow.states import Failed, get_state_exception

    error = ValueError("x")
    assert await get_state_exception(Failed(data=error)) is error
    assert get_state_exception(Failed(data=error)) is error


def test_tags_from_a_generator() -> None:
    @task(tags=(t for t in ("a", "b")))
    def tagged() -> None: ...

    assert tagged.tags == {"a", "b"}


def test_a_runner_restarted_while_an_old_worker_waits_still_runs_work() -> None:
    import threading

    from asyncflow.task_runners import ThreadPoolTaskRunner
    from asyncflow.task_runners.base import waiting

    release = threading.Event()
    inside = threading.Event()

    def blocked_worker() -> None:
        with waiting():
            inside.set()
            release.wait(10)

    runner = ThreadPoolTaskRunner(max_workers=1)
    runner.start()
    runner.submit_work(blocked_worker)
    assert inside.wait(10)
    runner.shutdown(wait=False)
    ran = threading.Event()
    with runner:  # entered again while the old worker still waits
        release.set()
        runner.submit_work(ran.set)
        assert ran.wait(10)
