"""Drive the simulated arm through an ArmClient: start a two-process stack (the MuJoCo world and
the arm node), move the TCP 5 cm along a straight line and back, print where it got.

    python3 examples/drive_sim_arm.py

An ArmClient sends timed waypoint schedules to the arm node's lossless input and heartbeats on a
thread; the arm node checks every schedule (limits, workspace, jumps) before its driver sees it,
exactly as for a policy or a teleop device. Against a stack you started yourself
(`robot-stack up configs/sim_panda.yaml`), build the client from that config and its run folder
instead (what `robot-stack move` does).
"""

from __future__ import annotations

import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import yaml

from robot_stack.comm.messages import RobotState
from robot_stack.comm.transport import Subscriber
from robot_stack.control.paths import straight_line
from robot_stack.runtime.arm_client import ArmClient
from robot_stack.runtime.clock import now_ns
from robot_stack.runtime.launcher import Launcher
from robot_stack.testing import wait_until

SETUP = {
    "name": "example_drive",
    "nodes": {
        "sim": {"kind": "sim_world", "params": {"rate_hz": 500}},
        "arm": {"kind": "arm", "params": {"driver": {"type": "sim"}}},
    },
}


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="rs-example-") as tmp:
        cfg_path = Path(tmp) / "setup.yaml"
        cfg_path.write_text(yaml.safe_dump({**SETUP, "run_dir": str(Path(tmp) / "run")}))
        launcher = Launcher(cfg_path)
        launcher.start()
        supervisor = threading.Thread(target=launcher.supervise, daemon=True)
        supervisor.start()
        cfg, run_dir = launcher.config, launcher.run_dir
        state = Subscriber([cfg.pub_endpoint("arm", run_dir)], (RobotState.TOPIC,), name="example")
        client = ArmClient(cfg, run_dir, arm="arm", source="example")
        try:
            st = state.wait_for(RobotState.TOPIC, 60.0)  # the sim and the arm node start in a few seconds
            if st is None:
                print("the arm node published no robot/state within 60 s", file=sys.stderr)
                return 1
            start = np.array(st.ee_pose)
            goal = start.copy()
            goal[0] += 0.05  # 5 cm along the base x axis, orientation kept
            for a, b in ((start, goal), (goal, start)):
                stamps, poses = straight_line(a, b, now_ns(), 0.05)  # 0.05 m/s
                client.send_schedule(stamps, poses, space="ee")

                def reached(b=b):
                    s = state.latest(RobotState.TOPIC)
                    return s is not None and np.linalg.norm(np.array(s.ee_pose[:3]) - b[:3]) < 0.002

                wait_until(reached, 20.0, what="the TCP to reach the waypoint's end")
                st = state.latest(RobotState.TOPIC)
                err = np.linalg.norm(np.array(st.ee_pose[:3]) - b[:3])
                print(f"reached {np.round(st.ee_pose[:3], 4).tolist()} m, error {err * 1e3:.2f} mm, mode {st.mode}")
            return 0
        finally:
            client.close()
            state.close()
            launcher.stop()
            supervisor.join(10)


if __name__ == "__main__":
    sys.exit(main())
