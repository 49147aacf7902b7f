"""pytest plugin: fixtures for testing robot_stack nodes in-process.

Load it in a lab's own ``conftest.py`` with ``pytest_plugins = ["robot_stack.testing.plugin"]`` (or
``pytest -p robot_stack.testing.plugin``). Fixtures:

- ``fake_clock``: a :class:`~robot_stack.testing.FakeClock` installed for the test, removed after;
- ``fake_bus``: a fresh :class:`~robot_stack.testing.FakeBus`;
- ``node_builder``: ``node_builder(config, name)`` builds a node on ``fake_bus`` (with the fake
  clock installed) and shuts every node it built down after the test;
- ``stack``: ``stack(config_path, only=None)`` starts a real stack (one process per node, the real
  launcher) and stops it after the test; returns the launcher and its log sink;
- ``fake_feetech_bus``, ``fake_dynamixel_bus``, ``fake_robotiq``: ``make(...)`` starts a byte-exact
  fake bus on a pseudo-terminal (its ``port`` is the path to open), closed after the test;
- ``ur_emulator``: our UR controller emulator (RTDE, dashboard, script ports on 127.0.0.1), closed
  after the test;
- fault injection: :mod:`robot_stack.testing.faults` builds malformed frames for
  ``fake_bus.inject`` or a socket.

It also registers the markers ``slow``, ``processes`` and ``hardware`` (see the docs' testing page).
"""

from __future__ import annotations

import pytest

from robot_stack.testing.bus import FakeBus
from robot_stack.testing.clock import FakeClock
from robot_stack.testing.context import build_node


def pytest_configure(config) -> None:
    for line in (
        "slow: trains a model or runs a demo (minutes)",
        "processes: starts real processes or sockets (lifecycle, transport, physics, drivers against stand-ins)",
        "hardware: needs a device attached (skipped without it, with the reason)",
    ):
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


@pytest.fixture
def stack(tmp_path):
    """``stack(config_path, only=None)``: a real stack under the real launcher (supervised on a
    thread), stopped after the test. Returns ``(launcher, log_sink)``."""
    import threading
    from pathlib import Path

    from robot_stack.runtime.launcher import Launcher

    started = []

    def start(config_path, only=None):
        from robot_stack.apps.session import LogSink

        out = LogSink()
        launcher = Launcher(Path(config_path), only=only, out=out)
        launcher.start()
        t = threading.Thread(target=launcher.supervise, daemon=True)
        t.start()
        started.append((launcher, t))
        return launcher, out

    yield start
    for launcher, t in reversed(started):
        launcher.stop()
        t.join(10)


def _made_and_closed(module: str, cls: str):
    """A fixture body: ``make(*args)`` builds ``module.cls`` objects, each closed after the test."""
    import importlib

    factory = getattr(importlib.import_module(module), cls)
    made = []

    def make(*args, **kw):
        made.append(factory(*args, **kw))
        return made[-1]

    yield make
    for obj in reversed(made):
        obj.close()


@pytest.fixture
def fake_feetech_bus():
    """``make(ids, follow=False)``: STS3215 servos on a pty (:class:`~robot_stack.testing.feetech_bus.FakeFeetechBus`)."""
    yield from _made_and_closed("robot_stack.testing.feetech_bus", "FakeFeetechBus")


@pytest.fixture
def fake_dynamixel_bus():
    """``make(ids)``: Dynamixel XL330-M288 servos on a pty (:class:`~robot_stack.testing.dynamixel_bus.FakeDynamixelBus`)."""
    yield from _made_and_closed("robot_stack.testing.dynamixel_bus", "FakeDynamixelBus")


@pytest.fixture
def fake_robotiq():
    """``make(slave_id=9, ...)``: a Robotiq 2F-85 on Modbus RTU over a pty (:class:`~robot_stack.testing.robotiq.FakeRobotiq`)."""
    yield from _made_and_closed("robot_stack.testing.robotiq", "FakeRobotiq")


@pytest.fixture
def ur_emulator():
    """Our UR e-Series controller emulator on 127.0.0.1 (RTDE 30004, dashboard 29999, script
    30002), started for the test and closed after it; ``ur_emulator.ctl`` is its robot."""
    from robot_stack.drivers.ur_emulator import UrController, UrEmulator

    emu = UrEmulator("127.0.0.1", UrController()).start()
    yield emu
    emu.close()
