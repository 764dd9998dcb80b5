"""Flow parameters: binding, pydantic coercion, invalid parameters, size limit, validator reuse."""

import datetime
import re
from typing import Optional

import anyio.lowlevel
import pydantic
import pytest
from pydantic import BaseModel

from asyncflow import flow
from asyncflow.exceptions import ParameterBindError, ParameterSizeError, ParameterTypeError
from asyncflow.runtime import flow_run
from asyncflow.states import StateType

SEED_INVALID_MESSAGE = (
    "Flow run received invalid parameters:\n"
    " - model.a: Input should be a valid integer, unable to parse string as an integer"
)


class Model(BaseModel):
    a: int
    b: str


# -- binding ----------------------------------------------------------------------------------


def test_positional_keyword_and_default_binding(registry):
    """Positional and keyword arguments bind to the signature; defaults fill the rest."""

    @flow
    def bind(a, b, c=3, *, d=4):
        return (a, b, c, d)

    assert bind(1, 2) == (1, 2, 3, 4)
    assert bind(1, b=2, d=5) == (1, 2, 3, 5)
    assert bind(c=30, b=20, a=10) == (10, 20, 30, 4)
    first, second, third = registry.runs(kind="flow")
    assert first.parameters == {"a": 1, "b": 2, "c": 3, "d": 4}
    assert second.parameters == {"a": 1, "b": 2, "c": 3, "d": 5}
    assert third.parameters == {"a": 10, "b": 20, "c": 30, "d": 4}


def test_var_args_and_var_kwargs_binding(registry):
    """*args and **kwargs collect the extra arguments and are passed back to the function."""

    @flow
    def variadic(a, *args, b=2, **kwargs):
        return a, args, b, kwargs

    assert variadic(1, 2, 3, b=4, c=5) == (1, (2, 3), 4, {"c": 5})
    assert variadic(0) == (0, (), 2, {})
    first = next(registry.runs(kind="flow"))
    assert first.parameters == {"a": 1, "args": (2, 3), "b": 4, "kwargs": {"c": 5}}


def test_positional_only_parameters(registry):
    """Positional-only parameters bind and are passed positionally."""

    @flow
    def pos_only(a: int, /, b: int = 0):
        return a - b

    assert pos_only("10", b="3") == 7


def test_var_args_are_coerced_element_wise():
    """Type hints on *args / **kwargs coerce each element."""

    @flow
    def typed(*args: int, **kwargs: float):
        return args, kwargs

    assert typed("1", "2", x="1.5") == ((1, 2), {"x": 1.5})


def test_missing_argument_is_a_bind_error(registry):
    """A missing required argument raises ParameterBindError naming it; no run is created."""

    @flow
    def needs(a, b):
        pass

    with pytest.raises(ParameterBindError, match="missing a required argument: 'b'"):
        needs(1)
    assert list(registry.runs()) == []


def test_unexpected_argument_is_a_bind_error(registry):
    """Too many or unknown arguments raise ParameterBindError with the signature."""

    @flow
    def takes_one(a):
        pass

    with pytest.raises(ParameterBindError, match="unexpected keyword argument 'z'"):
        takes_one(1, z=2)
    with pytest.raises(ParameterBindError, match=re.escape("signature '(a)'")):
        takes_one(1, 2)
    assert issubclass(ParameterBindError, TypeError)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((1,), {}),
        ((1, 5), {}),
        ((), {"a": 1}),
        ((1,), {"c": 9}),
        ((), {"c": 9, "a": 1}),
        ((1, 2, 3), {}),
        ((1,), {"c": 5, "b": 4}),
        ((), {}),
        ((1, 2, 3, 4), {}),
        ((1,), {"a": 2}),
        ((1,), {"zz": 1}),
    ],
)
def test_fast_binding_agrees_with_inspect(args, kwargs):
    """Plain signatures bind without inspect: same values, order, explicit names and errors."""
    import inspect

    from asyncflow.parameters import Signature

    def fn(a, b=2, c=3):
        pass

    try:
        expected = inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as exc:
        with pytest.raises(ParameterBindError, match=re.escape(str(exc))):
            Signature(fn).bind(args, kwargs)
        return
    explicit = frozenset(expected.arguments)
    expected.apply_defaults()
    parameters, got_explicit = Signature(fn).bind(args, kwargs)
    assert list(parameters.items()) == list(expected.arguments.items())
    assert got_explicit == explicit


# -- coercion ---------------------------------------------------------------------------------


@flow
def what_day_is_it(date: Optional[datetime.datetime] = None):  # noqa: UP045 - the seed's form
    if date is None:
        date = datetime.datetime.now(datetime.timezone.utc)
    print(f"It was {date.strftime('%A')} on {date.isoformat()}")
    return date


