"""The main job end to end, quick mode (CI): collect -> train -> deploy through the real stack.

Asserts that the arm was moved by the learned policy, not the expert: at deploy time no teleop node
runs, every waypoint the controller sent has origin "policy", and the arm came down to the cube. The success rate is printed (300 training steps prove the path; the full
demo's figures are in the README).
"""

import numpy as np
import pytest

from robot_stack.apps.demo import DemoSettings, run_demo

pytestmark = [pytest.mark.processes, pytest.mark.slow]  # whole collect -> train -> deploy runs


def test_quick_demo_deploys_a_learned_policy(tmp_path, report):
    res = run_demo(workdir=tmp_path, settings=DemoSettings.quick())
    d = res.deploy
    report(
        f"quick demo: policy success {sum(d.success)}/{len(d.success)}, expert {res.expert_success}/"
        f"{res.expert_attempts}, final TCP-cube xy {np.round(d.final_xy_err_mm, 1)} mm, times {res.times_s}"
    )
    assert res.expert_attempts == 5 and res.expert_success == 5
    assert (tmp_path / "policy.safetensors").exists() and len(list((tmp_path / "episodes").glob("episode_*.zarr"))) == 5
    assert d.policy_waypoints > 100  # the learned policy's chunks reached the arm
    assert d.controller["chunks"] > 10 and d.controller["teleop_steps"] == 0
    # episodes start 0.46 m above the cube's centre: only the policy can have brought the TCP down,
    # and toward the cube (a 300-step policy is rough: it need not succeed, but it must head there)
    # (halfway at least: the start is 0.46 m above the cube; quick runs end with a median of
    # 0.11-0.21 m, README)
    # (one of the 2 episodes may stay where it started: a CI proof on 2026-12-08 had the arm refuse
    # every schedule of one episode as a jump, 139 of them, named by the failure table; so the
    # closest episode counts, which still fails if the policy never brings the TCP down)
    tcp, cube = np.array(d.final_tcp), np.array(d.cube_poses)[:, :3]
    assert np.min(tcp[:, 2]) < 0.25  # from 0.48 m
    assert np.min(np.linalg.norm(tcp - cube, axis=1)) < 0.25
    _lerobot_loads_a_demo_episode(tmp_path, report)


def _lerobot_loads_a_demo_episode(tmp_path, report) -> None:
    """One of the quick demo's recorded episodes, exported to LeRobot v3.0 and loaded by lerobot's
    own LeRobotDataset (.venv-lerobot; skipped without it): every frame as written, and our
    statistics within lerobot's own precision of its statistics of the same frames. One episode
    keeps it to about 8 s."""
    from robot_stack.data.dataset import list_episodes
    from robot_stack.data.lerobot import export_lerobot

    from test_lerobot_check import VENV_PY, assert_state_action_stats_agree, lerobot_check

    if not VENV_PY.exists():
        report("lerobot check of a demo episode: skipped (no .venv-lerobot: scripts/setup_lerobot.sh)")
        return
    out = export_lerobot(list_episodes(tmp_path / "episodes")[:1], tmp_path / "lr", fps=10)
    res = lerobot_check(out)
    assert res["frames"] == res["rows"] and res["state_equal"] and res["action_equal"] and res["timestamp_equal"]
    assert set(res["tasks"].values()) == {"reach the cube"}
    assert_state_action_stats_agree(res)
    rel = res["stats_max_rel_diff"]
    report(
        f"lerobot on a demo episode ({res['frames']} frames): stats within "
        f"{max(rel[f'{f}/{s}'] for f in ('observation.state', 'action') for s in ('mean', 'std', 'q01', 'q99')):.1e} "
        "of each dimension's scale"
    )


def test_quick_pick_demo_runs_the_pick_task_end_to_end(tmp_path, report):
    """``robot-stack demo --task pick --quick``: the expert's pick demonstrations all succeed
    (cube in the target square, released), and a learned policy drives the arm through the same
    stack (100 steps do not make it pick: the full run's figures are in the README)."""
    res = run_demo(workdir=tmp_path, settings=DemoSettings.quick("pick"), task="pick")
    d = res.deploy
    report(
        f"quick pick demo: policy success {sum(d.success)}/{len(d.success)}, expert {res.expert_success}/"
        f"{res.expert_attempts}, final cube-target {np.round(d.final_xy_err_mm, 1)} mm, times {res.times_s}"
    )
    assert res.expert_attempts == 2 and res.expert_success == 2
    assert d.error_name == "cube-target"
    assert d.policy_waypoints > 100 and d.controller["teleop_steps"] == 0
    tcp = np.array(d.final_tcp)
    assert np.median(tcp[:, 2]) < 0.4  # the policy moved the TCP down from the 0.48 m start


