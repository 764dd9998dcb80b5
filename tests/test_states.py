"""States: StateType, the state constructors, predicates, `result()`, display forms, links."""

import datetime
import re

import pytest

import asyncflow
from asyncflow import flow, task
from asyncflow.exceptions import CancelledRun, CrashedRun, FailedRun
from asyncflow.states import (
    AwaitingRetry,
    Cancelled,
    Completed,
    Crashed,
    Failed,
    Paused,
    Pending,
    Retrying,
    Running,
    Scheduled,
    State,
    StateType,
    TimedOut,
)

UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

# -- StateType and constructors ---------------------------------------------------------------


def test_state_type_members():
    """StateType has exactly Prefect's nine state types, valued by their names."""
    assert {t.name for t in StateType} == {
        "SCHEDULED",
        "PENDING",
        "RUNNING",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "CRASHED",
        "PAUSED",
        "CANCELLING",
    }
    assert all(t.value == t.name for t in StateType)
    assert StateType("COMPLETED") is StateType.COMPLETED


def test_state_and_state_type_exported_from_package():
    """`State` and `StateType` are importable from the package root as in Prefect."""
    assert asyncflow.State is State
    assert asyncflow.StateType is StateType


@pytest.mark.parametrize(
    ("constructor", "type_", "name"),
    [
        (Completed, StateType.COMPLETED, "Completed"),
        (Failed, StateType.FAILED, "Failed"),
        (Crashed, StateType.CRASHED, "Crashed"),
        (Cancelled, StateType.CANCELLED, "Cancelled"),
        (Pending, StateType.PENDING, "Pending"),
        (Running, StateType.RUNNING, "Running"),
        (Scheduled, StateType.SCHEDULED, "Scheduled"),
        (AwaitingRetry, StateType.SCHEDULED, "AwaitingRetry"),
        (Retrying, StateType.RUNNING, "Retrying"),
        (TimedOut, StateType.FAILED, "TimedOut"),
        (Paused, StateType.PAUSED, "Paused"),
    ],
)
def test_constructor_type_and_default_name(constructor, type_, name):
    """Each constructor makes a state of the right type with its default display name."""
    state = constructor()
    assert isinstance(state, State)
    assert state.type is type_
    assert state.name == name
    assert state.message is None
    assert state.data is None


@pytest.mark.parametrize(
    "constructor",
    [
        Completed,
        Failed,
        Crashed,
        Cancelled,
        Pending,
        Running,
        Scheduled,
        AwaitingRetry,
        Retrying,
        TimedOut,
        Paused,
    ],
)
def test_constructors_accept_message_name_data(constructor):
    """Every constructor accepts message=, name= and data= and keeps its state type."""
    default_type = constructor().type
    state = constructor(message="why", name="Custom", data={"k": 1})
    assert state.type is default_type
    assert state.name == "Custom"
    assert state.message == "why"
    assert state.data == {"k": 1}


def test_state_has_utc_timestamp():
    """A new state carries the (timezone-aware) time it was created."""
    before = datetime.datetime.now(datetime.timezone.utc)
    state = Completed()
    after = datetime.datetime.now(datetime.timezone.utc)
    assert state.timestamp.tzinfo is not None
    assert before - datetime.timedelta(seconds=1) <= state.timestamp <= after


# -- predicates -------------------------------------------------------------------------------

PREDICATES = {
    StateType.SCHEDULED: "is_scheduled",
    StateType.PENDING: "is_pending",
    StateType.RUNNING: "is_running",
    StateType.COMPLETED: "is_completed",
    StateType.FAILED: "is_failed",
    StateType.CANCELLED: "is_cancelled",
    StateType.CRASHED: "is_crashed",
    StateType.PAUSED: "is_paused",
    StateType.CANCELLING: "is_cancelling",
}


@pytest.mark.parametrize("type_", list(StateType))
def test_exactly_one_predicate_is_true(type_):
    """For each state type exactly its own `is_<type>()` predicate is true."""
    state = State(type_)
    truths = {pred: getattr(state, pred)() for pred in PREDICATES.values()}
    assert truths == {pred: pred == PREDICATES[type_] for pred in PREDICATES.values()}


def test_custom_name_keeps_type_predicates():
    """A custom-named state answers predicates by its type, not its name."""
    skipped = Completed(message="No work to do", name="Skipped")
    assert skipped.is_completed()
    assert not skipped.is_failed()
    assert TimedOut().is_failed()
    assert Retrying().is_running()
    assert AwaitingRetry().is_scheduled()


def test_is_final():
    """Completed, Failed, Cancelled and Crashed are final; the others are not."""
    final = {t for t in StateType if State(t).is_final()}
    assert final == {
        StateType.COMPLETED,
        StateType.FAILED,
        StateType.CANCELLED,
        StateType.CRASHED,
    }


# -- result() ---------------------------------------------------------------------------------


def test_completed_result_returns_data():
    """`Completed(data=x).result()` returns x."""
    assert Completed(data=42).result() == 42
    assert Completed().result() is None


