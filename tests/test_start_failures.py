"""A node that cannot start (its device or file is absent) says why in one line, and the launcher
ends with a summary of one line per such node; tracebacks only with --debug."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from robot_stack.errors import RobotStackError
from robot_stack.runtime.node import start_failure
from robot_stack.testing.setups import node, setup, write_setup

REPO = Path(__file__).resolve().parents[1]


def test_start_failure_names_node_device_reason_and_fix():
    from robot_stack.nodes.camera import CameraParams
    from robot_stack.nodes.policy import PolicyParams

    cam = CameraParams(driver={"type": "realsense", "serial": "123"})
    err = RobotStackError("no RealSense device connected").with_fix("plug it into a USB 3 port")
    info = start_failure("cam_wrist", "camera", cam, err)
    assert info == {
        "node": "cam_wrist",
        "device": "camera driver realsense (serial 123)",
        "reason": "no RealSense device connected",
        "fix": "plug it into a USB 3 port",
    }
    pol = PolicyParams(backend={"type": "checkpoint", "path": "p.safetensors"})
    info = start_failure("policy", "policy", pol, FileNotFoundError("No such file or directory: p.safetensors"))
    assert info["device"] == "policy backend checkpoint (path p.safetensors)" and "path" in info["fix"]
    assert "extra" in start_failure("x", "arm", pol, ModuleNotFoundError("No module named 'pylibfranka'"))["fix"]
    assert "\n" not in start_failure("x", "arm", pol, RuntimeError("two\nlines"))["reason"]


@pytest.mark.processes
def test_up_ends_with_one_line_per_node_that_could_not_start(tmp_path, run_dir):
    cfg = tmp_path / "absent.yaml"
    write_setup(
        cfg,
        setup(
            "absent",
            run_dir,
            cam=node("camera", driver={"type": "opencv", "device": str(tmp_path / "no_camera.avi")}, camera_id="top"),
            policy=node("policy", backend={"type": "checkpoint", "path": str(tmp_path / "nope.safetensors")}),
        ),
    )
    r = subprocess.run(
        [sys.executable, "-m", "robot_stack.cli", "up", str(cfg), "--duration", "120"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "Traceback" not in out, out
    assert "2 nodes could not start:" in out, out
    summary = [line.strip() for line in out.split("2 nodes could not start:")[1].strip().splitlines()]
    assert len(summary) == 2, out
    assert summary[0].startswith("cam: camera driver opencv (device "), out
    assert "policy: policy backend checkpoint (path " in summary[1] and "(fix: check the file's path" in summary[1]
    # --debug: the node's traceback is in its log
    r = subprocess.run(
        [sys.executable, "-m", "robot_stack.cli", "--debug", "up", str(cfg), "--only", "cam", "--duration", "120"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )
    assert "Traceback" in r.stdout + r.stderr and "1 node could not start:" in r.stdout
