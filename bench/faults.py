"""Fault campaign against the sim stack: one table, a row per fault.

Each fault is injected into a running stack (real processes, sockets and physics: sim world,
arm node with a spy driver that records every command the driver receives, camera, goto policy,
controller with the async strategy, recorder) and the stack's answer is measured:

- SIGKILL of each node kind while the policy drives the arm (as under ``robot-stack deploy``),
  SIGSTOP of the controller, a camera that stops delivering, the sim world (the robot) dying;
- fuzzed and mutated messages into each node's input (random frames, byte flips of valid
  messages, and well-formed messages with wrong contents), node crashes counted;
- NaN / limit / jump / empty / flipped chunks from a policy;
- collision: a policy that drives the hand into the table with the TCP inside the box, one that
  folds the arm onto itself, and a two-arm policy that drives both arms to one point; measured on
  the sim's own contact data (0 contacts of a robot with the table, itself or the other arm);
- disk full while recording (a 3 MB tmpfs; needs root, else the row says why it was skipped).

Columns: what was injected, what the stack did, time to hold (arm) / report (launcher), samples or
episodes lost. A summary line checks the done criteria: 0 node crashes from any message, 0
limit-breaking commands at the driver (max / limit of velocity, acceleration and jerk over every
command of the campaign, holds and stops included), hold within the heartbeat timeout, launcher
reports within 1 s, 0 finished episodes lost.

Run: ``python bench/faults.py`` (``--quick``: fewer kills, 5k instead of 100k messages per node).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

from robot_stack.runtime.clock import now_ns  # noqa: E402
from robot_stack.comm.codec import encode  # noqa: E402
from robot_stack.runtime.config import load_config  # noqa: E402
from robot_stack.drivers.spy import command_limits  # noqa: E402
from robot_stack.runtime.launcher import Launcher  # noqa: E402
from robot_stack.comm.messages import (
    ArmControl,
    EpisodeEvent,
    Heartbeat,
    ObservationWindow,  # noqa: E402
    RobotState,
    WaypointSchedule,
)
from robot_stack.drivers.sim_messages import JointTarget  # noqa: E402
from robot_stack.apps.session import LogSink  # noqa: E402
from robot_stack.comm.transport import Subscriber  # noqa: E402
from robot_stack.testing.setups import node, setup, write_setup  # noqa: E402

LIMITS = {"vel": 1.5, "acc": 6.0, "jerk": 150.0}
COLLISION = {"enabled": True}  # the arm nodes' collision checks (--collision-off: the control run)
HB_TIMEOUT_S = 0.5


def fault_setup(tag: str, run_dir, spy, goal, fault: str, root) -> dict:
    """One campaign stack: sim, an arm whose driver commands are recorded (the spy), a sim camera, a
    scripted policy (with the fault it injects), an async controller and a recorder."""
    return setup(
        f"faults{tag}",
        run_dir,
        sim=node("sim_world"),
        arm=node(
            "arm",
            spy_file=str(spy),
            collision=COLLISION,
            safety={
                "heartbeat_timeout_s": HB_TIMEOUT_S,
                "max_joint_vel": LIMITS["vel"],
                "max_joint_acc": LIMITS["acc"],
                "max_joint_jerk": LIMITS["jerk"],
            },
        ),
        cam=node(
            "camera",
            {"nice": 10, "env": {"LP_NUM_THREADS": "1"}},
            driver={"type": "sim", "camera": "scene"},
            camera_id="scene",
            width=96,
            height=72,
            rate_hz=10,
        ),
        policy=node(
            "policy", backend={"type": "goto", "goal": list(goal), "speed": 0.05, "horizon": 16, "dt": 0.1}, fault=fault
        ),
        controller=node("controller", strategy="async", rate_hz=10, cameras=["cam"], autostart=True),
        recorder=node("recorder", root=str(root), flush_every_s=0.5, cameras=["cam"], controller="controller"),
    )


ROWS: list[dict] = []
SPIES: list[Path] = []


class Stack:
    """One campaign stack (:func:`fault_setup`), launched in this process, with a subscriber on the arm and heartbeats."""

    last: Stack | None = None  # the latest stack, whose node logs a campaign error prints

    def __init__(
        self,
        work: Path,
        tag: str,
        fault: str = "none",
        goal=(0.45, 0.30, 0.30),
        root: Path | None = None,
        make_setup=fault_setup,
    ):
        Stack.last = self
        self.run_dir = Path(tempfile.mkdtemp(prefix="rs-fc-"))
        self.spy = work / f"spy_{tag}.npz"
        self.root = root or work / f"episodes_{tag}"
        self.cfg_path = work / f"{tag}.yaml"
        write_setup(self.cfg_path, make_setup(tag, self.run_dir, self.spy, goal, fault, self.root))
        self.cfg = load_config(self.cfg_path)
        self.out = LogSink()
        self.launcher = Launcher(self.cfg_path, out=self.out)
        self.dead_at: dict[str, int] = {}

    def __enter__(self) -> Stack:
        self.launcher.start()
        self._t = threading.Thread(target=self.launcher.supervise, daemon=True)
        self._t.start()
        self._w = threading.Thread(target=self._watch_dead, daemon=True)
        self._w.start()
        eps = [self.cfg.pub_endpoint(n, self.run_dir) for n in self.cfg.nodes]
        self.sub = Subscriber(eps, (RobotState.TOPIC, Heartbeat.TOPIC), history=4000, name="faults")
        if self.sub.wait_for(RobotState.TOPIC, 60) is None:
            raise RuntimeError(f"stack did not come up:\n{self.out.tail()}")
        return self

    def _watch_dead(self) -> None:
        while not getattr(self, "_closing", False):
            for n in list(self.launcher.dead):
                self.dead_at.setdefault(n, now_ns())
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        self._closing = True
        self.sub.close()
        self.launcher.stop()
        self._t.join(15)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        if self.spy.is_file():
            SPIES.append(self.spy)

    def commands(self) -> tuple[np.ndarray, np.ndarray]:
        """(t_ns, q) of every command the driver received (after the stack stopped)."""
        rec = np.load(self.spy, allow_pickle=False)
        return rec["t_ns"], rec["q"]

    def at_rest_after(self, t0_ns: int) -> float | None:
        """Seconds from ``t0_ns`` until the commanded joints stopped moving for good (spy record)."""
        t, q = self.commands()
        if len(t) < 3:
            return None
        v = np.abs(np.diff(q, axis=0)).max(1) / np.maximum(np.diff(t) / 1e9, 1e-9)
        moving = np.flatnonzero((t[1:] > t0_ns) & (v > 1e-3))  # rad/s
        if not len(moving):
            return 0.0
        return (t[1:][moving[-1]] - t0_ns) / 1e9 if moving[-1] < len(v) - 1 else None

    def state(self):
        return self.sub.latest(RobotState.TOPIC)

    def metrics(self, node: str, timeout: float = 3.0) -> dict:
        last = self.sub.latest(Heartbeat.topic(node))
        hb = self.sub.wait_for(Heartbeat.topic(node), timeout, newer_than_seq=-1 if last is None else last.seq)
        return {} if hb is None else dict(hb.metrics)

    def wait_recording(self, timeout: float = 20.0) -> bool:
        """Wait until the recorder's episode holds rows (its first episode imports the storage
        libraries, which takes seconds on a cold machine: a fixed sleep recorded nothing in one CI run)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            m = self.metrics("recorder", timeout=1.0)
            if m.get("recording", 0) and m.get("rows", 0) > 0:
                return True
        return False

    def wait_mode(self, mode: str, timeout: float) -> float | None:
        """Seconds until robot/state shows ``mode`` (None: never within ``timeout``)."""
        t0 = now_ns()
        while (now_ns() - t0) / 1e9 < timeout:
            st = self.state()
            if st is not None and st.mode == mode:
                return (now_ns() - t0) / 1e9
            time.sleep(0.002)
        return None

    def tracking(self, timeout: float = 30.0) -> None:
        if self.wait_mode("track", timeout) is None:
            raise RuntimeError(f"the policy never drove the arm:\n{self.out.tail()}")
        time.sleep(0.8)

    def pid(self, node: str) -> int:
        return self.launcher.nodes[node].proc.pid

    def sender(self, node: str):
        from robot_stack.comm.transport import Sender

        return Sender(self.cfg.in_endpoint(node, self.run_dir), "fuzzer", timeout_s=5.0)

    def episode(self, kind: str) -> None:
        tx = self.sender("recorder")
        tx.send(EpisodeEvent.TOPIC, EpisodeEvent(kind=kind, episode=0))
        tx.close()