def test_failed_result_raises_its_exception():
    """A Failed state holding an exception raises that very exception from result()."""
    exc = ValueError("I fail successfully")
    state = Failed(message="Task run encountered an exception.", data=exc)
    with pytest.raises(ValueError, match="I fail successfully") as info:
        state.result()
    assert info.value is exc


def test_failed_result_without_raising_returns_exception():
    """`result(raise_on_failure=False)` returns the failed state's exception instead."""
    exc = ValueError("bad")
    assert Failed(data=exc).result(raise_on_failure=False) is exc


def test_failed_without_exception_raises_failed_run():
    """A Failed state with no exception raises FailedRun carrying its message."""
    with pytest.raises(FailedRun, match="How did this happen"):
        Failed(message="How did this happen!?").result()
    assert isinstance(Failed(message="m").result(raise_on_failure=False), FailedRun)


def test_crashed_and_cancelled_result_raise():
    """Crashed raises CrashedRun and Cancelled raises CancelledRun from result()."""
    with pytest.raises(CrashedRun, match="boom"):
        Crashed(message="boom").result()
    with pytest.raises(CancelledRun, match="stop"):
        Cancelled(message="stop").result()


def test_timed_out_result_raises():
    """TimedOut is a failure: result() raises, result(raise_on_failure=False) does not."""
    state = TimedOut(message="Flow run exceeded timeout of 1.0 second(s)")
    with pytest.raises(FailedRun):
        state.result()
    assert isinstance(state.result(raise_on_failure=False), FailedRun)


# -- display ----------------------------------------------------------------------------------


def test_str_forms_match_seed_log_lines():
    """str(state) is the seed's 'Finished in state ...' form."""
    assert str(Completed()) == "Completed()"
    assert str(Completed(message="All states completed.")) == "Completed('All states completed.')"
    assert (
        str(Completed(message="I am happy with this result"))
        == "Completed('I am happy with this result')"
    )
    assert str(Failed(message="1/3 states failed.")) == "Failed('1/3 states failed.')"
    assert (
        str(Completed(message="No work to do", name="Skipped"))
        == "Skipped('No work to do', type=COMPLETED)"
    )


def test_repr_forms_match_seed():
    """repr(state) is `Name(message=..., type=TYPE, result=...)` as in the seed."""
    assert repr(Completed(data="foo")) == "Completed(message=None, type=COMPLETED, result='foo')"
    assert (
        repr(Failed(message="Task run encountered an exception.", data=ValueError("I am bad task")))
        == "Failed(message='Task run encountered an exception.', type=FAILED, "
        "result=ValueError('I am bad task'))"
    )
    assert (
        repr(Completed(message="No work to do", name="Skipped"))
        == "Skipped(message='No work to do', type=COMPLETED, result=None)"
    )


# -- state_details links ----------------------------------------------------------------------


def test_flow_state_details_carry_flow_run_id(registry):
    """A flow run's final state links its flow_run_id (and no task run)."""

    @flow
    def linked():
        return 1

    state = linked(return_state=True)
    (record,) = registry.runs(kind="flow")
    assert state.state_details.flow_run_id == record.id
    assert state.state_details.task_run_id is None
    assert state.state_details.parent_task_run_id is None


def test_task_state_details_carry_task_and_flow_ids(registry):
    """A task run's state links its task_run_id and the flow run it belongs to."""

    @task
    def add_one(x):
        return x + 1

    seen = []

    @flow
    def outer():
        seen.append(add_one(1, return_state=True))

    outer()
    (inner_state,) = seen
    (flow_record,) = registry.runs(kind="flow")
    (task_record,) = registry.runs(kind="task", spec_name="add_one")
    assert inner_state.result() == 2
    assert inner_state.state_details.task_run_id == task_record.id
    assert inner_state.state_details.flow_run_id == flow_record.id


def test_nested_flow_links_via_parent_task_run(registry):
    """Seed: child state_details has parent_task_run_id; that task run's has child_flow_run_id."""

    @flow(name="Nestedflow")
    def child():
        return "inner"

    seen = []

    @flow
    def parent():
        seen.append(child(return_state=True))

    parent()
    (child_state,) = seen
    parent_record, child_record = registry.runs(kind="flow")
    assert child_state.state_details.flow_run_id == child_record.id
    link_task_id = child_state.state_details.parent_task_run_id
    assert link_task_id is not None
    link_task = registry.get(link_task_id)
    assert link_task.kind == "task"
    assert link_task.parent_flow_run_id == parent_record.id
    assert link_task.state.state_details.child_flow_run_id == child_record.id
    assert child_record.parent_task_run_id == link_task_id
    assert link_task.state_names == ["Pending", "Running", "Completed"]


def test_recorded_states_have_details_and_increasing_timestamps(registry):
    """Every recorded state of a run carries its run's id and a non-decreasing timestamp."""

    @flow
    def timed():
        return None

    timed()
    (record,) = registry.runs(kind="flow")
    assert record.state_names == ["Pending", "Running", "Completed"]
    stamps = [s.timestamp for s in record.states]
    assert stamps == sorted(stamps)
    assert all(s.state_details.flow_run_id == record.id for s in record.states)
    assert re.fullmatch(UUID_RE, str(record.id))
