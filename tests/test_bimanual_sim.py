"""A multi-arm (bimanual) sim world: two arms from their own robot models, placed in one world
frame, each with its own impedance controller, joint messages, wrist camera and wrist wrench;
and, through real processes, two arm nodes driving their own arm of one world."""

import numpy as np

from conftest import wait_until
from robot_stack.testing.setups import node, setup, write_setup
import pytest
from scipy.spatial.transform import Rotation

from robot_stack.drivers.sim_model import ArmPlacement, SceneSpec, build_model

BASES = {"left": (0.0, 0.4, 0.0, 0.0), "right": (0.1, -0.4, 0.0, 0.5)}


def bimanual_scene():
    return SceneSpec(arms=tuple(ArmPlacement(n, "panda_robotiq", b) for n, b in BASES.items()))


def test_each_arm_sits_at_its_base_pose_and_matches_its_own_model():
    """The world's TCP of each arm, brought into the arm's base frame, is what the arm's own
    robot model computes from the sim's joint angles (the arm node's view), at home and elsewhere."""
    from robot_stack.control.robot_model import RobotModel
    from robot_stack.drivers.sim_world import SimWorld

    world = SimWorld(bimanual_scene())
    model = RobotModel.load("panda_robotiq")
    assert sorted(world.arms) == ["left", "right"]
    q_other = model.home_q + np.array([0.3, 0.2, -0.2, 0.3, 0.1, -0.2, 0.4])
    for name, base in BASES.items():
        for q in (model.home_q, q_other):
            world.data.qpos[world.arms[name].qpos] = q
            world.set_qpos(world.data.qpos.copy())
            T = ArmPlacement(name, base=base).T_world_base()
            p_world = world.tcp_pose(name)[:3]
            p_base = np.linalg.inv(T) @ np.r_[p_world, 1.0]
            np.testing.assert_allclose(p_base[:3], model.fk(q)[:3], atol=1e-6)
            R_world = Rotation.from_quat(world.tcp_pose(name)[3:]).as_matrix()
            np.testing.assert_allclose(
                T[:3, :3].T @ R_world, Rotation.from_quat(model.fk(q)[3:]).as_matrix(), atol=1e-6
            )
    with pytest.raises(KeyError, match="left"):
        world.joint_state("middle")
    with pytest.raises(ValueError, match="7 joints"):
        world.set_target(np.zeros(6), 1.0, "left")
    m = build_model(bimanual_scene())
    cams = {m.camera(i).name for i in range(m.ncam)}
    assert {"top", "scene", "left/handcam_rgb", "right/handcam_rgb"} <= cams


def test_each_arm_follows_its_own_target_only():
    from robot_stack.drivers.sim_world import SimWorld

    world = SimWorld(bimanual_scene())
    home = {n: world.joint_state(n)[0] for n in world.arms}
    goal = home["left"] + np.array([0.3, 0.15, 0.0, 0.2, 0.0, 0.0, 0.0])
    world.set_target(goal, 0.0, "left")
    world.step(750)  # 1.5 s
    q_l, _, _, g_l = world.joint_state("left")
    q_r, _, _, g_r = world.joint_state("right")
    assert np.abs(q_l - goal).max() < 0.02  # the impedance controller settles on its target
    assert np.abs(q_r - home["right"]).max() < 0.002  # the other arm holds
    assert g_l < 0.02 < 0.08 < g_r  # only the left gripper closed


def test_wrench_belongs_to_the_arm_that_touches():
    """Pressing the left gripper on the table loads the left wrist only."""
    from robot_stack.control.robot_model import RobotModel
    from robot_stack.drivers.sim_world import SimWorld

    world = SimWorld(bimanual_scene())
    model = RobotModel.load("panda_robotiq")
    q = world.joint_state("left")[0]
    start = model.fk(q)
    for z in np.linspace(start[2], -0.01, 40):  # the left TCP down into the table, in its base frame
        q = model.ik(np.r_[start[:2], z, start[3:]], q)
        world.set_target(q, 0.0, "left")
        world.step(25)
    world.step(250)
    fl, fr = world.tcp_wrench("left"), world.tcp_wrench("right")
    assert fl[2] > 5.0, fl  # the table pushes the left tool up
    assert np.abs(fr).max() < 1e-9, fr


