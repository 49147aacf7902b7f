"""Real-time settings for a servo process (Linux): SCHED_FIFO priority, CPU affinity, locked memory.

The settings real-robot setups (deoxys, Polymetis, libfranka's examples) give their control loop:
a real-time scheduling class so ordinary processes cannot preempt it (``sched_setscheduler(2)``,
SCHED_FIFO), pinning to chosen cores (``sched_setaffinity(2)``), and ``mlockall(2)`` so no page
fault stalls a tick. Each is asked for separately; what the kernel grants and what it refuses
(no CAP_SYS_NICE / RLIMIT_RTPRIO, no CAP_IPC_LOCK / RLIMIT_MEMLOCK) is reported line by line,
and a refusal is never fatal unless ``required``.
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

import ctypes
import logging
import os

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

_MCL_CURRENT, _MCL_FUTURE = 1, 2


class RealtimeConfig(BaseModel):
    """Optional real-time settings of a servo process.

    Attributes:
        fifo_priority: SCHED_FIFO priority 1..99 (None: normal scheduling). 80 is common for
            robot control loops; keep it below the kernel's own threads (IRQ threads run at 50 on
            PREEMPT_RT, so values above 50 also preempt them: choose knowingly).
        cpus: CPU cores to pin to (None: any).
        lock_memory: lock all current and future pages in RAM (mlockall).
        required: fail start-up when any of these is refused (default: report and go on).
    """

    model_config = ConfigDict(extra="forbid")
    fifo_priority: int | None = Field(None, ge=1, le=99)
    cpus: list[int] | None = Field(None, min_length=1)
    lock_memory: bool = False
    required: bool = False

    @property
    def any(self) -> bool:
        return self.fifo_priority is not None or self.cpus is not None or self.lock_memory


class RealtimeError(RobotStackError, RuntimeError):
    """A required real-time setting was refused by the kernel."""


def apply_realtime(cfg: RealtimeConfig, what: str = "servo loop") -> list[str]:
    """Apply ``cfg`` to the calling process; returns one report line per setting (also logged).

    Raises:
        RealtimeError: a setting was refused and ``cfg.required`` is set.
    """
    lines, refused = [], []
    if cfg.fifo_priority is not None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(cfg.fifo_priority))
            lines.append(f"{what}: SCHED_FIFO priority {cfg.fifo_priority} granted")
        except (PermissionError, OSError, AttributeError) as e:
            refused.append(
                f"{what}: SCHED_FIFO priority {cfg.fifo_priority} refused by the kernel ({e}); "
                "needs root, CAP_SYS_NICE or an rtprio limit (/etc/security/limits.conf)"
            )
    if cfg.cpus is not None:
        try:
            os.sched_setaffinity(0, set(cfg.cpus))
            lines.append(f"{what}: pinned to CPUs {sorted(os.sched_getaffinity(0))}")
        except (OSError, ValueError, AttributeError) as e:
            refused.append(
                f"{what}: CPU affinity {cfg.cpus} refused ({e}); this machine has CPUs "
                f"{sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}"
            )
    if cfg.lock_memory:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mlockall(_MCL_CURRENT | _MCL_FUTURE) == 0:
            lines.append(f"{what}: memory locked (mlockall)")
        else:
            err = ctypes.get_errno()
            refused.append(
                f"{what}: mlockall refused ({os.strerror(err)}); needs CAP_IPC_LOCK or a memlock limit (ulimit -l)"
            )
    for line in lines:
        log.info("%s", line)
    for line in refused:
        log.error("%s", line)
    if refused and cfg.required:
        raise RealtimeError("; ".join(refused))
    return lines + refused


def current_policy() -> str:
    """The calling process's scheduling class and priority, for reports (e.g. "SCHED_FIFO 80")."""
    names = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR"}
    pol = os.sched_getscheduler(0)
    return f"{names.get(pol, pol)} {os.sched_getparam(0).sched_priority}"
