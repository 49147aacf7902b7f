"""pytest plugin: fixtures for testing robot_stack nodes in-process.

Load it in a lab's own ``conftest.py`` with ``pytest_plugins = ["robot_stack.testing.plugin"]`` (or
``pytest -p robot_stack.testing.plugin``). Fixtures:

- ``fake_clock``: a :class:`~robot_stack.testing.FakeClock` installed for the test, removed after;
- ``fake_bus``: a fresh :class:`~robot_stack.testing.FakeBus`;
- ``node_builder``: ``node_builder(config, name)`` builds a node on ``fake_bus`` (with the fake
  clock installed) and shuts every node it built down after the test.

It also registers the markers ``slow``, ``processes`` and ``hardware`` (see the docs' testing page).
"""

from __future__ import annotations

import pytest

from robot_stack.testing.bus import FakeBus
from robot_stack.testing.clock import FakeClock
from robot_stack.testing.context import build_node


def pytest_configure(config) -> None:
    for line in ("slow: trains a model or runs a demo (minutes)",
                 "processes: starts real processes or sockets (lifecycle, transport, physics, drivers against stand-ins)",
                 "hardware: needs a device attached (skipped without it, with the reason)"):
        config.addinivalue_line("markers", line)


@pytest.fixture
def fake_clock():
    """The stack's clock, faked for this test (starts at 1000 s)."""
    with FakeClock() as clock:
        yield clock


@pytest.fixture
def fake_bus() -> FakeBus:
    """An in-memory network for the nodes of one test."""
    return FakeBus()


@pytest.fixture
def node_builder(fake_clock, fake_bus):
    """``node_builder(config, name)``: a configured node on ``fake_bus``; shut down after the test."""
    built = []

    def build(config, name: str):
        node = build_node(config, name, fake_bus)
        built.append(node)
        return node

    yield build
    for node in reversed(built):
        node.shutdown()