def test_seed_datetime_from_iso_string(capsys):
    """Seed: the ISO string becomes a datetime: 'It was Friday on 2021-01-01T02:00:19.180906'."""
    result = what_day_is_it("2021-01-01T02:00:19.180906")
    assert capsys.readouterr().out == "It was Friday on 2021-01-01T02:00:19.180906\n"
    assert result == datetime.datetime(2021, 1, 1, 2, 0, 19, 180906)


def test_seed_datetime_default_none(capsys):
    """Seed: with no argument the Optional default None is used (now)."""
    result = what_day_is_it()
    assert isinstance(result, datetime.datetime)
    assert capsys.readouterr().out.startswith("It was ")


def test_base_model_from_dict(registry):
    """Seed: a dict for a BaseModel parameter is coerced to the model."""

    @flow
    def takes_model(model: Model):
        return model

    result = takes_model(model={"a": "1", "b": "fine"})
    assert isinstance(result, Model)
    assert result == Model(a=1, b="fine")


def test_int_from_string(registry):
    """Seed: `x: int` given "5" resolves to 5, in the body and in the recorded parameters."""

    @flow
    def takes_int(x: int):
        return x, flow_run.parameters

    value, seen = takes_int("5")
    assert value == 5
    assert type(value) is int
    assert seen == {"x": 5}
    assert next(registry.runs(kind="flow")).parameters == {"x": 5}


def test_values_of_exactly_the_annotated_scalar_type_skip_pydantic(monkeypatch):
    """The fast path takes only exact scalar types; everything else is still coerced/checked."""
    import enum

    class Color(str, enum.Enum):
        RED = "red"

    @flow
    def scalars(i: int, f: float, s: str, b: bool):
        return i, f, s, b

    assert scalars(1, 2.5, "x", True) == (1, 2.5, "x", True)  # builds the validator
    calls = []
    adapter = scalars.signature._adapter
    real = adapter.validate_python
    monkeypatch.setattr(adapter, "validate_python", lambda v: calls.append(v) or real(v))

    assert scalars(1, 2.5, "x", True) == (1, 2.5, "x", True)
    assert calls == []  # every value already has its annotated type
    result = scalars(1, 2, Color.RED, True)
    assert result == (1, 2.0, "red", True)
    assert type(result[1]) is float and type(result[2]) is str  # pydantic coerced these
    assert len(calls) == 1
    with pytest.raises(ParameterTypeError):
        scalars(1.5, 2.5, "x", True)  # a float for an int: pydantic refuses it
    with pytest.raises(ParameterTypeError):
        scalars(1, 2.5, "x", "maybe")


def test_unannotated_parameters_are_untouched():
    """Parameters without type hints are passed through as given."""

    @flow
    def anything(x, y=None):
        return x, y

    marker = object()
    assert anything("5", marker) == ("5", marker)


def test_arbitrary_types_are_accepted():
    """A parameter annotated with a non-pydantic class is checked by isinstance, not refused."""

    class Thing:
        pass

    @flow
    def takes_thing(t: Thing):
        return t

    thing = Thing()
    assert takes_thing(thing) is thing


# -- invalid parameters -----------------------------------------------------------------------


@flow
def flow_that_validates_parameters(model: Model):
    raise AssertionError("the body must not run with invalid parameters")


def test_seed_invalid_parameters_message_and_states(registry, logs):
    """Seed: invalid parameters -> Pending -> Failed without Running, with the seed's message."""
    with pytest.raises(ParameterTypeError) as info:
        flow_that_validates_parameters(model={"a": "WRONG", "b": "fine"})
    assert str(info.value) == SEED_INVALID_MESSAGE
    (record,) = registry.runs(kind="flow")
    assert record.state_types == [StateType.PENDING, StateType.FAILED]
    assert StateType.RUNNING not in record.state_types
    assert record.state.message == SEED_INVALID_MESSAGE
    assert record.run_count == 0
    finished = [m for m in logs.messages if m.startswith("Finished in state")]
    assert finished == [f"Finished in state Failed({SEED_INVALID_MESSAGE!r})"]


def test_invalid_parameters_return_state(registry):
    """With return_state=True the invalid-parameter run's Failed state is returned."""
    state = flow_that_validates_parameters(model={"a": "WRONG", "b": "fine"}, return_state=True)
    assert state.is_failed()
    assert state.message == SEED_INVALID_MESSAGE
    assert isinstance(state.result(raise_on_failure=False), ParameterTypeError)