def row(fault: str, injected: str, did: str, t: str, lost: str, ok: bool) -> None:
    ROWS.append({"fault": fault, "injected": injected, "did": did, "t": t, "lost": lost, "ok": ok})
    print(f"  [{'ok' if ok else 'FAIL'}] {fault}: {did} ({t}; lost: {lost})", flush=True)


def _ms(x: float | None) -> str:
    return "never" if x is None else f"{x * 1e3:.0f} ms"


# --------------------------------------------------------------------------------- faults
def kill_node(work: Path, node: str) -> None:
    with Stack(work, f"kill_{node}") as s:
        s.tracking()
        s.episode("start")
        time.sleep(1.0)
        if node != "recorder":
            s.episode("stop")
            time.sleep(1.5)  # this episode is finished before the kill
        s.tracking(5.0)
        t0 = now_ns()
        os.kill(s.pid(node), signal.SIGKILL)
        while node not in s.dead_at and (now_ns() - t0) < 3e9:
            time.sleep(0.002)
        reported = (s.dead_at[node] - t0) / 1e9 if node in s.dead_at else None
        time.sleep(0.5)
    # the launcher stops a stack whose critical node died: the arm node brings the arm to rest
    # (jerk-limited) before it lets go; the spy record says when the commands stopped moving
    rest = None if node == "arm" else s.at_rest_after(t0)
    finished = [p for p in Path(s.root).glob("episode_*.zarr") if p.is_dir()]
    lost = "0 finished episodes" if (node == "recorder" or finished) else "the finished episode!"
    rest_ok = node in ("arm", "sim") or (rest is not None and rest <= HB_TIMEOUT_S + 0.5)
    did = ("launcher reported it, stopped the stack" if reported is not None else "not reported!") + (
        "; the robot holds its last target"
        if node == "arm"
        else "; robot controller lost: arm node faulted, no commands"
        if node == "sim"
        else f"; arm {'brought to rest' if rest is not None else 'never at rest'} before shutdown"
    )
    row(
        f"SIGKILL {node}",
        "SIGKILL while the policy drives the arm",
        did,
        f"report {_ms(reported)}" + ("" if node in ("arm", "sim") else f", at rest {_ms(rest)}"),
        lost,
        reported is not None and reported < 1.0 and rest_ok and lost.startswith("0"),
    )


