"""A spy around any arm driver: records every command the driver receives, for fault tests.

The record holds, per servo tick, the arm node's tick time (the time the servo guard planned
for), the joint targets and the gripper target. It is written at ``stop`` as a NumPy ``.npz``
(no pickle; read back with ``numpy.load(path, allow_pickle=False)``) and checked against the
safety limits by :func:`command_limits`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robot_stack.drivers.arm import ArmDriver, JointReading


class SpyArmDriver(ArmDriver):
    """Wraps ``inner`` and records each :meth:`command` (at most ``max_rows``, the newest kept).

    Args:
        inner: the real driver; path: where ``stop`` writes the record (.npz).
    """

    def __init__(self, inner: ArmDriver, path: str | Path, max_rows: int = 2_000_000):
        self.inner = inner
        self.path = Path(path)
        self.n_joints, self.lower, self.upper = inner.n_joints, inner.lower, inner.upper
        self.max_rows = max_rows
        self._t: list[int] = []
        self._q: list[np.ndarray] = []
        self._g: list[float] = []
        self.tick_ns = 0

    def __getattr__(self, name):  # anything else of the wrapped driver
        return getattr(self.__dict__["inner"], name)

    # the optional capabilities are the wrapped driver's (the base's defaults would hide them)
    @property
    def can_recover(self) -> bool:  # type: ignore[override]
        return self.inner.can_recover

    @property
    def send_timeouts(self) -> int:  # type: ignore[override]
        return self.inner.send_timeouts

    def recover(self) -> bool:
        return self.inner.recover()

    def fault(self) -> str | None:
        return self.inner.fault()

    def loop_stats(self) -> dict[str, float]:
        return self.inner.loop_stats()

    def start(self, timeout_s: float) -> JointReading:
        return self.inner.start(timeout_s)

    def read(self) -> JointReading:
        return self.inner.read()

    def set_step_period(self, dt_s: float) -> None:
        self.inner.set_step_period(dt_s)

    def command(self, q: np.ndarray, gripper_open: float) -> None:
        self._t.append(int(self.tick_ns))
        self._q.append(np.array(q, np.float64))
        self._g.append(float(gripper_open))
        if len(self._t) > self.max_rows:
            del self._t[: len(self._t) // 2], self._q[: len(self._q) // 2], self._g[: len(self._g) // 2]
        self.inner.command(q, gripper_open)

    def save(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(
            tmp,
            t_ns=np.array(self._t, np.int64),
            q=np.array(self._q, np.float64).reshape(-1, self.n_joints),
            gripper=np.array(self._g, np.float64),
        )
        tmp.replace(self.path)
        return self.path

    def stop(self) -> None:
        try:
            self.save()
        finally:
            self.inner.stop()


def command_limits(t_ns: np.ndarray, q: np.ndarray) -> dict[str, np.ndarray]:
    """Largest |velocity|, |acceleration|, |jerk| per joint of a command stream, by divided
    differences over the tick times (exact for the piecewise-cubic profiles of a jerk-limited
    generator; segments across a gap of more than 50 ms, a driver fault, are not joined).

    Args:
        t_ns: (N,) tick times, ns; q: (N, n) joint targets, rad.
    Returns:
        {"vel": (n,), "acc": (n,), "jerk": (n,)} in rad/s, rad/s^2, rad/s^3.
    """
    t = np.asarray(t_ns, np.float64) / 1e9
    q = np.asarray(q, np.float64)
    n = q.shape[1]
    out = {"vel": np.zeros(n), "acc": np.zeros(n), "jerk": np.zeros(n)}
    cuts = np.flatnonzero(np.diff(t) > 0.05) + 1
    for ts, qs in zip(np.split(t, cuts), np.split(q, cuts)):
        y = qs
        for k, (name, f) in enumerate((("vel", 1), ("acc", 2), ("jerk", 6)), start=1):
            if len(ts) <= k:
                break
            y = (y[1:] - y[:-1]) / (ts[k:] - ts[:-k])[:, None]
            out[name] = np.maximum(out[name], np.abs(y).max(0) * f)
    return out
