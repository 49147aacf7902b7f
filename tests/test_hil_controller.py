"""The controller with each strategy on the sim: real processes, sockets, physics, 200 ms inference.

A scripted straight-line policy (``GoToPolicy``) is served by a policy node with an injected
200 ms inference delay; each strategy's controller process must bring the TCP to the goal along the
line through the full stack (observation -> request/reply -> chunk -> waypoints -> arm).
"""

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from robot_stack.runtime.arm_client import ArmClient
from robot_stack.control.paths import straight_line
from robot_stack.runtime.clock import now_ns
from robot_stack.runtime.config import load_config
from robot_stack.comm.transport import Subscriber

from conftest import REPO, launched, wait_past, wait_samples, wait_until
from robot_stack.testing import WaitTimeout
from robot_stack.testing.setups import node, setup, write_setup

pytestmark = pytest.mark.processes

START = np.array([0.45, -0.10, 0.30])
CUBE = np.array([0.5, 0.05, 0.02])
GOAL = np.array([0.45, 0.10, 0.30])


def _free_port() -> int:
    import socket

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


WS_PORT = _free_port()  # the openpi-protocol policy server the reach_ws_* controllers use

STRATEGIES = ("sync", "async", "ensemble", "rtc")
GOTO = {"type": "goto", "goal": [0.45, 0.10, 0.30], "speed": 0.08, "horizon": 16, "dt": 0.1}


def stack_setup(run_dir, fast_path) -> dict:
    """The module's stack: the sim, its arm, scripted policies (200 ms and 800 ms inference) and one
    controller per case, started by each test."""

    def ctl(**p):
        return node("controller", **p)

    chunked = {"rate_hz": 10, "execute_horizon": 8, "ensemble_m": 0.1}
    nodes = {
        "sim": node("sim_world"),
        # CI's loaded 2-core machine has starved a controller process and this test process for
        # 0.5 s each (the default timeout, which dropped a schedule mid-move): here the arm waits 2 s.
        # Heartbeat loss itself is tested in-process on a fake clock (tests/test_arm_node.py).
        "arm": node("arm", safety={"heartbeat_timeout_s": 2.0}),
        "policy": node("policy", backend=GOTO, delay_s=0.2),
        **{f"controller_{s}": ctl(strategy=s, **chunked) for s in STRATEGIES},
        **{f"reach_{s}": ctl(strategy=s, policy="policy_reach", **chunked) for s in STRATEGIES},
        "policy_reach": node(
            "policy",
            backend={
                "type": "goto",
                "goal": [0.5, 0.05, 0.025],
                "via": [0.5, 0.05, 0.14],
                "speed": 0.08,
                "horizon": 16,
                "dt": 0.1,
            },
            delay_s=0.2,
        ),
        "teleop": node("teleop", device="keyboard"),
        **{
            f"reach_ws_{s}": ctl(
                strategy=s,
                policy_endpoint=f"ws://127.0.0.1:{WS_PORT}",
                openpi_keys={"observation/state": "ee_pose"},
                **chunked,
            )
            for s in STRATEGIES
        },
        "cam": node("camera", driver={"type": "synthetic"}, camera_id="scene", width=64, height=48, rate_hz=7),
        "frame_on": ctl(strategy="async", rate_hz=5, cameras=["cam"], request_on_frame=True),
        "frame_off": ctl(strategy="async", rate_hz=5, cameras=["cam"], request_on_frame=False),
        "controller_intervene": ctl(strategy="async", rate_hz=10, teleop="teleop"),
        "policy_slow": node("policy", backend=GOTO, delay_s=0.8),
        **{
            f"rest_{s}_{str(on).lower()}": ctl(
                strategy=s, rate_hz=10, execute_horizon=8, policy="policy_slow", start_from_rest=on
            )
            for s in ("sync", "ensemble")
            for on in (True, False)
        },
        "controller_fast": ctl(strategy="sync", rate_hz=10, execute_horizon=8, fast=str(fast_path)),
    }
    return setup("ctl", run_dir, **nodes)


FAST_BIAS = np.array([0.0, 0.0, 0.02])  # the test's fast layer: a constant correction, m


