"""The oracle policy through the real stack (sim, arm, policy node, controller): deploy's episodes
succeed with it, on our protocol, with RTC at 50 Hz and 50-action chunks behind 200 ms of latency."""

import pytest

from robot_stack.apps.demo import config_path
from robot_stack.apps.deploy import run_episodes
from robot_stack.apps.session import Session
from robot_stack.comm.messages import RobotState
from robot_stack.testing.setups import node, write_setup

pytestmark = pytest.mark.processes


def oracle_setup(run_dir, task: str, **ctl) -> dict:
    base = "sim_panda_reach.yaml" if task == "reach" else "sim_panda_pick.yaml"
    return {
        "extends": str(config_path(base)),
        "name": f"oracle_{task}",
        "run_dir": str(run_dir),
        "nodes": {
            "oracle": node("policy", backend={"type": "oracle", "task": task, "horizon": 50, "dt": 0.02}, delay_s=0.2),
            "ctl_oracle": node(
                "controller", policy="oracle", source="policy", autostart=False, cameras=[], obs_keys=["ee_pose"], **ctl
            ),
        },
    }


def test_the_oracle_reaches_through_the_stack_with_rtc_at_50_hz(tmp_path, run_dir, report):
    cfg = oracle_setup(run_dir, "reach", rate_hz=50, strategy="rtc", execute_horizon=25)
    s = Session(write_setup(tmp_path / "oracle.yaml", cfg), only=["sim", "arm", "oracle", "ctl_oracle"])
    try:
        s.start((RobotState.TOPIC,))
        res = run_episodes(s, 2, 15.0, controller="ctl_oracle", label="oracle", seed=5)
    finally:
        s.close()
    report(
        f"oracle reach, rtc 50 Hz H=50 s=25, 200 ms latency: {sum(res.success)}/2, "
        f"completion {res.completion_s} s, failures {[(f.cause, f.detail) for f in res.failures]}"
    )
    assert res.success == [True, True], res.failures
    # (RTC refuses a chunk that arrives later than the d it followed: only while d is still being measured)
    assert res.controller["chunks"] > 10 and res.controller.get("refused_chunks", 0) <= 2, res.controller
