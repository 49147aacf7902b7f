"""Collision-check cost (``robot_stack/control/collision.py``) against the servo period, same run.

Measured on the Panda + Robotiq 2F-85 with the table (``panda_robotiq``, the sim's robot), at
joint configurations whose TCP lies in the default workspace box:

- baseline: forward kinematics alone (``mj_kinematics``), what any check pays first;
- one full check (``CollisionChecker.closest``: every link against the table, the arm against
  itself; the bounding-sphere broad phase, then MuJoCo's distance query for the pairs it keeps),
  p50/p99, and its share of the 2 ms servo period (500 Hz): what the arm node pays every tick;
- the scene pairs alone (links against the table: what a servo-rate check needs between
  schedule checks);
- the servo tick's check as the arm node runs it: the braking motion of every geom to a brake
  point a few centimetres on (``motion_bound``), then the full check with each pair's distance
  less its geoms' motions (``closest(q, motion)``), for one arm and for the two-arm scene;
- a schedule check (``check_path``) of 16 waypoints (a 1.6 s action chunk at 10 Hz) and of 1,024
  (a 10 s joint trajectory at 100 Hz), each joint at a random speed within 0.3 rad/s.

The two-arm scene is the right arm of ``configs/sim_bimanual.yaml`` with the left arm 0.8 m to its
+y, both at random in-box postures, and the left arm's planned posture (``q_plan``) another random
in-box posture, so both of its copies are checked (the worst case): every link of one arm against
every link of the other, with the table and the arm itself.

Run: ``python3 bench/collision.py`` (``--quick``: fewer samples).
"""

from __future__ import annotations

import argparse
import time

import mujoco
import numpy as np

from robot_stack.control.collision import CollisionChecker, CollisionConfig, OtherArm
from robot_stack.control.robot_model import RobotModel
from robot_stack.control.safety import SafetyConfig

PERIOD_MS = 2.0


def in_box_configs(model: RobotModel, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` joint configurations (n, 7) near the home posture whose TCP is in the default box."""
    s, out = SafetyConfig(), []
    while len(out) < n:
        q = np.clip(model.home_q + rng.normal(0, 0.5, model.n_joints), model.lower, model.upper)
        p = model.fk(q)[:3]
        if np.all(p >= s.workspace_min) and np.all(p <= s.workspace_max):
            out.append(q)
    return np.array(out)


def timed(fn, items) -> np.ndarray:
    """Per-call wall time, ms."""
    out = np.empty(len(items))
    for i, x in enumerate(items):
        t = time.perf_counter()
        fn(x)
        out[i] = time.perf_counter() - t
    return out * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples (CI)")
    args = ap.parse_args()
    n = 300 if args.quick else 3000
    rng = np.random.default_rng(0)
    model = RobotModel.load("panda_robotiq")
    full = CollisionChecker(model, CollisionConfig(enabled=True))
    scene = CollisionChecker(model, CollisionConfig(enabled=True))
    scene.pairs = [p for p in scene.pairs if p[3] != "self"]
    qs = in_box_configs(model, n, rng)
    # the right arm of configs/sim_bimanual.yaml: the left arm 0.8 m to its +y, at random postures too
    two = CollisionChecker(
        model, CollisionConfig(enabled=True, arms=[OtherArm(node="left", robot=model.name, base=(0, 0.8, 0, 0))])
    )
    others = in_box_configs(model, n, rng)

    def two_arm(i):
        two.set_other("left", others[i], others[(i + 1) % n])  # measured and planned: both copies checked
        two.closest(qs[i])

    # the servo tick's check: the command and the stop that could follow it, its brake point a
    # few centimetres on (each joint up to 0.03 rad: about a brake from 0.5 rad/s)
    brakes = qs + rng.uniform(-0.03, 0.03, qs.shape)

    def tick(checker, i):
        checker.closest(qs[i], checker.motion_bound(qs[i], brakes[i]))

    def two_arm_tick(i):
        two.set_other("left", others[i], others[(i + 1) % n])
        tick(two, i)

    def fk(q):
        full.d.qpos[full.qpos_adr] = q
        mujoco.mj_kinematics(full.m, full.d)

    rows = [
        ("forward kinematics (baseline)", timed(fk, qs)),
        (f"full check ({len(full.pairs)} pairs)", timed(full.closest, qs)),
        (f"scene pairs only ({len(scene.pairs)} pairs)", timed(scene.closest, qs)),
        (f"two-arm scene ({len(two.pairs)} pairs)", timed(two_arm, range(n))),
        ("servo tick, one arm (braking motion)", timed(lambda i: tick(full, i), range(n))),
        ("servo tick, two-arm scene", timed(two_arm_tick, range(n))),
    ]
    for k in (16, 1024):  # 16: a 1.6 s action chunk at 10 Hz; 1,024: a 10 s joint trajectory at 100 Hz
        dt = 0.1 if k == 16 else 0.01
        paths = []
        for q in qs[: 20 if args.quick else 100]:
            v = rng.uniform(-0.3, 0.3, model.n_joints)  # rad/s per joint
            paths.append(np.clip(q + np.outer(np.arange(k) * dt, v), model.lower, model.upper))
        rows.append((f"schedule of {k} waypoints", timed(full.check_path, paths)))
    calls = len(qs) * len(full.pairs)
    base = np.percentile(rows[0][1], 50)
    print(f"collision checks, panda_robotiq + table, {n} configurations with the TCP in the box")
    print(f"{'':40s} {'p50 ms':>9s} {'p99 ms':>9s} {'p99 / 2 ms period':>18s} {'p50 / FK':>9s}")
    for name, t in rows:
        p50, p99 = np.percentile(t, 50), np.percentile(t, 99)
        print(f"{name:40s} {p50:9.3f} {p99:9.3f} {p99 / PERIOD_MS:18.2f} {p50 / base:9.1f}")
    print(
        f"native distance queries repeated with libccd (MuJoCo's native query returned 0 for shapes apart): "
        f"{full.fallbacks} over the run (at most {calls} pair queries in the full checks alone)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