def _bias_fast_layer(path: Path) -> None:
    """A fast-layer file that integrates to FAST_BIAS whatever it feels (zero weights, a bias)."""
    from robot_stack.control.fast import FastCorrector

    n = 6 * 5 + 1  # 0.1 m/s up, always "in contact" (contact_n < 0), integrated up to 2 cm
    FastCorrector(
        [(np.zeros((3, n)), FAST_BIAS * 5)],
        np.zeros(n),
        np.ones(n),
        np.ones(3),
        5,
        50.0,
        float(np.linalg.norm(FAST_BIAS)),
        -1.0,
    ).save(path)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    run_dir = Path(tempfile.mkdtemp(prefix="rs-ctl-"))
    cfg_path = tmp_path_factory.mktemp("ctl") / "ctl.yaml"
    fast_path = cfg_path.parent / "bias_fast.safetensors"
    _bias_fast_layer(fast_path)
    write_setup(cfg_path, stack_setup(run_dir, fast_path))
    try:
        with launched(cfg_path, only=["sim", "arm", "policy", "policy_reach", "policy_slow", "cam"]) as (_, out):
            cfg = load_config(cfg_path)
            state = Subscriber(
                [cfg.pub_endpoint("arm", run_dir), cfg.pub_endpoint("sim", run_dir)],
                ("robot/state", "sim/objects"),
                history=3000,
            )
            try:
                assert state.wait_for("robot/state", 60) is not None, out.tail()
                # the reach task's cube, placed while the arm is still at home (a reset homes the arm)
                from robot_stack.drivers.sim_messages import SimCommand
                from robot_stack.comm.transport import Sender

                tx = Sender(cfg.in_endpoint("sim", run_dir), "test")
                tx.send(SimCommand.TOPIC, SimCommand(kind="reset", cube_pose=np.r_[CUBE, 0, 0, 0, 1.0]))
                tx.close()
                # the reset homes the arm too: wait for the cube in place and the arm at rest again
                wait_until(
                    lambda: (
                        (o := state.latest("sim/objects")) is not None
                        and np.linalg.norm(np.asarray(o.cube_pose[:3]) - CUBE) < 0.01
                        and (st := state.latest("robot/state")).mode == "hold"
                        and np.abs(st.dq).max() < 0.01
                        and len(state.history("robot/state")) > 100
                        and np.ptp([m.q for m in state.history("robot/state")[-100:]], axis=0).max() < 1e-3
                    ),
                    20,
                    what="the cube placed and the arm at rest after the reset",
                )
                yield {"cfg": cfg, "cfg_path": cfg_path, "run_dir": run_dir, "state": state, "out": out}
            finally:
                state.close()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _wait_until(arrived, t_end_ns: int | None = None, timeout_s: float = 5.0) -> None:
    """Wait past ``t_end_ns`` (a planned motion's end) until ``arrived()`` for up to ``timeout_s``
    more (under load the arm can arrive late); the caller asserts, with the state that explains."""
    try:
        wait_past(t_end_ns or now_ns(), arrived, extra_s=timeout_s)
    except WaitTimeout:
        pass


def move_to_start(stack):
    client = ArmClient(stack["cfg"], stack["run_dir"], source="test_reset")
    try:
        p = np.array(stack["state"].latest("robot/state").ee_pose)
        goal = p.copy()
        goal[:3] = START
        stamps, poses = straight_line(p, goal, now_ns(), speed=0.15)
        client.send_schedule(stamps, poses, space="ee")
        # under load the arm can arrive late (one CI run: 68 mm short)
        _wait_until(
            lambda: np.linalg.norm(np.array(stack["state"].latest("robot/state").ee_pose[:3]) - START) <= 0.005,
            int(stamps[-1]),
        )
    finally:
        client.close()
    assert np.linalg.norm(np.array(stack["state"].latest("robot/state").ee_pose[:3]) - START) < 0.005


