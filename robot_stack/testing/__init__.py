"""Testing a node, a driver or a policy without hardware, processes or sleeping.

Public API, for our tests and a lab's own:

- :class:`FakeClock`: the stack's clock under the test's control (every ``now_ns``, ``sleep`` and
  rate loop in the process follows it);
- :class:`FakeBus` and :class:`FakeNodeContext`: an in-memory transport behind the publisher,
  subscriber, receiver, sender and request-client interfaces, every message through the real codec;
- :func:`build_node`: any node of a setup, configured in-process, to step deterministically, and
  :func:`run_workers` for the work its threads would do between steps;
- :func:`wait_until`: waiting for a condition with a deadline (for tests that do run processes);
- the pytest plugin :mod:`robot_stack.testing.plugin` (fixtures ``fake_clock``, ``fake_bus``,
  ``node_builder``), loaded with ``-p robot_stack.testing.plugin`` or ``pytest_plugins``.
"""

from robot_stack.testing.bus import FakeBus, FakePublisher, FakeReceiver, FakeRequestClient, FakeSender, FakeSubscriber
from robot_stack.testing.clock import FakeClock
from robot_stack.testing.context import FakeNodeContext, build_node, run_workers
from robot_stack.testing.waiting import WaitTimeout, wait_until

__all__ = [
    "FakeBus",
    "FakeClock",
    "FakeNodeContext",
    "FakePublisher",
    "FakeReceiver",
    "FakeRequestClient",
    "FakeSender",
    "FakeSubscriber",
    "WaitTimeout",
    "build_node",
    "run_workers",
    "wait_until",
]
