"""Franka at protocol level: the arm node drives franka-sim (the Franka network protocol, FR3 in
MuJoCo) through pylibfranka, the same code path as a real robot.

franka-sim runs in its own virtual environment (it pins numpy 1.26 and mujoco < 3.3), made by
``scripts/setup.sh`` at ``.venv-franka-sim``; the fixture generates an FR3 MJCF from the URDF in
the franka_sim package (no download) and starts the server with the real robot's communication checks on (motion-limit checks off, see the fixture). pylibfranka always uses TCP 1337, so these tests run one at a time.
"""

import os
import signal
import socket
import subprocess

import numpy as np
import pytest

from conftest import REPO, wait_past, wait_samples, wait_until
from robot_stack.testing import WaitTimeout


def _recent_q(stack, n: int = 50) -> np.ndarray:
    return np.array([m.q for m in stack.sub.history("robot/state")[-n:]])


def state_text(stack) -> str:
    q = _recent_q(stack)
    return f"mode {stack.state().mode}, joint spread over the last {len(q)} states {np.ptp(q, axis=0).max():.4f} rad"


def settled(stack, tol: float = 0.002) -> bool:
    """The arm holds and the robot has come to rest: its joints moved less than ``tol`` rad over the
    last 50 states (0.2 s; franka-sim's dq is too noisy to tell, and its impedance controller settles
    after our command)."""
    q = _recent_q(stack)
    return stack.state().mode == "hold" and len(q) >= 50 and float(np.ptp(q, axis=0).max()) < tol