def test_quick_bimanual_demo_lifts_with_two_arms_end_to_end(tmp_path, report):
    """``robot-stack demo --task bimanual --quick``: the two-arm expert's lifts all succeed through
    the teleop path (one command per arm, the controller's lockstep schedules), the episodes hold
    both arms' streams, and a learned 16-D policy drives both arms (100 steps do not make it lift:
    the full run's figures are in the README)."""
    from robot_stack.data.dataset import list_episodes, open_episode

    res = run_demo(workdir=tmp_path, settings=DemoSettings.quick("bimanual"), task="bimanual")
    d = res.deploy
    report(
        f"quick bimanual demo: policy success {sum(d.success)}/{len(d.success)}, expert {res.expert_success}/"
        f"{res.expert_attempts}, final bar lift {np.round(d.final_xy_err_mm, 1)} mm, times {res.times_s}"
    )
    # every saved lift succeeded; one attempt may be discarded and retried: in about 1 of 3 runs
    # (2026-12-07 and 2026-12-08, also on an idle machine) one arm stops tracking mid-approach, far
    # from the bar and the other arm, and the expert's carrot waits for it until the episode times
    # out (cause not found yet: the arm's log is not kept by the demo; see the closing note)
    assert res.expert_success == 2 and res.expert_attempts <= 3, (res.expert_success, res.expert_attempts)
    ep = open_episode(list_episodes(tmp_path / "episodes")[0])
    assert {"action/arm_left", "action/arm_right", "robot_state/arm_left", "robot_state/arm_right"} <= set(ep.streams())
    left, right = ep.load("action/arm_left"), ep.load("action/arm_right")
    np.testing.assert_array_equal(left["target_ns"], right["target_ns"])  # lockstep: the same target times
    assert d.error_name == "bar lift" and set(d.arms) == {"arm_left", "arm_right"}
    assert d.policy_waypoints > 100 and d.controller["teleop_steps"] == 0
    # the policy's 16-D chunks went to both arms; a 100-step policy need not move them: its first
    # chunk can start beyond the arm's jump limit, which the arm refuses (README)
    assert set(d.policy_waypoints_arms) == {"arm_left", "arm_right"}
    assert min(d.policy_waypoints_arms.values()) > 100, d.policy_waypoints_arms


@pytest.fixture(scope="module")
def scripted_stack(tmp_path_factory):
    """One sim stack for the scripted deploys below: the reach setup's sim and arm, scripted
    policies that fail in known ways (one aiming 0.2 m beside every cube the sim can place, one
    under the table), the oracle (the reach expert from ground truth, 50 Hz, H 50, 200 ms of
    latency), and a controller for each."""
    import tempfile

    from robot_stack.apps.demo import config_path
    from robot_stack.apps.session import Session
    from robot_stack.comm.messages import RobotState
    from robot_stack.testing.setups import node, write_setup

    tmp = tmp_path_factory.mktemp("scripted")
    run_dir = tempfile.mkdtemp(prefix="rs-")  # short: ipc socket paths
    goto = {"type": "goto", "speed": 0.1, "horizon": 16, "dt": 0.1}
    ctl = {"source": "policy", "autostart": False, "cameras": [], "obs_keys": ["ee_pose"]}
    chunked = ctl | {"rate_hz": 10, "strategy": "sync", "execute_horizon": 8}
    oracle = {"type": "oracle", "task": "reach", "horizon": 50, "dt": 0.02}
    cfg = {
        "extends": str(config_path("sim_panda_reach.yaml")),
        "name": "scripted_deploys",
        "run_dir": run_dir,
        "nodes": {
            "policy_beside": node("policy", backend=goto | {"goal": [0.5, 0.35, 0.10]}),  # cube y <= 0.15
            "policy_under": node("policy", backend=goto | {"goal": [0.5, 0.0, -0.30]}),  # table top: z 0
            "oracle": node("policy", backend=oracle, delay_s=0.2),
            "ctl_beside": node("controller", policy="policy_beside", **chunked),
            "ctl_under": node("controller", policy="policy_under", **chunked),
            "ctl_oracle": node("controller", policy="oracle", rate_hz=50, strategy="rtc", execute_horizon=25, **ctl),
        },
    }
    only = ["sim", "arm", "policy_beside", "policy_under", "oracle", "ctl_beside", "ctl_under", "ctl_oracle"]
    s = Session(write_setup(tmp / "scripted.yaml", cfg), only=only)
    try:
        s.start((RobotState.TOPIC,))
        yield s
    finally:
        s.close()
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)


def test_deploy_names_why_its_episodes_failed(scripted_stack, report):
    """Deploy made to fail in two known ways through the real stack, one episode each: the policy
    aiming beside every cube times out far from it; the one aiming under the table has its chunks
    refused by the arm's workspace check. The failure table names each cause
    (``robot_stack.apps.failures``)."""
    from robot_stack.apps.deploy import failure_table, run_episodes

    s = scripted_stack
    beside = run_episodes(s, 1, 8.0, controller="ctl_beside", label="beside", seed=3)
    under = run_episodes(s, 1, 8.0, controller="ctl_under", label="under", seed=4)
    for name, res in (("beside", beside), ("under", under)):
        report(f"deploy failures ({name}): {[(f.cause, f.detail, f.notes) for f in res.failures]}")
    assert beside.success == [False] and under.success == [False]
    (fb,), (fu,) = beside.failures, under.failures
    assert fb.cause == "timeout_far" and beside.final_xy_err_mm[0] > 150, fb
    assert fu.cause == "arm_refused" and "workspace" in fu.detail, fu
    assert beside.controller["chunks"] > 3  # the far one was driven, not held
    assert failure_table(beside) is not None and failure_table(under) is not None


def test_the_oracle_reaches_through_the_stack_with_rtc_at_50_hz(scripted_stack, report):
    """The oracle policy (sim only) through the policy node and a controller at 50 Hz, RTC, 50-action
    chunks behind 200 ms of inference: deploy's episodes succeed, and RTC refuses a chunk only while
    d is still being measured."""
    from robot_stack.apps.deploy import run_episodes

    res = run_episodes(scripted_stack, 2, 15.0, controller="ctl_oracle", label="oracle", seed=5)
    report(
        f"oracle reach, rtc 50 Hz H=50 s=25, 200 ms latency: {sum(res.success)}/2, "
        f"completion {res.completion_s} s, refused {res.controller.get('refused_chunks')}, "
        f"failures {[(f.cause, f.detail) for f in res.failures]}"
    )
    assert res.success == [True, True], res.failures
    # (0-1 idle, 2 beside one busy loop per core: the first chunks, before d is measured; 15 of 33
    # with the old one-short d)
    assert res.controller["chunks"] > 10 and res.controller.get("refused_chunks", 0) <= 4, res.controller
