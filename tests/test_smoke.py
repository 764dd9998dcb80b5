import anyio
import anyio.lowlevel
import pytest

from asyncflow import flow, task


@task(name="Print Hello")
def print_hello(name: str) -> str:
    return f"Hello {name}!"


@flow(name="Nestedflow")
def nested(msg: str) -> str:
    return msg.upper()


@flow(name="Hello Flow")
def hello_world(name: str = "world") -> str:
    return nested(print_hello(name))


def test_sync_hello(registry, logs):
    assert hello_world("Marvin") == "HELLO MARVIN!"
    flows = list(registry.runs(kind="flow"))
    assert [r.spec_name for r in flows] == ["Hello Flow", "Nestedflow"]
    assert flows[1].parent_flow_run_id == flows[0].id
    assert any("Created subflow run" in m for m in logs.messages)


@flow
async def async_hello(n: int) -> int:
    await anyio.lowlevel.checkpoint()
    return n + 1


@pytest.mark.anyio
async def test_async_flow_on_both_backends(registry):
    assert await async_hello("41") == 42
    (run,) = registry.runs(kind="flow")
    assert [s.name for s in run.states] == ["Pending", "Running", "Completed"]