def world_and_arms(left: str = "left") -> dict:
    """A two-arm sim world and its two arm nodes (the nodes every HIL setup here starts with)."""

    def arm(which):
        return node(
            "arm", driver={"type": "sim", "arm": which}, safety={"heartbeat_timeout_s": 1.0, "max_jump_ee": 0.08}
        )

    return {
        "sim": node(
            "sim_world",
            rate_hz=500,
            state_rate_hz=30,
            arms={"left": {"base": [0.0, 0.4, 0.0, 0.0]}, "right": {"base": [0.1, -0.4, 0.0, 0.5]}},
        ),
        "arm_left": arm(left),
        "arm_right": arm("right"),
    }


def hil_setup(run_dir, left: str = "left") -> dict:
    return setup(
        "hil_bimanual",
        run_dir,
        **world_and_arms(left),
        cam_left=node(
            "camera",
            driver={"type": "sim", "camera": "left/handcam_rgb"},
            camera_id="left_wrist",
            width=160,
            height=120,
            rate_hz=10,
        ),
    )


@pytest.mark.processes
def test_two_arm_nodes_drive_their_own_arms_of_one_world(tmp_path):
    """Real processes: each arm node serves its own arm of one sim world. A TCP line sent to the
    left arm node moves the left arm to its goal (in its base frame) while the right arm holds
    still; the left wrist camera renders; a config naming an arm the world lacks fails check."""
    import shutil
    import tempfile
    from pathlib import Path

    from conftest import launched, wait_past, wait_until
    from robot_stack.comm.transport import Subscriber
    from robot_stack.runtime.arm_client import ArmClient
    from robot_stack.control.paths import straight_line
    from robot_stack.runtime.clock import now_ns
    from robot_stack.runtime.config import ConfigError, load_config

    run_dir = Path(tempfile.mkdtemp(prefix="rs-bi-"))
    cfg_path = tmp_path / "bi.yaml"
    write_setup(cfg_path, hil_setup(run_dir))
    try:
        with launched(cfg_path) as (_, out):
            cfg = load_config(cfg_path)
            sub = Subscriber(
                [cfg.pub_endpoint(n, run_dir) for n in ("arm_left", "arm_right", "cam_left")],
                ("robot/state", "camera/"),
                history=4000,
                name="test-bi",
            )
            try:
                wait_until(
                    lambda: {m.source for m in sub.history("robot/state")} >= {"arm_left", "arm_right"},
                    60,
                    poll_s=0.1,
                    describe=out.tail,
                    what="robot state from both arms",
                )

                def latest(arm):
                    return next(x for x in reversed(sub.history("robot/state")) if x.source == arm)

                left0, right0 = np.array(latest("arm_left").ee_pose), np.array(latest("arm_right").ee_pose)
                goal = left0.copy()
                goal[:3] += [0.05, -0.05, -0.10]
                client = ArmClient(cfg, run_dir, arm="arm_left", source="test_bimanual")
                try:
                    stamps, poses = straight_line(left0, goal, now_ns() + 100_000_000, speed=0.15)
                    client.send_schedule(stamps, poses, space="ee")
                    wait_past(
                        int(stamps[-1]),
                        lambda: (
                            np.linalg.norm(np.array(latest("arm_left").ee_pose[:3]) - goal[:3]) < 0.005
                            and latest("arm_left").mode == "hold"
                        ),
                        extra_s=30.0,  # a bound for a loaded machine: one CPU hog per core took > 10 s once
                        what="the left arm at its goal, holding",
                    )
                finally:
                    client.close()
                left1, right1 = np.array(latest("arm_left").ee_pose), np.array(latest("arm_right").ee_pose)
                assert np.linalg.norm(left1[:3] - goal[:3]) < 0.005, (left1, goal)
                assert np.linalg.norm(right1[:3] - right0[:3]) < 0.001, (right0, right1)
                frame = sub.wait_for("camera/left_wrist", 10)
                assert frame is not None and frame.color.shape == (120, 160, 3) and frame.color.max() > 0
            finally:
                sub.close()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    bad = tmp_path / "bad.yaml"
    write_setup(bad, hil_setup(run_dir, left="middle"))
    with pytest.raises((ConfigError, ValueError), match="middle"):
        load_config(bad)


def lockstep_setup(run_dir, backend: dict, **controller) -> dict:
    """Both arms, a two-arm policy and one controller driving them in lockstep."""
    return setup(
        "hil_lockstep",
        run_dir,
        **world_and_arms(),
        policy=node("policy", backend=backend),
        controller=node(
            "controller", arms=["arm_left", "arm_right"], strategy="async", rate_hz=10, autostart=True, **controller
        ),
    )