pytestmark = pytest.mark.processes
FS_PY = REPO / ".venv-franka-sim" / "bin" / "python"


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def franka_sim(tmp_path_factory):
    if not FS_PY.exists():
        pytest.skip(f"franka-sim venv not found at {FS_PY.parent.parent}: run scripts/setup.sh (CI does)")
    pytest.importorskip("pylibfranka", reason="pylibfranka is installed by scripts/setup.sh")
    if _port_open(1337):
        pytest.fail("TCP 1337 is already in use: another franka-sim or robot connection is running")
    d = tmp_path_factory.mktemp("fr3")
    mjcf = d / "fr3.xml"
    subprocess.run([str(FS_PY), str(REPO / "tests" / "gen_fr3_mjcf.py"), str(mjcf)], check=True, timeout=120)
    log = open(d / "franka_sim.log", "w")
    # --enforce-motion-limits stays off: on a shared 2-core machine without a real-time kernel the
    # 1 kHz loop has late cycles (p99 ~7 ms), and the FCI's discontinuity check (a real robot's
    # too) reads a late cycle as an acceleration jump; the real robot runs with realtime: enforce
    proc = subprocess.Popen(
        [str(FS_PY.parent / "run-franka-sim-server"), "--enforce-comm-constraints"],
        env={**os.environ, "FR3_MJCF": str(mjcf)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def serving():
            if proc.poll() is not None:
                raise RuntimeError(f"franka-sim ended:\n{(d / 'franka_sim.log').read_text()[-3000:]}")
            return _port_open(1337) and _port_open(1338)

        wait_until(
            serving,
            90,
            poll_s=0.3,
            describe=lambda: (d / "franka_sim.log").read_text()[-3000:],
            what="franka-sim's ports",
        )
        yield {"log": d / "franka_sim.log", "mjcf": mjcf, "dir": d}
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()


@pytest.fixture(scope="module")
def stack(franka_sim):
    from robot_stack.apps.session import Session

    # heartbeat 1.5 s, not the setup's 0.5 s: beside a CPU hog per core this test process's
    # heartbeat thread was starved past 0.5 s and the arm held the there-and-back move halfway
    # (heartbeat loss itself: tests/test_arm_node.py in-process, and the stalled controller below)
    s = Session(REPO / "configs" / "franka_sim.yaml", sets={"nodes.arm.params.safety.heartbeat_timeout_s": 1.5})
    try:
        s.start(("robot/state",), timeout_s=60)
        yield s
    finally:
        s.close()


def sim_errors(franka_sim) -> list[str]:
    """Errors franka-sim enforced (aborted motions, communication-constraint violations)."""
    text = franka_sim["log"].read_text()
    return [
        ln
        for ln in text.splitlines()
        if ("violation" in ln.lower() or "reflex" in ln.lower() or "abort" in ln.lower()) and "not enforced" not in ln
    ]


def unenforced_warnings(franka_sim) -> int:
    return sum("not enforced" in ln for ln in franka_sim["log"].read_text().splitlines())


def test_schedule_there_and_back(stack, franka_sim, report):
    from robot_stack.runtime.clock import now_ns

    q0 = np.array(stack.state().q)
    delta = np.array([0.3, -0.2, 0.0, 0.25, 0.0, 0.2, -0.3])
    t0 = now_ns() + 200_000_000
    s = np.linspace(0, 1, 41)
    ease = 0.5 - 0.5 * np.cos(np.pi * s)
    stamps = np.r_[t0 + (s * 3e9).astype(np.int64), t0 + 3_500_000_000 + (s * 3e9).astype(np.int64)]
    path = np.r_[q0 + ease[:, None] * delta, q0 + (1 - ease)[:, None] * delta]
    stack.arm.send_schedule(stamps, path, space="joint", gripper=np.r_[np.ones(41), np.full(41, 0.25)])
    wait_past(
        int(stamps[-1]),
        lambda: settled(stack),
        what="the there-and-back move's end, settled",
        describe=lambda: state_text(stack),
    )
    hist = [m for m in stack.sub.history("robot/state") if stamps[0] <= m.stamp_ns <= stamps[-1]]
    tq = np.array([m.stamp_ns for m in hist])
    q = np.array([m.q for m in hist])
    ref = np.stack([np.interp(tq, stamps, path[:, j]) for j in range(7)], 1)
    err = np.abs(q - ref).max(1)
    hb = stack.heartbeat("arm")
    report(
        f"franka-sim tracking: max {err.max():.4f} rad, mean {err.mean():.4f} rad (lag of the robot's "
        f"impedance controller and our jerk limiter included); 1 kHz loop period p50 "
        f"{hb['franka.period_p50_ms']:.3f} ms, p99 {hb['franka.period_p99_ms']:.3f} ms, max "
        f"{hb['franka.period_max_ms']:.1f} ms over {hb['franka.cycles']:.0f} cycles; motion-limit warnings "
        f"(not enforced): {unenforced_warnings(franka_sim)}"
    )
    try:  # under load the impedance controller's lag grows: it settles later
        wait_until(lambda: np.abs(np.array(stack.state().q) - q0).max() < 0.02, 5, poll_s=0.1)
    except WaitTimeout:
        pass  # asserted below, with the offset
    back = np.array(stack.state().q)
    assert np.abs(q.max(0) - q0 - np.maximum(delta, 0)).max() < 0.05, stack.logs.tail(60)  # it went there
    assert np.abs(back - q0).max() < 0.02, back - q0  # and came back
    # franka-sim's server paces the 1 kHz loop; beside the stack on a 2-core machine it falls behind
    # at times (p50 1.0-1.3 ms seen), a real robot does not
    assert err.max() < 0.03 and hb["franka.period_p50_ms"] == pytest.approx(1.0, abs=0.4)
    assert stack.state().gripper_width == pytest.approx(0.02, abs=0.01)  # 0.25 of 80 mm
    assert hb.get("safety.driver_fault", 0) == 0 and not sim_errors(franka_sim), sim_errors(franka_sim)
    # O_F_ext_hat_K reaches RobotState.wrench (franka-sim models no external force: it sends zeros;
    # a missing field would read None, a misplaced one the joint values)
    w = stack.state().wrench
    assert w is not None and np.array_equal(w, np.zeros(6)), w


def test_jump_is_refused_before_libfranka(stack, franka_sim):
    from robot_stack.runtime.clock import now_ns

    before = stack.heartbeat("arm")
    refused0 = sum(v for k, v in before.items() if k.startswith("safety.") and "jump" in k)
    q0 = np.array(stack.state().q)
    jump = q0 + np.r_[0.6, 0, 0, 0, 0, 0, 0]  # 0.6 rad at once: over max_jump_joint (0.2)
    stack.arm.send_schedule(
        np.array([now_ns() + 50_000_000, now_ns() + 1_000_000_000]), np.stack([jump, jump]), space="joint"
    )
    wait_until(
        lambda: sum(v for k, v in stack.heartbeat("arm").items() if k.startswith("safety.") and "jump" in k) > refused0,
        5,
        what="the jump refused",
    )
    wait_samples(stack.sub, "robot/state", 250)  # a second after the refusal
    after = stack.heartbeat("arm")
    refused = sum(v for k, v in after.items() if k.startswith("safety.") and "jump" in k)
    assert refused == refused0 + 1, after
    assert np.abs(np.array(stack.state().q) - q0).max() < 0.02  # never moved toward the 0.6 rad jump (holds within the
    # robot impedance controller's settling, ~0.01 rad)
    assert not sim_errors(franka_sim), sim_errors(franka_sim)


def test_stalled_controller_holds_without_comm_violation(stack, franka_sim):
    from robot_stack.runtime.arm_client import ArmClient
    from robot_stack.runtime.clock import now_ns

    q0 = np.array(stack.state().q)
    client = ArmClient(stack.cfg, stack.rd, source="stalling", heartbeat_hz=0)  # never heartbeats again
    try:
        t0 = now_ns() + 100_000_000
        stamps = t0 + (np.linspace(0, 8, 41) * 1e9).astype(np.int64)
        path = q0 + np.linspace(0, 1, 41)[:, None] * np.r_[0.4, 0, 0, 0, 0, 0, 0]
        client.heartbeat()
        client.send_schedule(stamps, path, space="joint")
        # heartbeat timeout 1.5 s: the arm holds well before the schedule's end. Stopping from
        # 0.05 rad/s, the arm overshoots the hold point and comes back (in one CI rehearsal still
        # 0.012 rad off 2.5 s after the schedule began): the hold is measured once it settled
        wait_until(
            lambda: stack.heartbeat("arm").get("safety.heartbeat_stale", 0) >= 1 and settled(stack),
            10,
            what="the arm holding, settled",
            describe=lambda: state_text(stack),
        )
        q_hold = np.array(stack.state().q)
        wait_samples(stack.sub, "robot/state", 375)  # 1.5 s held
        q_later = np.array(stack.state().q)
    finally:
        client.close()
    hb = stack.heartbeat("arm")
    assert hb.get("safety.heartbeat_stale", 0) >= 1, hb
    assert q_hold[0] - q0[0] < 0.2  # stopped early (full schedule: 0.4 rad)
    # holding: our command is constant; what moves is franka-sim's impedance settling, up to
    # 0.016 rad on a joint that was never commanded when its 1 kHz cycles come late under load
    # (0.027 rad beside a CPU hog per core)
    assert np.abs(q_later - q_hold).max() < 0.035
    cycles0 = hb["franka.cycles"]
    wait_until(lambda: stack.heartbeat("arm")["franka.cycles"] > cycles0, 5, what="the 1 kHz loop still running")
    assert hb.get("safety.driver_fault", 0) == 0 and not sim_errors(franka_sim), sim_errors(franka_sim)


def test_ee_square_through_the_fr3_model(stack, franka_sim, report):
    """A Cartesian square through the arm node's FR3 model (robot fr3_hand: IK per servo tick) on
    franka-sim: the TCP follows the commanded square, and the published ee_pose (our FK of the
    measured joints) agrees with franka-sim's own FK of the same joints with the Franka Hand's
    TCP (flange rotated -45 deg about z, 0.1034 m along z)."""
    from scipy.spatial.transform import Rotation

    from robot_stack.control.paths import polyline_schedule
    from robot_stack.runtime.clock import now_ns

    from robot_stack.control.robot_model import RobotModel

    # from the FR3's home posture: the TCP error of the robot's joint impedance control depends on
    # the posture, and the earlier tests leave the arm elsewhere
    stack.move_joints(RobotModel.load("fr3_hand").home_q)
    wait_until(lambda: settled(stack), 5, what="the arm settled at home")
    start = np.array(stack.state().ee_pose)
    side = 0.10
    corners = [start[:3] + np.array(c) for c in ([0, 0, 0], [side, 0, 0], [side, side, 0], [0, side, 0], [0, 0, 0])]
    stamps, poses = polyline_schedule(start, corners[1:], now_ns() + 300_000_000, speed=0.05)
    stack.arm.send_schedule(stamps, poses, space="ee")
    wait_past(int(stamps[-1]), lambda: settled(stack), what="the square's end, settled")
    hist = [m for m in stack.sub.history("robot/state") if stamps[0] <= m.stamp_ns <= stamps[-1]]
    tq = np.array([m.stamp_ns for m in hist])
    ee = np.array([m.ee_pose for m in hist])
    ref = np.stack([np.interp(tq, stamps, poses[:, j]) for j in range(3)], 1)
    lag = np.linalg.norm(ee[:, :3] - ref, axis=1)  # against the waypoint due at the same time
    from robot_stack.apps.demo import _dist_to_path

    track = np.array([_dist_to_path(p, corners) for p in ee[:, :3]])  # off the square's path
    # franka-sim's FK of the measured joints (every 10th state), with the Franka Hand TCP
    q = np.array([m.q for m in hist])[::10]
    qf, out = franka_sim["dir"] / "q.npy", franka_sim["dir"] / "fk.npy"
    np.save(qf, q)
    subprocess.run(
        [str(FS_PY), str(REPO / "tests" / "franka_sim_fk.py"), str(franka_sim["mjcf"]), str(qf), str(out)],
        check=True,
        timeout=120,
    )
    hand = np.eye(4)
    hand[:3, :3] = Rotation.from_euler("z", -np.pi / 4).as_matrix()
    hand[:3, 3] = [0, 0, 0.1034]
    tcp = np.load(out) @ hand
    ours = ee[::10]
    pos_err = np.linalg.norm(tcp[:, :3, 3] - ours[:, :3], axis=1)
    rot_err = (Rotation.from_matrix(tcp[:, :3, :3]).inv() * Rotation.from_quat(ours[:, 3:])).magnitude()
    hb = stack.heartbeat("arm")
    report(
        f"franka-sim ee square (10 cm, 0.05 m/s, FR3 model): TCP off the square mean {track.mean() * 1e3:.2f} mm, "
        f"max {track.max() * 1e3:.2f} mm over {len(track)} states (behind the timed waypoint: mean "
        f"{lag.mean() * 1e3:.1f} mm); ee_pose vs franka-sim's FK: "
        f"max {pos_err.max() * 1e3:.3f} mm, {np.degrees(rot_err.max()):.3f} deg"
    )
    assert len(hist) > 500
    assert track.mean() < 0.001, track.mean()  # README: about 0.1 mm; the issue asked < 5 mm
    assert pos_err.max() < 0.001 and rot_err.max() < np.radians(0.1), (pos_err.max(), rot_err.max())
    assert hb.get("safety.driver_fault", 0) == 0 and not sim_errors(franka_sim), sim_errors(franka_sim)
