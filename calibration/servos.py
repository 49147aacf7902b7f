"""Servo-arm calibration (leader arms and SO-101 followers): zero offsets and ranges per device.

An operator holds the arm in its zero pose (the robot model's zero: for the SO-101's "new
calibration", every joint mid-range, gripper closed) and confirms; the procedure reads every servo
once (offsets: ``q = sign * (raw - offset)``, :func:`robot_stack.teleop.leader.calibrate_joint_map`).
Then the operator moves every joint and the gripper through its whole range while the bus is
polled, and confirms again: the raw ranges are stored, and the gripper's open position is the end
of its range farthest from closed. The result goes into the calibration file like the Dynamixel
leader's: ``leaders.<name>`` (teleop) or ``arms.<name>`` (a follower arm driver), with ``ranges``.
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

import threading
from pathlib import Path
from collections.abc import Callable

import numpy as np


class ServoCalibrationError(RobotStackError, RuntimeError):
    """The recorded motion cannot calibrate the arm (a joint that never moved, a failing bus)."""


def record(
    bus,
    n_joints: int,
    signs,
    has_gripper: bool,
    confirm: Callable[[str], object] = input,
    period_s: float = 0.02,
    min_range_rad: float = 0.2,
):
    """Run the two steps on ``bus`` (``read_positions() -> (n [+1],) rad``).

    Args:
        n_joints: joint servos (a gripper servo, when present, is read after them).
        signs: (n_joints,) +1/-1: the direction of each joint servo relative to the model's joint.
        confirm: shows a line and returns when the operator confirms (``input`` by default).
        period_s: polling period of the range sweep, s.
        min_range_rad: a joint whose sweep is smaller than this is refused (it did not move).

    Returns:
        (JointMap, ranges): the calibration and the (n [+1], 2) raw [min, max] ranges, rad.

    Raises:
        ServoCalibrationError: a joint or the gripper did not move through a range, or the bus failed.
    """
    from robot_stack.drivers.servo_bus import ServoBusError
    from robot_stack.teleop.leader import JointMap, calibrate_joint_map

    try:
        confirm("Hold the arm in its zero pose (every joint mid-range, gripper closed), then press Enter")
        raw0 = np.asarray(bus.read_positions(), float)
        lo, hi = raw0.copy(), raw0.copy()
        stop, errors = threading.Event(), []

        def sweep():
            while not stop.wait(period_s):
                try:
                    r = np.asarray(bus.read_positions(), float)
                except ServoBusError as e:
                    errors.append(e)
                    continue
                np.minimum(lo, r, out=lo)
                np.maximum(hi, r, out=hi)

        t = threading.Thread(target=sweep, daemon=True)
        t.start()
        confirm("Move every joint and the gripper through its whole range, then press Enter")
        stop.set()
        t.join(1.0)
    except ServoBusError as e:
        raise ServoCalibrationError(f"servo bus failed during calibration: {e}") from e
    if len(errors) > 10:
        raise ServoCalibrationError(f"{len(errors)} failed reads during the range sweep, last: {errors[-1]}")
    span = hi - lo
    still = [j + 1 for j in range(len(span)) if span[j] < min_range_rad]
    if still:
        names = ", ".join("gripper" if j > n_joints else f"joint {j}" for j in still)
        raise ServoCalibrationError(
            f"{names} moved less than {min_range_rad:.2f} rad during the sweep: move each through its whole range"
        )
    closed = raw0[n_joints] if has_gripper else 0.0
    opened = (
        (hi[n_joints] if abs(hi[n_joints] - closed) >= abs(lo[n_joints] - closed) else lo[n_joints])
        if has_gripper
        else 1.0
    )
    base = calibrate_joint_map(raw0[:n_joints], np.zeros(n_joints), signs)
    jm = JointMap(base.offsets, base.signs, gripper_open=float(opened), gripper_closed=float(closed))
    return jm, np.stack([lo, hi], axis=1)


def save(path: str | Path, section: str, name: str, jm, ranges: np.ndarray) -> None:
    """Store under ``<section>.<name>`` (``leaders`` or ``arms``): offsets, signs, gripper
    positions and raw ranges (rad)."""
    from robot_stack.teleop.leader import save_joint_map

    save_joint_map(path, name, jm, section=section, ranges=ranges)