def home_joints(stack):
    """A joint-space move to the sim's home posture (as a deploy episode's reset does)."""
    from robot_stack.drivers.sim_model import HOME_Q

    arm_hb = Subscriber([stack["cfg"].pub_endpoint("arm", stack["run_dir"])], ("heartbeat",))
    client = ArmClient(stack["cfg"], stack["run_dir"], source="test_home")
    try:
        before = arm_hb.wait_for("heartbeat/arm", 3)
        q0 = np.array(stack["state"].latest("robot/state").q)
        dur = max(0.5, float(np.abs(HOME_Q - q0).max()) / 0.5)
        s = np.linspace(0, 1, int(dur / 0.05) + 1)[1:]
        t_send = now_ns()
        client.send_schedule(t_send + (s * dur * 1e9).astype(np.int64), q0 + s[:, None] * (HOME_Q - q0))
        _wait_until(
            lambda: np.abs(np.array(stack["state"].latest("robot/state").q) - HOME_Q).max() <= 0.02,
            t_send + int(dur * 1e9),
        )
        after = arm_hb.wait_for("heartbeat/arm", 3, newer_than_seq=before.seq if before else -1)
    finally:
        client.close()
        arm_hb.close()
    m0, m1 = (before.metrics if before else {}), (after.metrics if after else {})
    changed = {k: (m0.get(k), v) for k, v in m1.items() if m0.get(k) != v}
    q = np.array(stack["state"].latest("robot/state").q)
    assert np.abs(q - HOME_Q).max() < 0.02, (
        f"home move from {q0.round(3)} ended at {q.round(3)}; arm metrics "
        f"that changed: {changed}\nstack:\n{stack['out'].tail()}"
    )


def deviation_from_line(p):
    d = GOAL - START
    s = np.clip((p - START) @ d / (d @ d), 0, 1)
    return np.linalg.norm(p - (START + s[:, None] * d), axis=1)