def stop_controller(work: Path) -> None:
    with Stack(work, "sigstop") as s:
        s.tracking()
        pid = s.pid("controller")
        os.kill(pid, signal.SIGSTOP)
        hold = s.wait_mode("hold", 3.0)
        os.kill(pid, signal.SIGCONT)
        resumed = s.wait_mode("track", 10.0)
        dead = dict(s.launcher.dead)
    row(
        "SIGSTOP controller",
        "SIGSTOP (every thread, heartbeat included), SIGCONT after",
        f"arm held (heartbeat stale){', resumed after SIGCONT' if resumed is not None else ', did not resume'}",
        f"hold {_ms(hold)} (timeout {HB_TIMEOUT_S * 1e3:.0f} ms)",
        "0",
        hold is not None and hold <= HB_TIMEOUT_S + 0.2 and resumed is not None and not dead,
    )


def camera_stops(work: Path) -> None:
    with Stack(work, "camstop") as s:
        s.tracking()
        s.episode("start")
        time.sleep(1.0)
        before = s.metrics("controller").get("obs_holds", 0)
        t0 = now_ns()
        os.kill(s.pid("cam"), signal.SIGSTOP)
        hold = s.wait_mode("hold", 5.0)
        time.sleep(0.5)
        holds = s.metrics("controller").get("obs_holds", 0) - before
        os.kill(s.pid("cam"), signal.SIGCONT)
        resumed = s.wait_mode("track", 10.0)
        s.episode("stop")
        time.sleep(1.5)
        rec = s.metrics("recorder")
        dead = dict(s.launcher.dead)
    del t0
    row(
        "camera stops",
        "SIGSTOP of the camera node mid-episode, SIGCONT after",
        f"controller held ({holds:.0f} stale-observation holds) and told the arm to hold"
        f"{', resumed' if resumed is not None else ''}; episode saved",
        f"hold {_ms(hold)}",
        f"{rec.get('dropped', 0):.0f} samples dropped",
        hold is not None and hold <= HB_TIMEOUT_S + 0.2 and holds > 0 and not dead and rec.get("saved", 0) >= 1,
    )


