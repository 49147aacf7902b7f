"""The one base of every robot_stack domain error.

Every error the stack raises on purpose (a bad config, a refused message, a safety violation, a
driver fault, a transport timeout, ...) derives from :class:`RobotStackError`, and also from the
builtin it refines (``ValueError``, ``RuntimeError``, ``TimeoutError``), so code written against the
builtins keeps working. The CLI catches this one class and prints its message as one line; any other
exception is a bug and gets a pointer to ``--debug``.
"""

from __future__ import annotations


class RobotStackError(Exception):
    """Base of every robot_stack domain error: its message is the whole story for a user.

    Attributes:
        fix: what to do about it, in a sentence ("" when the message says it); a node that cannot
            start shows it in the launcher's summary.
    """

    fix: str = ""

    def with_fix(self, fix: str) -> RobotStackError:
        """This error with ``fix`` set (``raise SomeError(...).with_fix("plug it in")``)."""
        self.fix = fix
        return self