def test_invalid_parameters_one_line_per_error():
    """Each validation error is one ` - loc: msg` line after the header."""

    @flow
    def two_bad(x: int, when: datetime.datetime, model: Model):
        pass

    with pytest.raises(ParameterTypeError) as info:
        two_bad("x", "not a date", {"a": 1})
    header, *lines = str(info.value).split("\n")
    assert header == "Flow run received invalid parameters:"
    assert len(lines) == 3
    assert lines[0] == " - x: Input should be a valid integer, unable to parse string as an integer"
    assert lines[1].startswith(" - when: Input should be a valid datetime")
    assert lines[2] == " - model.b: Field required"
    locs = [tuple(e["loc"]) for e in info.value.errors]
    assert locs == [("x",), ("when",), ("model", "b")]


def test_invalid_parameters_are_not_retried(registry):
    """A flow with retries still goes Pending -> Failed once for invalid parameters."""

    @flow(retries=3)
    def retried(x: int):
        pass

    with pytest.raises(ParameterTypeError):
        retried("nope")
    (record,) = registry.runs(kind="flow")
    assert record.state_names == ["Pending", "Failed"]


@pytest.mark.anyio
async def test_async_flow_invalid_parameters_never_run(registry):
    """An async flow with invalid parameters fails without entering Running (both backends)."""
    ran = []

    @flow
    async def checked(x: int):
        ran.append(x)
        await anyio.lowlevel.checkpoint()

    with pytest.raises(ParameterTypeError, match=r"^Flow run received invalid parameters:\n - x: "):
        await checked("nope")
    state = await checked("still nope", return_state=True)
    assert state.is_failed()
    assert ran == []
    for record in registry.runs(kind="flow"):
        assert record.state_types == [StateType.PENDING, StateType.FAILED]


def test_subflow_invalid_parameters_fail_subflow_without_running(registry):
    """A nested flow with bad parameters goes Pending -> Failed; its error reaches the parent."""

    @flow
    def child(x: int):
        pass

    @flow
    def parent():
        child("bad")

    with pytest.raises(ParameterTypeError):
        parent()
    parent_run = next(registry.runs(kind="flow", spec_name="parent"))
    child_run = next(registry.runs(kind="flow", spec_name="child"))
    assert child_run.state_types == [StateType.PENDING, StateType.FAILED]
    assert child_run.parent_flow_run_id == parent_run.id
    assert parent_run.state.is_failed()


def test_validate_parameters_false_skips_validation(registry):
    """Seed: validate_parameters=False performs no validation or coercion."""

    @flow(validate_parameters=False)
    def unchecked(x: int, model: Model):
        return x, model

    x, model = unchecked("5", {"a": "WRONG", "b": "fine"})
    assert x == "5"
    assert model == {"a": "WRONG", "b": "fine"}
    (record,) = registry.runs(kind="flow")
    assert record.state_names == ["Pending", "Running", "Completed"]


# -- size limit -------------------------------------------------------------------------------


def test_oversize_parameters_fail_clearly(registry):
    """Seed: parameters over 512 KB serialized fail with ParameterSizeError, never Running."""
    ran = []

    @flow
    def big(data: str):
        ran.append(1)

    with pytest.raises(ParameterSizeError, match="512 KB") as info:
        big("x" * (600 * 1024))
    assert "KB" in str(info.value)
    assert issubclass(ParameterSizeError, ValueError)
    assert ran == []
    (record,) = registry.runs(kind="flow")
    assert record.state_types == [StateType.PENDING, StateType.FAILED]


def test_oversize_parameters_fail_even_without_validation(registry):
    """The size limit applies when validate_parameters=False too."""

    @flow(validate_parameters=False)
    def big(data):
        pass

    state = big(["y" * 1024] * 600, return_state=True)
    assert state.is_failed()
    assert isinstance(state.result(raise_on_failure=False), ParameterSizeError)


def test_parameters_just_under_limit_are_accepted():
    """Parameters a little under 512 KB serialized run normally."""

    @flow
    def big(data: str):
        return len(data)

    assert big("x" * (511 * 1024)) == 511 * 1024


# -- validators built once --------------------------------------------------------------------


def test_validator_built_once_per_flow(monkeypatch):
    """The pydantic validator is built on first use and reused for later calls."""
    built = []
    real = pydantic.TypeAdapter

    class CountingAdapter(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            built.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(pydantic, "TypeAdapter", CountingAdapter)

    @flow
    def counted(x: int, when: datetime.datetime):
        return x

    assert counted("1", "2021-01-01T00:00:00") == 1
    after_first = len(built)
    assert after_first >= 1  # the spy sees the validator being built
    for i in range(5):
        assert counted(str(i), "2021-01-01T00:00:00") == i
    assert len(built) == after_first