def sim_dies(work: Path) -> None:
    with Stack(work, "simdies") as s:
        s.tracking()
        t0 = now_ns()
        os.kill(s.pid("sim"), signal.SIGKILL)
        while "sim" not in s.dead_at and (now_ns() - t0) < 3e9:
            time.sleep(0.002)
        reported = (s.dead_at["sim"] - t0) / 1e9 if "sim" in s.dead_at else None
        faults = s.metrics("arm", 1.0).get("safety.driver_fault", 0)
    row(
        "sim world dies",
        "SIGKILL of the sim world (the robot) under the arm node",
        f"arm: driver fault ({faults:.0f}), no commands; launcher reported it",
        f"report {_ms(reported)}",
        "0",
        reported is not None and reported < 1.0,
    )


def _mutations(valid: list[list[bytes]], n: int, rng: np.random.Generator):
    """n multipart messages: random frames, byte flips of valid ones, truncations, extra frames."""
    for i in range(n):
        k = i % 4
        if k == 0:
            yield [rng.bytes(int(rng.integers(0, 64))) for _ in range(int(rng.integers(1, 5)))]
            continue
        frames = [bytearray(f) for f in valid[int(rng.integers(len(valid)))]]
        if k == 1:
            j = int(rng.integers(len(frames)))
            if len(frames[j]):
                for _ in range(int(rng.integers(1, 4))):
                    frames[j][int(rng.integers(len(frames[j])))] = int(rng.integers(256))
        elif k == 2:
            j = int(rng.integers(len(frames)))
            frames[j] = frames[j][: int(rng.integers(0, len(frames[j]) + 1))]
        else:
            frames.append(bytearray(rng.bytes(8)))
        yield [bytes(f) for f in frames]