@pytest.mark.processes
def test_one_controller_drives_two_arms_in_lockstep(tmp_path):
    """A two-arm chunking policy (16-D actions, each arm toward its own goal in its base frame)
    through one controller: both arms reach their goals, and every control step's schedules for
    the two arms carry the same stamps."""
    import shutil
    import tempfile
    from pathlib import Path

    from conftest import launched, wait_until
    from robot_stack.comm.messages import WaypointSchedule
    from robot_stack.comm.transport import Subscriber
    from robot_stack.runtime.config import load_config

    goals = {"arm_left": [0.45, -0.05, 0.25], "arm_right": [0.50, 0.10, 0.35]}
    run_dir = Path(tempfile.mkdtemp(prefix="rs-ls-"))
    cfg_path = tmp_path / "ls.yaml"
    write_setup(
        cfg_path,
        lockstep_setup(run_dir, {"type": "goto", "goals": [goals["arm_left"], goals["arm_right"]], "speed": 0.1}),
    )
    try:
        with launched(cfg_path) as (launcher, out):
            cfg = load_config(cfg_path)
            sub = Subscriber(
                [cfg.pub_endpoint(n, run_dir) for n in ("arm_left", "arm_right", "controller")],
                ("robot/state", WaypointSchedule.EXECUTED_TOPIC),
                history=5000,
                name="test-ls",
            )
            try:

                def latest(arm):
                    return next((x for x in reversed(sub.history("robot/state")) if x.source == arm), None)

                err = {}

                def arrived():
                    assert not launcher.dead, out.tail()
                    for a, g in goals.items():
                        st = latest(a)
                        err[a] = np.inf if st is None else float(np.linalg.norm(np.array(st.ee_pose[:3]) - g))
                    return max(err.values()) < 0.004

                wait_until(
                    arrived, 90, poll_s=0.2, describe=lambda: f"{err}\n{out.tail()}", what="both arms at their goals"
                )
                acts = sub.history(WaypointSchedule.EXECUTED_TOPIC)
                by_arm = {a: [m for m in acts if m.arm == a] for a in goals}
                # The history is read while the controller runs: the last step may be caught
                # between its left and its right schedule, so one trailing left may lack its pair.
                nl, nr = len(by_arm["arm_left"]), len(by_arm["arm_right"])
                assert nr > 10 and nl - nr in (0, 1), (nl, nr)
                for ml, mr in zip(by_arm["arm_left"], by_arm["arm_right"]):
                    np.testing.assert_array_equal(ml.stamps_ns, mr.stamps_ns)
            finally:
                sub.close()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.mark.processes
def test_a_two_arm_controller_refuses_a_one_arm_policy(tmp_path, run_dir):
    """The policy's spec says 8-D actions (one arm); the controller drives two: it ends at start-up
    naming the difference."""
    from conftest import launched, wait_until

    cfg_path = tmp_path / "mm.yaml"
    write_setup(cfg_path, lockstep_setup(run_dir, {"type": "goto", "goal": [0.5, 0.0, 0.3]}))
    with launched(cfg_path) as (launcher, out):
        wait_until(lambda: "controller" in launcher.dead, 90, describe=out.tail, what="the controller to end")
        assert launcher.dead.get("controller") == 1, out.tail()
        log = out.tail(80)
        assert "the policy's spec does not match this controller" in log
        assert "8-D 'ee_pose+gripper' (1 arm), the controller executes 16-D 'ee_pose+gripper' (2 arms)" in log


@pytest.mark.processes
def test_a_two_arm_episode_records_each_arm_by_name(tmp_path):
    """The recorder of a two-arm setup writes robot_state/<arm> and action/<arm> for each arm (the
    controller's lockstep schedules: the same target times for both) and lists both robots."""
    import shutil
    import tempfile
    from pathlib import Path

    from robot_stack.apps.session import Session
    from robot_stack.data.dataset import list_episodes, open_episode

    run_dir = Path(tempfile.mkdtemp(prefix="rs-lr-"))
    root = tmp_path / "episodes"
    cfg_path = tmp_path / "rec.yaml"
    cfg = lockstep_setup(run_dir, {"type": "goto", "goals": [[0.45, -0.05, 0.25], [0.5, 0.1, 0.35]], "speed": 0.1})
    cfg["nodes"]["recorder"] = node(
        "recorder", root=str(root), arms=["arm_left", "arm_right"], controller="controller", flush_every_s=0.2
    )
    write_setup(cfg_path, cfg)
    s = Session(cfg_path)
    try:
        s.start(("robot/state", "heartbeat/recorder"))
        s.send_event("start", ["recorder"])
        wait_until(lambda: s.heartbeat("recorder").get("duration_s", 0) >= 3.0, 30, what="3 s recorded")
        s.send_event("stop", ["recorder"])
        wait_until(lambda: list_episodes(root), 15, poll_s=0.1, what="the episode saved")
    finally:
        s.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    ep = open_episode(list_episodes(root)[0])
    streams = set(ep.streams())
    assert {"robot_state/arm_left", "robot_state/arm_right", "action/arm_left", "action/arm_right"} <= streams, streams
    assert "robot_state" not in streams and "action" not in streams
    rl, rr = ep.load("robot_state/arm_left"), ep.load("robot_state/arm_right")
    # both arms' states through the 3 s (a loaded machine slows the sim: 188 per arm beside two
    # CPU hogs, against about 300 idle)
    for st in (rl["stamp_ns"], rr["stamp_ns"]):
        assert len(st) > 60 and (st[-1] - st[0]) / 1e9 > 2.5, (len(st), (st[-1] - st[0]) / 1e9)
    assert np.abs(rl["ee_pose"][-1, :3] - rr["ee_pose"][-1, :3]).max() > 0.05  # two different arms
    al, ar = ep.load("action/arm_left"), ep.load("action/arm_right")
    assert len(al["target_ns"]) > 10
    np.testing.assert_array_equal(np.sort(al["target_ns"]), np.sort(ar["target_ns"]))
    assert [r["arm_node"] for r in ep.meta["robots"]] == ["arm_left", "arm_right"]


