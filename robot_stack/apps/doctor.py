"""``robot-stack doctor [SETUP]``: a preflight that starts nothing.

Without a setup it reports what this host offers: RealSense devices (serial, firmware, USB link),
UVC cameras, serial ports, what real-time scheduling the kernel grants, the GPU and the ONNX Runtime
providers that load, and free disk. With a setup it also checks each of the setup's devices (each
device config's own :meth:`~robot_stack.runtime.devices.DeviceConfig.doctor`: the robot's ports
answer, the camera's serial is connected, the servos on a port answer, the policy file exists), its
SDK, and the disk under its recorder. One line per check, ✓ or ✗ with the fix; the exit code is 0
only when no blocking check failed, that is when the setup can start.
"""

from __future__ import annotations

import glob
import os
import resource
import shutil
from pathlib import Path

from robot_stack.runtime.devices import FAMILIES, Check

#: free disk below which recording is refused by the doctor, bytes (a minute of two RGB-D cameras
#: stored losslessly is a few GB)
MIN_FREE_BYTES = 10 * 2**30


def host_checks() -> list[Check]:
    """What this machine offers (none of these block: a setup's own checks decide)."""
    out: list[Check] = []
    try:
        import pyrealsense2 as rs

        devs = list(rs.context().query_devices())
        detail = ", ".join(
            f"{d.get_info(rs.camera_info.serial_number)} (firmware {d.get_info(rs.camera_info.firmware_version)}, "
            f"USB {d.get_info(rs.camera_info.usb_type_descriptor)})"
            for d in devs
        )
        out.append(Check(bool(devs), "RealSense devices", detail or "none connected", blocking=False))
    except ImportError:
        out.append(
            Check(
                False,
                "RealSense devices",
                "pyrealsense2 is not installed",
                'pip install "robot-stack[realsense]"',
                blocking=False,
            )
        )
    videos = sorted(glob.glob("/dev/video*"))
    out.append(Check(bool(videos), "UVC cameras", ", ".join(videos) or "none (/dev/video*)", blocking=False))
    ports = sorted(glob.glob("/dev/ttyACM*") + glob.glob("/dev/ttyUSB*"))
    out.append(
        Check(bool(ports), "serial ports", ", ".join(ports) or "none (/dev/ttyACM*, /dev/ttyUSB*)", blocking=False)
    )
    out += realtime_checks()
    out += compute_checks()
    out.append(disk_check(Path.cwd(), blocking=False))
    return out


def realtime_checks() -> list[Check]:
    """The kernel, SCHED_FIFO priority and locked memory this user may have (what the arm node's
    ``realtime`` settings need)."""
    from robot_stack.runtime.devices import realtime_kernel

    rt = realtime_kernel()
    out = [
        Check(
            rt,
            "real-time kernel",
            "PREEMPT_RT" if rt else f"{os.uname().release} is not real-time",
            "" if rt else "a Franka needs a PREEMPT_RT kernel; other arms run better on one",
            blocking=False,
        )
    ]
    rtprio = resource.getrlimit(resource.RLIMIT_RTPRIO)[0] if hasattr(resource, "RLIMIT_RTPRIO") else 0
    root = os.geteuid() == 0
    fifo = root or rtprio == resource.RLIM_INFINITY or rtprio >= 80
    out.append(
        Check(
            fifo,
            "SCHED_FIFO",
            "allowed (root)" if root else f"rtprio limit {rtprio}",
            ""
            if fifo
            else "add '@realtime - rtprio 99' to /etc/security/limits.conf and the user to the realtime group",
            blocking=False,
        )
    )
    memlock = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    locked = root or memlock == resource.RLIM_INFINITY
    out.append(
        Check(
            locked,
            "locked memory",
            "unlimited" if locked else f"limit {memlock} bytes",
            "" if locked else "add '@realtime - memlock unlimited' to /etc/security/limits.conf",
            blocking=False,
        )
    )
    return out


def compute_checks() -> list[Check]:
    """The GPU torch sees and the ONNX Runtime execution providers that load."""
    out = []
    try:
        import torch

        gpu = torch.cuda.is_available()
        out.append(
            Check(
                gpu,
                "GPU (torch)",
                torch.cuda.get_device_name(0)
                if gpu
                else f"none (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}): policies run "
                "on the CPU",
                blocking=False,
            )
        )
    except ImportError:
        out.append(Check(False, "GPU (torch)", "torch is not installed", blocking=False))
    try:
        import onnxruntime as ort

        out.append(Check(True, "ONNX Runtime providers", ", ".join(ort.get_available_providers()), blocking=False))
    except ImportError:
        out.append(Check(False, "ONNX Runtime", "not installed", blocking=False))
    return out


def disk_check(folder: Path, blocking: bool = True) -> Check:
    """Free space under ``folder`` (or its nearest existing parent) against :data:`MIN_FREE_BYTES`."""
    p = folder.resolve()
    while not p.exists():
        p = p.parent
    free = shutil.disk_usage(p).free
    ok = free >= MIN_FREE_BYTES
    return Check(
        ok,
        f"disk under {folder}",
        f"{free / 2**30:.1f} GB free",
        "" if ok else f"free space or record elsewhere (at least {MIN_FREE_BYTES / 2**30:.0f} GB)",
        blocking,
    )


def setup_checks(cfg) -> list[Check]:
    """Every device of the setup: its SDK and its own preflight; the recorder's disk."""
    out: list[Check] = []
    for name, nc in cfg.nodes.items():
        family = FAMILIES.get(nc.kind)
        device = getattr(nc.typed, family.key, None) if family is not None else None
        if device is not None:
            why = family.missing_requirements(device)
            if why:
                out.append(Check(False, f"{name}: {family.family} {device.type}", why, why.split(": ", 1)[-1]))
                continue
            try:
                checks = device.doctor()
            except Exception as e:  # noqa: BLE001 - a check that cannot run is itself a finding
                checks = [
                    Check(
                        False,
                        f"{family.family} {device.type}",
                        " ".join(str(e).split()),
                        "see robot-stack --debug doctor",
                    )
                ]
            out += [Check(c.ok, f"{name}: {c.what}", c.detail, c.fix, c.blocking) for c in checks]
        if nc.kind == "recorder":
            out.append(disk_check(Path(nc.typed.root)))
    return out


def format_check(c: Check) -> str:
    """``✓ what: detail`` or ``✗ what: detail (fix: ...)``; a non-blocking failure is ``!``."""
    mark = "✓" if c.ok else ("✗" if c.blocking else "!")
    return f"{mark} {c.what}: {c.detail}" + (f" (fix: {c.fix})" if not c.ok and c.fix else "")


def run_doctor(config: Path | None, out=print) -> int:
    """Print every check, one line each; 0 when nothing blocking failed, else 1.

    Raises:
        ConfigError: the setup does not validate (the CLI prints it in one line, exit code 2).
    """
    from robot_stack.runtime.config import load_config

    cfg = load_config(config) if config is not None else None
    out("this host:")
    for c in host_checks():
        out("  " + format_check(c))
    failed = []
    if cfg is not None:
        out(f"setup {cfg.name} ({config}):")
        checks = setup_checks(cfg)
        for c in checks:
            out("  " + format_check(c))
        failed = [c for c in checks if not c.ok and c.blocking]
        out(
            f"{len(failed)} blocking problem{'s' if len(failed) != 1 else ''}: "
            + ("the setup can start" if not failed else "fix them before robot-stack up")
        )
    return 1 if failed else 0