def _wrong_contents(rng: np.random.Generator, q0: np.ndarray, pose: np.ndarray):
    """A well-formed message with wrong contents for the arm/controller/sim inputs."""
    k = int(rng.integers(6))
    n = int(rng.integers(0, 40))
    t = now_ns() + int(rng.integers(-(10**9), 20 * 10**9))
    stamps = t + np.arange(n, dtype=np.int64) * 10**7
    vals = rng.choice([0.0, 1.0, -1e9, 1e9, np.nan, np.inf], size=(n, 7)) * rng.random((n, 7))
    if k == 0:
        return "waypoints", WaypointSchedule(
            stamps_ns=stamps,
            positions=q0 + vals * 0.1,
            space="joint",
            gripper=rng.choice([np.nan, 0.5, 7.0], size=n) if n else None,
        )
    if k == 1:
        return "waypoints", WaypointSchedule(stamps_ns=stamps, positions=pose + vals * 0.05, space="ee")
    if k == 2:
        return "waypoints", WaypointSchedule(
            stamps_ns=stamps, positions=rng.random((n, int(rng.integers(1, 12)))), space="joint"
        )
    if k == 3:
        return "control", ArmControl(kind=str(rng.choice(["hold", "release"])))
    if k == 4:
        return JointTarget.TOPIC, JointTarget(
            q=rng.choice([np.nan, 1e6, 0.0], size=7), gripper=float(rng.choice([1e9, -3.0]))
        )
    return "event", EpisodeEvent(kind=str(rng.choice(["reset", "discard", "quit"])), episode=-5)