@pytest.mark.parametrize("strategy", ["sync", "async", "ensemble", "rtc"])
def test_strategy_completes_the_motion(stack, strategy, report):
    move_to_start(stack)
    node = f"controller_{strategy}"
    sub = Subscriber([stack["cfg"].pub_endpoint(node, stack["run_dir"])], ("heartbeat",))
    t0 = now_ns()
    proc = subprocess.Popen(
        [sys.executable, "-m", "robot_stack.nodes.main", str(stack["cfg_path"]), node, str(stack["run_dir"])],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    try:
        reached_at = None
        try:
            wait_until(
                lambda: np.linalg.norm(np.array(stack["state"].latest("robot/state").ee_pose[:3]) - GOAL) < 0.005,
                25,
                poll_s=0.02,
            )
            reached_at = now_ns()
        except WaitTimeout:
            pass
        hb = sub.wait_for(f"heartbeat/{node}", 3)
    finally:
        proc.send_signal(signal.SIGTERM)
        log = proc.communicate(timeout=10)[0].decode(errors="replace")
        sub.close()
    assert reached_at is not None, f"{strategy} never reached the goal\n{log[-3000:]}"
    path = np.array([m.ee_pose[:3] for m in stack["state"].history("robot/state") if m.stamp_ns >= t0])
    dev = deviation_from_line(path)
    m = hb.metrics
    report(
        f"controller {strategy:8s}: reached the goal in {(reached_at - t0) / 1e9:.2f} s; path deviation max {dev.max() * 1e3:.2f} mm; "
        f"inference p50 {m.get('inference_p50_ms', 0):.0f} ms, d = {m['delay_steps']:.0f} steps; chunks {m['chunks']:.0f}, "
        f"dropped actions {m['dropped_actions']:.0f}, over budget {m['over_budget']:.0f}; chunk-switch jump mean "
        f"{m.get('switch_jump_mean_mm', 0):.2f} mm max {m.get('switch_jump_max_mm', 0):.2f} mm; "
        f"observation holds {m['obs_holds']:.0f}, stale holds {m['stale_holds']:.0f}"
    )
    # README: usually 0.8-1.8 mm. Async executes each chunk as the policy planned it from a lagged
    # observation (this stateless policy starts each line at the measured TCP), so its switches
    # jump back by the tracking lag x speed; under CI load the lag grows (one run: jumps of 17 mm
    # mean, 41 mm max, 8.9 mm off the line), and the arm's joint-space guard turns jumps into
    # deviation. That is the problem RTC and ensembling exist for; async gets the wider bound.
    assert dev.max() < (0.012 if strategy == "async" else 0.007)
    assert m["errors"] == 0 and m["chunks"] >= 3
    assert m["inference_p50_ms"] == pytest.approx(200, abs=60)  # the injected delay is seen
    assert proc.returncode == 0, log[-2000:]


def test_fast_layer_corrects_the_plan_at_its_rate(stack, report):
    """Slow-fast control through real processes: a controller with a fast layer (2 cm up within
    0.2 s, whatever the wrist wrench) runs it at 50 Hz on the arm's RobotState; the TCP ends at the
    slow policy's goal shifted by it, and the fast schedules go out at the fast rate."""
    move_to_start(stack)
    node = "controller_fast"
    sub = Subscriber(
        [stack["cfg"].pub_endpoint(node, stack["run_dir"]), stack["cfg"].pub_endpoint("arm", stack["run_dir"])],
        ("heartbeat", "controller/action"),
        history=5000,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "robot_stack.nodes.main", str(stack["cfg_path"]), node, str(stack["run_dir"])],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    goal = GOAL + FAST_BIAS
    try:
        reached = True
        try:
            wait_until(
                lambda: np.linalg.norm(np.array(stack["state"].latest("robot/state").ee_pose[:3]) - goal) < 0.005,
                25,
                poll_s=0.02,
            )
            wait_samples(sub, "controller/action", 50)  # a second of the fast layer's schedules after arriving
        except WaitTimeout:
            reached = False
        hb = sub.wait_for(f"heartbeat/{node}", 3)
        sent = [m for m in sub.history("controller/action")]
    finally:
        proc.send_signal(signal.SIGTERM)
        log = proc.communicate(timeout=10)[0].decode(errors="replace")
        sub.close()
    assert reached, f"never reached the shifted goal\n{log[-3000:]}"
    m = hb.metrics
    fast = [s for s in sent if s.origin == "fast"]
    slow = [s for s in sent if s.origin == "policy"]
    report(
        f"fast layer: {m['fast_corrections']:.0f} corrections, tick period p50 {m['fast_period_p50_ms']:.1f} ms "
        f"p99 {m['fast_period_p99_ms']:.1f} ms, compute p99 {m['fast_compute_p99_ms']:.3f} ms; "
        f"{len(fast)} fast and {len(slow)} slow schedules"
    )
    assert m["fast_period_p50_ms"] == pytest.approx(20.0, abs=2.0)  # 50 Hz
    assert m["fast_corrections"] > 20
    # the correction is the full 20 mm, unless a stale state (the arm's, late on a loaded machine)
    # halved it since (the fast layer decays rather than act on an old force); the TCP reaching the
    # shifted goal above is what shows the correction applied
    if m["fast_stale_states"] == 0:
        assert m["fast_correction_mm"] == pytest.approx(20.0, abs=0.01)
    else:
        assert 0.0 < m["fast_correction_mm"] <= 20.0 + 0.01
    assert len(fast) > 3 * len(slow) > 0
    # the slow side's schedules carry the correction too: their last waypoint is the shifted goal
    assert np.linalg.norm(slow[-1].positions[-1, :3] - goal) < 0.002
    assert proc.returncode == 0, log[-2000:]


def test_teleop_intervention_takes_over_and_hands_back(stack):
    """A teleop "intervene" button takes over from the policy at once; "release" hands back.

    The teleop node of the config is not started: the test binds its publisher endpoint itself and
    publishes what a device would (absolute TCP targets and buttons).
    """
    from robot_stack.comm.messages import TeleopCommand
    from robot_stack.comm.transport import Publisher

    move_to_start(stack)
    cfg, rd = stack["cfg"], stack["run_dir"]
    node = "controller_intervene"
    teleop = Publisher(cfg.pub_endpoint("teleop", rd), "teleop")
    sub = Subscriber([cfg.pub_endpoint(node, rd)], ("controller/action", "heartbeat"), history=2000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "robot_stack.nodes.main", str(stack["cfg_path"]), node, str(rd)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    hold = np.r_[START + np.array([0.0, 0.0, 0.05]), np.array(stack["state"].latest("robot/state").ee_pose[3:])]
    try:
        # the policy drives toward GOAL; once it has moved the TCP 2 cm (the node's start-up takes
        # seconds on a loaded machine) the operator intervenes and lifts the TCP 5 cm above START
        wait_until(
            lambda: np.array(stack["state"].latest("robot/state").ee_pose)[1] > START[1] + 0.02,
            15,
            what="the policy moving the arm before the intervention",
        )
        p_before = np.array(stack["state"].latest("robot/state").ee_pose[:3])
        t_int = now_ns()
        for k in range(60):  # 2 s of absolute targets at 30 Hz, from where the arm is toward `hold`
            a = min(1.0, (k + 1) / 30)
            target = np.r_[(1 - a) * p_before + a * hold[:3], hold[3:]]
            teleop.publish(
                "teleop/command",
                TeleopCommand(kind="ee_absolute", value=target, buttons=["intervene"] if k == 0 else []),
            )
            time.sleep(1 / 30)  # (pacing: a teleop device's 30 Hz stream)
        _wait_until(
            lambda: np.linalg.norm(np.array(stack["state"].latest("robot/state").ee_pose[:3]) - hold[:3]) < 0.01
        )
        p_held = np.array(stack["state"].latest("robot/state").ee_pose[:3])
        acts = [m for m in sub.history("controller/action") if m.stamp_ns > t_int + 200_000_000]
        assert acts and all(m.origin == "teleop" for m in acts), {m.origin for m in acts}
        assert np.linalg.norm(p_held - hold[:3]) < 0.01, (p_held, hold)
        teleop.publish("teleop/command", TeleopCommand(kind="ee_absolute", value=hold, buttons=["release"]))
        _wait_until(
            lambda: np.linalg.norm(np.array(stack["state"].latest("robot/state").ee_pose[:3]) - GOAL) < 0.005,
            timeout_s=15,
        )
        p_end = np.array(stack["state"].latest("robot/state").ee_pose[:3])
        hb = sub.wait_for(f"heartbeat/{node}", 3)
    finally:
        proc.send_signal(signal.SIGTERM)
        log = proc.communicate(timeout=10)[0].decode(errors="replace")
        sub.close()
        teleop.close()
    assert np.linalg.norm(p_end - GOAL) < 0.005, f"the policy did not resume after release\n{log[-2000:]}"
    assert hb.metrics["interventions"] == 1 and hb.metrics["teleop_steps"] > 5


def _move(stack, points, speed=0.15):
    client = ArmClient(stack["cfg"], stack["run_dir"], source="test_move")
    try:
        p = np.array(stack["state"].latest("robot/state").ee_pose)
        for q in points:
            goal = p.copy()
            goal[:3] = q
            stamps, poses = straight_line(p, goal, now_ns(), speed=speed)
            client.send_schedule(stamps, poses, space="ee")
            _wait_until(
                lambda q=q: np.linalg.norm(np.array(stack["state"].latest("robot/state").ee_pose[:3]) - q) < 0.005,
                int(stamps[-1]),
            )
            p = np.array(stack["state"].latest("robot/state").ee_pose)
    finally:
        client.close()


@pytest.fixture(scope="module")
def openpi_goto_server():
    """The reach expert behind openpi's websocket protocol, built on openpi-client's own msgpack
    module and ``websockets`` (as openpi's server is), on WS_PORT; 200 ms inference."""
    msgpack_numpy = pytest.importorskip("openpi_client.msgpack_numpy", reason="openpi-client is not installed")
    from websockets.sync.server import serve

    from policies.scripted import GoToPolicy

    policy = GoToPolicy([0.5, 0.05, 0.025], 0.08, 16, 2, 0.1, via=[0.5, 0.05, 0.14])
    served = []

    def handler(ws):
        ws.send(msgpack_numpy.packb({"dt": 0.1, "offset": 0}))
        for data in ws:
            obs = msgpack_numpy.unpackb(data)
            state = np.asarray(obs["observation/state"], np.float32)
            time.sleep(0.2)  # (the injected inference time of the served policy)
            served.append(1)
            ws.send(
                msgpack_numpy.packb(
                    {
                        "actions": np.asarray(policy.predict({"ee_pose": np.stack([state, state])}, None, None)),
                        "server_timing": {"infer_ms": 200.0},
                    }
                )
            )

    server = serve(handler, "127.0.0.1", WS_PORT, compression=None, max_size=None)
    import threading

    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield served
    server.shutdown()
    t.join(5)


@pytest.mark.parametrize(
    "node",
    # the blocking and the overlapping extremes through the stack, RTC over websockets too (each
    # strategy is told apart in-process, tests/test_controller_cores.py, and completes a motion
    # through the stack in test_strategy_completes_the_motion)
    ["reach_sync", "reach_rtc", "reach_ws_rtc"],
)
def test_reach_task_with_each_strategy(stack, node, report, request):
    """The sim reach task through the full stack with each strategy: the task's expert as a chunking
    policy (above the cube, then down; 200 ms inference) must end in the task's success region;
    ``reach_ws_*``: the same expert behind an openpi-protocol websocket server."""
    from robot_stack.tasks import ReachTask

    strategy = node.rsplit("_", 1)[1]
    if "_ws_" in node:
        served = request.getfixturevalue("openpi_goto_server")
        n_served = len(served)
    home_joints(stack)  # the same posture for every strategy: earlier tests leave the redundant joint anywhere
    move_to_start(stack)
    cube0 = np.array(stack["state"].latest("sim/objects").cube_pose[:3])
    proc = subprocess.Popen(
        [sys.executable, "-m", "robot_stack.nodes.main", str(stack["cfg_path"]), node, str(stack["run_dir"])],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    t0 = time.monotonic()
    try:
        ok_at = None

        def success():
            nonlocal tcp, cube
            tcp = np.array(stack["state"].latest("robot/state").ee_pose[:3])
            cube = np.array(stack["state"].latest("sim/objects").cube_pose[:3])
            return ReachTask().success(tcp, cube, cube0)

        tcp = cube = None
        try:
            wait_until(success, 25, poll_s=0.05)
            ok_at = time.monotonic() - t0
        except WaitTimeout:
            pass
    finally:
        proc.send_signal(signal.SIGTERM)
        log = proc.communicate(timeout=10)[0].decode(errors="replace")
        _move(stack, [cube0 + np.array([0, 0, 0.14]), START])  # straight up first: never sweep the cube
    assert ok_at is not None, (
        f"{strategy}: TCP {tcp}, cube {cube}\ncontroller:\n{log[-2000:]}\nstack:\n{stack['out'].tail()}"
    )
    via = " (openpi websocket server)" if "_ws_" in node else ""
    report(f"reach task, {strategy:8s} @ 200 ms inference{via}: success after {ok_at:.1f} s")
    if "_ws_" in node:
        assert len(served) - n_served >= 3  # the chunks came from the websocket server


def _request_wait(stack, node):
    """Run controller ``node`` until it has made 12 requests; return its heartbeat metrics and the
    p50 of the camera frames' age on arrival (measured beside it, at a subscriber of our own)."""
    cfg, rd = stack["cfg"], stack["run_dir"]
    sub = Subscriber([cfg.pub_endpoint(node, rd)], ("heartbeat",))
    cams = Subscriber([cfg.pub_endpoint("cam", rd)], ("camera/scene",))
    proc = subprocess.Popen(
        [sys.executable, "-m", "robot_stack.nodes.main", str(stack["cfg_path"]), node, str(rd)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    arrival_ms, m, seq, f, last = [], {}, -1, None, -1
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and m.get("requests", 0) < 12:
            f = cams.wait_for("camera/scene", 0.5, newer_than_seq=-1 if f is None else f.seq) or f
            if f is not None and f.seq != last:
                arrival_ms.append((now_ns() - f.stamp_ns) / 1e6)
                last = f.seq
            hb = sub.latest(f"heartbeat/{node}")
            if hb is not None and hb.seq != seq:
                m, seq = hb.metrics, hb.seq
    finally:
        proc.send_signal(signal.SIGTERM)
        log = proc.communicate(timeout=10)[0].decode(errors="replace")
        sub.close()
        cams.close()
    assert m.get("requests", 0) >= 12 and "stage_frame_age_p50_ms" in m, log[-2000:]
    return m, float(np.percentile(arrival_ms, 50))


def test_requests_start_when_the_frame_arrives(stack, report):
    """A 7 Hz camera, 5 Hz control (To = 2 frames 200 ms apart), 200 ms inference. A request timed
    by the control loop finds the newest frame some 0-143 ms after it arrived (the phase drifts:
    200 ms is no multiple of the frame period); a frame-triggered one (``request_on_frame``, the
    default) starts as the next frame arrives, so the frame's age at request is only its age on
    arrival. The camera is the synthetic test pattern (stamped as it is made, no render time), so
    the age on arrival is transport only and the difference is the wait alone."""
    move_to_start(stack)
    off, arr_off = _request_wait(stack, "frame_off")
    move_to_start(stack)
    on, arr_on = _request_wait(stack, "frame_on")
    wait_off = off["stage_frame_age_p50_ms"] - arr_off
    wait_on = on["stage_frame_age_p50_ms"] - arr_on
    report(
        f"frame age at request p50 (7 Hz camera, 200 ms inference): frame-triggered "
        f"{on['stage_frame_age_p50_ms']:.0f} ms (on arrival {arr_on:.0f} ms, so {wait_on:.0f} ms of waiting), "
        f"control-timed {off['stage_frame_age_p50_ms']:.0f} ms (on arrival {arr_off:.0f}, waiting {wait_off:.0f} ms)"
    )
    assert wait_on < 0.3 * wait_off
    assert on["anchor_waits_timed_out"] == 0 and off["anchor_waits_timed_out"] == 0


def _first_lead(stack, node):
    """Run controller ``node`` from rest until its first schedule went out; return its heartbeat
    metrics (``first_lead_max_mm``: that schedule's first waypoint -> the TCP)."""
    cfg, rd = stack["cfg"], stack["run_dir"]
    sub = Subscriber([cfg.pub_endpoint(node, rd)], ("heartbeat",))
    proc = subprocess.Popen(
        [sys.executable, "-m", "robot_stack.nodes.main", str(stack["cfg_path"]), node, str(rd)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    m = {}
    try:

        def led():
            nonlocal m
            hb = sub.wait_for(f"heartbeat/{node}", 1.0, newer_than_seq=-1)
            m = hb.metrics if hb is not None else m
            return "first_lead_max_mm" in m

        try:
            wait_until(led, 30, poll_s=0.1)
        except WaitTimeout:
            pass
    finally:
        proc.send_signal(signal.SIGTERM)
        log = proc.communicate(timeout=10)[0].decode(errors="replace")
        sub.close()
    assert "first_lead_max_mm" in m, log[-2000:]
    return m


@pytest.mark.parametrize("strategy", ["sync", "ensemble"])
def test_first_chunk_from_rest_starts_at_its_beginning(stack, strategy, report):
    """800 ms inference, 0.08 m/s: a chunk stamped from its observation finds its first 8+ actions
    due during inference, so its first waypoint lies 64+ mm ahead of the resting TCP (the arm node
    refuses beyond ``max_jump_ee``); stamped from its arrival (``start_from_rest``) it starts with
    its own first actions, within a step (8 mm) of the TCP."""
    move_to_start(stack)
    on = _first_lead(stack, f"rest_{strategy}_true")
    move_to_start(stack)
    off = _first_lead(stack, f"rest_{strategy}_false")
    report(
        f"{strategy}: first waypoint from rest {on['first_lead_max_mm']:.1f} mm from the TCP with start_from_rest, "
        f"{off['first_lead_max_mm']:.1f} mm without (800 ms inference, 0.08 m/s)"
    )
    assert on["first_lead_max_mm"] < 20 and on["chunks_from_rest"] >= 1
    assert off["first_lead_max_mm"] > 55 and off["chunks_from_rest"] == 0