@pytest.mark.processes
@pytest.mark.parametrize("together", [True, False])
def test_an_arm_in_estop_holds_the_other(tmp_path, together):
    """Both arms on their way (a slow two-arm policy); the right arm is e-stopped. With
    hold_together (the default) the controller holds the left arm too, short of its goal; without
    it the left arm goes on to its goal."""
    import shutil
    import tempfile
    from pathlib import Path

    from conftest import launched, wait_samples_of, wait_until
    from robot_stack.comm.messages import Heartbeat
    from robot_stack.comm.transport import Subscriber
    from robot_stack.runtime.arm_client import ArmClient
    from robot_stack.runtime.config import load_config

    goal_left = np.array([0.40, 0.0, 0.15])
    run_dir = Path(tempfile.mkdtemp(prefix="rs-es-"))
    cfg_path = tmp_path / "es.yaml"
    write_setup(
        cfg_path,
        lockstep_setup(
            run_dir, {"type": "goto", "goals": [goal_left, [0.45, 0.1, 0.2]], "speed": 0.05}, hold_together=together
        ),
    )
    try:
        with launched(cfg_path) as (launcher, out):
            cfg = load_config(cfg_path)
            sub = Subscriber(
                [cfg.pub_endpoint(n, run_dir) for n in ("arm_left", "controller")],
                ("robot/state", Heartbeat.topic("controller")),
                history=3000,
                name="test-es",
            )
            cli = None
            try:

                def left_state():
                    return next((x for x in reversed(sub.history("robot/state")) if x.source == "arm_left"), None)

                def left():
                    st = left_state()
                    return None if st is None else np.array(st.ee_pose[:3])

                wait_until(
                    lambda: (
                        left() is not None
                        and (hb := sub.latest(Heartbeat.topic("controller"))) is not None
                        and hb.metrics.get("chunks", 0) >= 3
                    ),
                    60,
                    poll_s=0.1,
                    describe=out.tail,
                    what="3 chunks executed",
                )
                start = left()
                assert start is not None and np.linalg.norm(start - goal_left) > 0.1, (start, out.tail())
                cli = ArmClient(cfg, run_dir, arm="arm_right", source="test_estop", heartbeat_hz=0)
                cli.estop("test")
                if together:  # the left arm brakes and holds too
                    wait_until(
                        lambda: (st := left_state()).mode == "hold" and np.abs(st.dq).max() < 0.01,
                        5,
                        what="the left arm held",
                    )
                else:
                    wait_samples_of(sub, "arm_left", 125)  # half a second on
                at_stop = left()
                if together:
                    wait_samples_of(sub, "arm_left", 500)  # 2 s held
                else:
                    wait_until(lambda: np.linalg.norm(left() - at_stop) > 0.05, 10, what="the left arm going on")
                moved = np.linalg.norm(left() - at_stop)
                if together:
                    assert moved < 0.003, (moved, out.tail())
                    assert np.linalg.norm(left() - goal_left) > 0.05
                    hb = sub.wait_for(Heartbeat.topic("controller"), 3)
                    assert hb.metrics["stale_holds"] >= 1
                else:
                    assert moved > 0.05, moved  # 0.05 m/s for 2 s: it goes on
            finally:
                if cli is not None:
                    cli.close()
                sub.close()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