def fuzz(work: Path, per_node: int) -> None:
    import zmq

    rng = np.random.default_rng(0)
    with Stack(work, "fuzz") as s:
        st = s.state()
        q0, pose = np.array(st.q), np.array(st.ee_pose)
        valid = [list(encode("heartbeat", Heartbeat(node="fuzzer")))]
        for _ in range(30):
            topic, msg = _wrong_contents(rng, q0, pose)
            msg.source, msg.seq, msg.stamp_ns = "fuzzer", 0, now_ns()
            valid.append([bytes(f) for f in encode(topic, msg)])
        ctx = zmq.Context.instance()
        sent = {}
        t0 = time.monotonic()
        for target in ("arm", "controller", "recorder", "sim"):
            sock = ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 1000)
            sock.connect(s.cfg.in_endpoint(target, s.run_dir))
            count = 0
            for frames in _mutations(valid, per_node // 2, rng):
                sock.send_multipart(frames)
                count += 1
            for _ in range(per_node - per_node // 2):  # well-formed, wrong contents
                topic, msg = _wrong_contents(rng, q0, pose)
                msg.source, msg.seq, msg.stamp_ns = "fuzzer", count, now_ns()
                sock.send_multipart(encode(topic, msg), copy=False)
                count += 1
            sent[target] = count
            sock.close(1000)
        # the policy's request/reply input: one request at a time
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.setsockopt(zmq.REQ_RELAXED, 1)
        req.connect(s.cfg.in_endpoint("policy", s.run_dir))
        win = ObservationWindow(
            request_id=1, obs={"ee_pose": np.zeros((2, 7), np.float32)}, obs_age_ns=np.zeros(2, np.int64)
        )
        win.source, win.seq, win.stamp_ns = "fuzzer", 0, now_ns()
        pvalid = [[bytes(f) for f in encode("infer", win)]]
        answered = 0
        n_pol = max(200, per_node // 20)
        for frames in _mutations(pvalid, n_pol, rng):
            req.send_multipart(frames)
            if req.poll(2000):
                req.recv_multipart()
                answered += 1
        sent["policy"] = n_pol
        req.close(0)
        took = time.monotonic() - t0
        time.sleep(2.0)
        dead = dict(s.launcher.dead)
        m_arm = s.metrics("arm")
        held = s.state().mode in ("hold", "track", "estop")
        moved = float(np.abs(np.array(s.state().q) - q0).max())
    crashes = len(dead)
    total = sum(sent.values())
    refusals = sum(v for k, v in m_arm.items() if k.startswith("safety.") and k not in ("safety.servo_limited",))
    row(
        f"fuzzed messages x {total}",
        f"{per_node} per input of arm, controller, recorder, sim; {sent['policy']} "
        f"requests to the policy ({answered} answered with an error); {took:.0f} s",
        f"{crashes} target crashes; arm refused {refusals:.0f} schedules by name, moved {moved * 1e3:.1f} mrad",
        "n/a",
        "0",
        crashes == 0 and held and answered == sent["policy"],
    )


def bad_policy(work: Path, fault: str) -> None:
    with Stack(work, f"policy_{fault}", fault=fault) as s:
        time.sleep(4.0)
        m_arm, m_ctl = s.metrics("arm"), s.metrics("controller")
        dead = dict(s.launcher.dead)
        st = s.state()
    refused = {
        k[7:]: v for k, v in m_arm.items() if k.startswith("safety.") and v and k not in ("safety.servo_limited",)
    }
    by_ctl = m_ctl.get("bad_chunks", 0)
    row(
        f"policy: {fault} chunks",
        f"every chunk {fault}",
        f"controller refused {by_ctl:.0f} chunks; arm refused {refused or 'none'}; arm mode {st.mode}",
        "n/a",
        "0",
        not dead and (by_ctl > 0 or bool(refused)) and st.mode in ("hold", "estop"),
    )


def _collision_outcome(s: Stack, arms: list[str]) -> tuple[dict, dict, dict]:
    """Watch a stack whose policy drives into an obstacle until every arm has been stopped or
    refused by its collision checks (or 12 s), then 1 s more for anything that would still reach
    it; (the arms' collision counters, the sim's metrics, dead nodes)."""

    def counts(arm: str) -> dict:
        m = s.metrics(arm)
        return {k[7:]: v for k, v in m.items() if k.startswith("safety.collision") and v}

    deadline = time.monotonic() + 12.0
    while time.monotonic() < deadline:
        if all(c.get("collision_stop") or c.get("collision") for c in map(counts, arms)):
            break
    time.sleep(1.0)  # after the stop: a contact would come now
    by_arm = {a: counts(a) for a in arms}
    m_sim = s.metrics("sim")
    pairs = [
        ln.split("robot contact: ", 1)[1].strip() for ln in s.out.tail(400).splitlines() if "robot contact: " in ln
    ]
    m_sim["pairs"] = ", ".join(pairs[:3])  # the sim node logs each new pair of bodies in contact
    return by_arm, m_sim, dict(s.launcher.dead)


def collision_policy(work: Path, fault: str) -> None:
    """A policy whose chunks keep every check but the collision checks satisfied ("table": the
    hand and wrist into the table with the TCP inside the box; "fold": the arm onto itself).
    Required: the arm stops or refuses it, and the sim's own contact data shows no contact of the
    robot with the table or itself."""
    with Stack(work, f"policy_{fault}", fault=fault, goal=(0.5, 0.0, 0.3)) as s:
        s.tracking()
        by_arm, m_sim, dead = _collision_outcome(s, ["arm"])
        st = s.state()
    contacts = m_sim.get("robot_contacts", float("nan"))
    what = {"table": "the hand into the table, TCP in the box", "fold": "the arm folded onto itself"}[fault]
    row(
        f"policy: {fault} (collision)",
        f"every chunk drives {what}",
        f"arm: {by_arm['arm'] or 'nothing'}; mode {st.mode}; robot contacts in the sim {contacts:.0f} {m_sim['pairs']}",
        "n/a",
        "0",
        not dead and contacts == 0 and bool(by_arm["arm"]),
    )


def bimanual_setup(tag: str, run_dir, spy, goal, fault: str, root) -> dict:
    """Two Pandas 0.8 m apart (as configs/sim_bimanual.yaml), each arm node checking against the
    other arm, and a two-arm scripted policy whose goals are the same point of the table's frame
    between them (``goal``), so the arms drive into each other."""
    x, y, z = goal
    safety = {
        "heartbeat_timeout_s": HB_TIMEOUT_S,
        "workspace_min": [0.15, -0.8, 0.005],
        "workspace_max": [0.85, 0.8, 0.8],
    }

    def arm(which: str, other: str, dy: float, extra: dict) -> dict:
        return node(
            "arm",
            driver={"type": "sim", "arm": which},
            safety=safety,
            collision={**COLLISION, "arms": [{"node": other, "robot": "panda_robotiq", "base": [0.0, dy, 0.0, 0.0]}]},
            **extra,
        )

    return setup(
        f"faults{tag}",
        run_dir,
        sim=node(
            "sim_world",
            rate_hz=500,
            state_rate_hz=30,
            arms={"left": {"base": [0.0, 0.4, 0.0, 0.0]}, "right": {"base": [0.0, -0.4, 0.0, 0.0]}},
        ),
        arm_left=arm("left", "arm_right", -0.8, {"spy_file": str(spy)}),
        arm_right=arm("right", "arm_left", 0.8, {}),
        policy=node("policy", backend={"type": "goto", "goals": [[x, y - 0.4, z], [x, y + 0.4, z]], "speed": 0.1}),
        controller=node("controller", arms=["arm_left", "arm_right"], strategy="async", rate_hz=10, autostart=True),
    )


def arms_collide(work: Path) -> None:
    """Bimanual: a two-arm policy drives both TCPs to one point between the arms. Required: the
    arm nodes stop them, and the sim's contact data shows no contact between the arms (or with
    the table)."""
    with Stack(work, "arms_cross", goal=(0.5, 0.0, 0.25), make_setup=bimanual_setup) as s:
        s.tracking()
        by_arm, m_sim, dead = _collision_outcome(s, ["arm_left", "arm_right"])
    contacts = m_sim.get("robot_contacts", float("nan"))
    row(
        "bimanual: arms collide",
        "both TCPs sent to one point",
        f"left {by_arm['arm_left'] or 'nothing'}, right {by_arm['arm_right'] or 'nothing'}; "
        f"robot contacts in the sim {contacts:.0f} {m_sim['pairs']}",
        "n/a",
        "0",
        not dead and contacts == 0 and any(by_arm.values()),
    )


def disk_full(work: Path) -> None:
    root = work / "tiny"
    root.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(root)], capture_output=True).returncode
        != 0
    ):
        row(
            "disk full", "3 MB tmpfs as the recorder's root", "skipped: needs root to mount a tmpfs", "n/a", "n/a", True
        )
        return
    try:
        with Stack(work, "diskfull", root=root) as s:
            s.tracking()
            s.episode("start")
            s.wait_recording()
            time.sleep(0.8)
            s.episode("stop")
            time.sleep(1.5)
            first = sorted(p.name for p in root.glob("episode_*.zarr"))
            s.episode("start")  # this one fills the disk
            t0 = time.monotonic()
            m = {}
            while time.monotonic() - t0 < 60:
                m = s.metrics("recorder")
                if m.get("write_errors", 0) > 0:
                    break
            s.episode("stop")
            time.sleep(1.0)
            dead = dict(s.launcher.dead)
            arm_mode = s.state().mode
        kept = [p for p in first if (root / p).is_dir()]
        from robot_stack.data.dataset import open_episode

        readable = all(len(open_episode(root / p)) > 0 for p in kept)
        row(
            "disk full",
            "recording into a 3 MB tmpfs until it fills",
            f"recorder: {m.get('write_errors', 0):.0f} write errors reported, node up; arm {arm_mode}",
            "n/a",
            f"0 finished episodes ({len(kept)} kept, readable: {readable})",
            not dead and m.get("write_errors", 0) > 0 and len(first) >= 1 and readable,
        )
    finally:
        subprocess.run(["umount", str(root)], capture_output=True)


