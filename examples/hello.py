"""The seed's hello.py with `from prefect` changed to `from asyncflow`, plus a look at the
run history asyncflow recorded for it."""

from nested_flow import my_nested_flow

from asyncflow import flow, task
from asyncflow.registry import get_registry


@task(name="Print Hello")
def print_hello(name):
    msg = f"Hello {name}!"
    print(msg)
    return msg


@flow(name="Hello Flow")
def hello_world(name="world"):
    message = print_hello(name)
    my_nested_flow(message)


def show_history() -> None:
    print("\nRecorded run history:")
    for run in get_registry().runs():
        states = " -> ".join(f"{s.name} {s.timestamp:%H:%M:%S.%f}"[:-3] for s in run.states)
        indent = "  " if run.parent_flow_run_id else ""
        print(f"  {indent}{run.kind:4} {run.name!r:28} {states}")


if __name__ == "__main__":
    hello_world("Marvin")
    show_history()
