"""robot-stack doctor against the project's stand-ins: servos on fake buses answer (or one does
not), the UR emulator's ports answer, a Franka address that nothing serves, a missing RealSense and a
missing policy file; one line per check and an exit code that says whether the setup can start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from robot_stack.apps.doctor import format_check, run_doctor, setup_checks
from robot_stack.runtime.config import config_from_dict
from robot_stack.runtime.devices import Check
from robot_stack.testing.setups import node, setup

REPO = Path(__file__).resolve().parents[1]


def _by_what(checks: list[Check]) -> dict[str, Check]:
    return {c.what: c for c in checks}


@pytest.mark.processes
def test_servo_buses_answer_or_name_the_missing_servo(fake_feetech_bus, fake_dynamixel_bus, tmp_path):
    follower = fake_feetech_bus([1, 2, 3, 4, 5, 6])
    leader = fake_dynamixel_bus([1, 2, 3])
    leader.missing.add(2)
    calib = tmp_path / "calib.yaml"
    calib.write_text("{}\n")
    cfg = config_from_dict(
        setup(
            "lab",
            None,
            arm=node("arm", driver={"type": "so101", "port": follower.port, "calibration": str(calib)}),
            teleop=node(
                "teleop", device={"type": "leader", "port": leader.port, "ids": [1, 2, 3], "calibration": str(calib)}
            ),
        )
    )
    checks = _by_what(setup_checks(cfg))
    ok = checks[f"arm: SO-101 on {follower.port}"]
    assert ok.ok and "servos 1 (model 777)" in ok.detail and "6 (model 777)" in ok.detail
    bad = checks[f"teleop: Dynamixel leader on {leader.port}"]
    assert not bad.ok and bad.blocking and "servo 2" in bad.detail and "baud rate" in bad.fix
    gone = _by_what(
        setup_checks(
            config_from_dict(
                setup(
                    "lab",
                    None,
                    arm=node(
                        "arm", driver={"type": "so101", "port": str(tmp_path / "ttyACM9"), "calibration": str(calib)}
                    ),
                )
            )
        )
    )
    assert not gone[f"arm: SO-101 port {tmp_path / 'ttyACM9'}"].ok


@pytest.mark.processes
def test_ur_ports_answer_and_a_silent_franka_is_named(ur_emulator):
    cfg = config_from_dict(
        setup(
            "lab",
            None,
            arm=node("arm", driver={"type": "ur", "robot_ip": "127.0.0.1"}, robot="ur5e_robotiq"),
            arm2=node("arm", driver={"type": "franka", "robot_ip": "127.0.0.9", "realtime": "ignore"}),
        )
    )
    checks = _by_what(setup_checks(cfg))
    assert checks["arm: UR at 127.0.0.1 (RTDE 30004)"].ok and checks["arm: UR at 127.0.0.1 (dashboard 29999)"].ok
    franka = checks["arm2: Franka at 127.0.0.9"]
    assert not franka.ok and "127.0.0.9:1337" in franka.detail and "FCI" in franka.fix


def test_a_missing_policy_file_blocks_and_the_lines_read_well(tmp_path):
    cfg = config_from_dict(
        setup(
            "lab", None, policy=node("policy", backend={"type": "checkpoint", "path": str(tmp_path / "p.safetensors")})
        )
    )
    (c,) = setup_checks(cfg)
    assert not c.ok and c.blocking
    assert format_check(c) == (
        f"✗ policy: checkpoint {tmp_path / 'p.safetensors'}: {tmp_path / 'p.safetensors'} "
        "does not exist (fix: train one (robot-stack train) or fix the path)"
    )
    assert format_check(Check(False, "GPU", "none", "x", blocking=False)).startswith("! GPU")
    lines: list[str] = []
    assert run_doctor(None, lines.append) == 0 and lines[0] == "this host:"


@pytest.mark.processes
def test_doctor_on_the_franka_template_without_hardware_fails_one_line_per_device():
    r = subprocess.run(
        [sys.executable, "-m", "robot_stack.cli", "doctor", "configs/franka_realsense.yaml"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    failed = [line.strip() for line in r.stdout.splitlines() if line.strip().startswith("✗")]
    whats = {line.split(":")[0] for line in failed}
    assert {"✗ arm", "✗ cam_scene", "✗ cam_wrist", "✗ policy"} <= whats, r.stdout
    assert all("(fix: " in line for line in failed), r.stdout
    assert "blocking problems: fix them before robot-stack up" in r.stdout