# --------------------------------------------------------------------------------- report
def spy_summary() -> tuple[dict, int, list[str]]:
    """Worst velocity/acceleration/jerk over every recorded command, the command count, and one
    line per stack (which fault's commands came closest to, or beyond, a limit)."""
    worst = {k: 0.0 for k in LIMITS}
    n, lines = 0, []
    for p in SPIES:
        rec = np.load(p, allow_pickle=False)
        if len(rec["t_ns"]) < 4:
            continue
        n += len(rec["t_ns"])
        lim = command_limits(rec["t_ns"], rec["q"])
        for k in LIMITS:
            worst[k] = max(worst[k], float(lim[k].max()))
        lines.append(f"  {p.stem[4:]:18s} " + "  ".join(f"{k} {float(lim[k].max()) / LIMITS[k]:.2f}" for k in LIMITS))
    return worst, n, lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--collision-off",
        action="store_true",
        help="the control run: only the collision rows, with the arms' collision checks off (their rows must fail)",
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rs-faults-"))
    t0 = time.monotonic()
    kills = ["controller", "policy", "sim"] if args.quick else ["controller", "policy", "cam", "recorder", "arm", "sim"]
    steps = [(f"SIGKILL {n}", lambda n=n: kill_node(work, n)) for n in kills]
    steps += [
        ("SIGSTOP controller", lambda: stop_controller(work)),
        ("camera stops", lambda: camera_stops(work)),
        ("sim world dies", lambda: sim_dies(work)),
        ("fuzzed messages", lambda: fuzz(work, 5_000 if args.quick else 100_000)),
    ]
    steps += [
        (f"policy: {f} chunks", lambda f=f: bad_policy(work, f))
        for f in (["nan", "jump", "flip"] if args.quick else ["nan", "limit", "jump", "empty", "flip"])
    ]
    steps += [(f"policy: {f} (collision)", lambda f=f: collision_policy(work, f)) for f in ("table", "fold")]
    steps += [("bimanual: arms collide", lambda: arms_collide(work))]
    steps += [("disk full", lambda: disk_full(work))]
    if args.collision_off:
        COLLISION["enabled"] = False
        steps = [st for st in steps if "collision" in st[0] or "collide" in st[0]]
    for name, step in steps:
        try:
            step()
        except Exception as e:  # a fault the campaign could not even run is a failed row, not a crash
            row(name, "", f"campaign error: {type(e).__name__}: {str(e)[:300]}", "", "", False)
            if Stack.last is not None:  # what the nodes said, for whoever reads the CI log
                print(f"--- node logs of the {name} stack (last 60 lines):\n{Stack.last.out.tail(60)}\n---")
    worst, n_cmd, per_stack = spy_summary()
    print(f"\nfault campaign on the sim stack ({'quick' if args.quick else 'full'}, {time.monotonic() - t0:.0f} s)\n")
    w = [24, 46, 70, 26, 34]
    head = ["fault", "injected", "what the stack did", "time to hold / report", "lost"]
    print(" | ".join(h.ljust(x) for h, x in zip(head, w)))
    print("-+-".join("-" * x for x in w))
    for r in ROWS:
        cells = [r["fault"], r["injected"], r["did"], r["t"], r["lost"]]
        print(" | ".join(str(c)[:x].ljust(x) for c, x in zip(cells, w)) + ("" if r["ok"] else "  <-- FAIL"))
    ratios = ", ".join(f"{k} {worst[k]:.2f}/{LIMITS[k]:g} ({worst[k] / LIMITS[k]:.2f})" for k in LIMITS)
    over = [k for k in LIMITS if worst[k] > LIMITS[k] * (1 + 1e-3)]  # (divided differences round at ~1e-5)
    print(
        f"\ncommands at the driver over the campaign: {n_cmd}; max/limit: {ratios}; "
        f"limit-breaking: {'none' if not over else over}"
    )
    print("max/limit per stack (every command, holds and stops included):")
    print("\n".join(per_stack))
    failed = [r["fault"] for r in ROWS if not r["ok"]]
    print(f"result: {len(ROWS) - len(failed)}/{len(ROWS)} rows as required" + (f"; FAILED: {failed}" if failed else ""))
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failed or over else 0


if __name__ == "__main__":
    sys.exit(main())
