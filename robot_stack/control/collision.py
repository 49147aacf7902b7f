"""Collision checks on the robot model: every moving link against the scene (the table top and
declared obstacles) and the arm against itself, as signed distances with a clearance per pair
group. Pure: a MuJoCo model and data of its own, no sockets, no processes.

Method: the robot's MJCF (arm and gripper, as :class:`~robot_stack.control.robot_model.RobotModel`
builds it) plus the scene's obstacles compiled into one ``MjModel``; for a joint configuration,
forward kinematics (``mj_kinematics``) and then MuJoCo's geom distance query (``mj_geomDistance``,
GJK/EPA on the collision geoms' convex shapes; MuJoCo documentation, "Collision detection") for
each checked pair, capped at a search distance so that far pairs end early. Which self pairs are
checked follows MoveIt's setup assistant ("allowed collision matrix"): pairs of bodies that are
parent and child, both inside the gripper, or already within clearance + ``slowdown_m`` of each other
at the home posture (the wrist's links) are never checked. Speed near an obstacle scales as MoveIt Servo's collision check does: 1 beyond
``slowdown_m`` of margin, linearly down to 0 at the clearance.

Frames: obstacles and the table are given in the robot's base frame (m); quaternions x y z w.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import mujoco
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

_NATIVE_CCD = int(mujoco.mjtDisableBit.mjDSBL_NATIVECCD)


#: name of the copy of another arm placed at its planned joints (bodies ``<node>/plan/<body>``)
PLAN = "plan"


class Obstacle(BaseModel):
    """A fixed obstacle in the robot's base frame: a ``box`` (``size`` = half sizes x y z, m), a
    ``sphere`` (``size`` = (radius,)), a ``capsule`` or ``cylinder`` (radius, half length along z)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    shape: Literal["box", "sphere", "capsule", "cylinder"] = "box"
    pos: tuple[float, float, float] = (0.0, 0.0, 0.0)
    quat: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
    size: tuple[float, ...] = Field(min_length=1, max_length=3)

    @model_validator(mode="after")
    def _sizes(self) -> Obstacle:
        need = {"box": 3, "sphere": 1, "capsule": 2, "cylinder": 2}[self.shape]
        if len(self.size) != need or min(self.size) <= 0:
            raise ValueError(f"obstacle {self.name}: a {self.shape} takes {need} positive sizes, got {list(self.size)}")
        if np.linalg.norm(self.quat) < 1e-9:
            raise ValueError(f"obstacle {self.name}: quat must be non-zero")
        return self


class OtherArm(BaseModel):
    """Another arm sharing this arm's workspace: its arm node (whose ``robot/state`` gives its
    joints), its robot model, and its base in this arm's base frame: ``base`` = (x, y, z) m and a
    yaw about z, rad (arms on one table)."""

    model_config = ConfigDict(extra="forbid")
    node: str
    robot: str
    base: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)


class CollisionConfig(BaseModel):
    """The scene around one arm and the clearances it keeps (m).

    Attributes:
        enabled: check at all.
        table_z: height of the table top in the base frame (a plane), m; None: no table.
        obstacles: further fixed obstacles (mount, walls, fixtures).
        clearance_scene_m: arm links against the table and obstacles.
        clearance_fingers_m: the gripper's bodies against the table and obstacles (a grasp brings
            the fingertips to 1-2 cm over the table).
        clearance_self_m: the arm against itself.
        slowdown_m: margin over the clearance below which the servo guard scales speed down.
        slowdown_fingers_m: the same for the gripper against the scene (shorter: a grasp ends
            8-12 mm over the table, and a long slow-down would slow every grasp).
        slowdown_self_m: the same for the arm against itself (its links pass within 60 mm of
            each other in ordinary reaches).
        arms: the other arms in this arm's workspace (multi-arm setups), checked at their measured
            joints; every link of this arm against every link of theirs.
        clearance_arms_m, slowdown_arms_m: clearance and slow-down distance against another arm.
    """

    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    table_z: float | None = 0.0
    obstacles: list[Obstacle] = Field(default_factory=list)
    clearance_scene_m: float = Field(0.02, ge=0)
    clearance_fingers_m: float = Field(0.003, ge=0)
    clearance_self_m: float = Field(0.01, ge=0)
    slowdown_m: float = Field(0.05, gt=0)
    slowdown_fingers_m: float = Field(0.02, gt=0)
    slowdown_self_m: float = Field(0.02, gt=0)
    arms: list[OtherArm] = Field(default_factory=list)
    clearance_arms_m: float = Field(0.03, ge=0)
    slowdown_arms_m: float = Field(0.05, gt=0)

    def slowdown_for(self, group: str) -> float:
        """The slow-down distance of a pair group, m: ``slowdown_m`` for ``scene`` (links against
        the scene), ``slowdown_fingers_m`` for ``fingers`` (the gripper against the scene),
        ``slowdown_self_m`` for ``self``, ``slowdown_arms_m`` for ``arms`` (another arm)."""
        by_group = {"fingers": self.slowdown_fingers_m, "self": self.slowdown_self_m, "arms": self.slowdown_arms_m}
        return by_group.get(group, self.slowdown_m)

    def over(self, defaults: dict) -> CollisionConfig:
        """These settings over a robot description's ``collision`` defaults: each key the setup
        wrote wins, each key it left out takes the description's value, else this model's default.

        Raises:
            pydantic.ValidationError: the combination is invalid.
        """
        return CollisionConfig.model_validate({**defaults, **self.model_dump(include=self.model_fields_set)})


@dataclass(frozen=True)
class Contact:
    """The closest checked pair at a configuration: bodies ``a`` and ``b``, their distance and
    clearance (m; ``distance < clearance`` is a violation) and the pair group (``scene``: a link
    against the scene, ``fingers``: the gripper against the scene, ``self``: the arm against itself,
    ``arms``: this arm against another arm, ``b`` then named ``<its node>/<body>``, or
    ``<its node>/plan/<body>`` for its planned position)."""

    a: str
    b: str
    distance: float
    clearance: float
    group: str

    @property
    def margin(self) -> float:
        """Distance beyond the clearance, m (negative: closer than allowed)."""
        return self.distance - self.clearance

    def describe(self) -> str:
        return f"{self.a} {self.distance * 1e3:.1f} mm from {self.b} (clearance {self.clearance * 1e3:.0f} mm)"


class CollisionChecker:
    """Signed distances of one arm to its scene and to itself.

    Args:
        model: the arm's :class:`~robot_stack.control.robot_model.RobotModel`.
        cfg: the scene and clearances.

    Raises:
        ValueError: the scene does not compile with the robot (a name clash).
    """

    def __init__(self, model, cfg: CollisionConfig):
        self.cfg = cfg
        spec = model.spec()
        wb = spec.worldbody
        scene_names = []
        if cfg.table_z is not None:
            wb.add_geom(name="rs_table", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[3, 3, 0.01], pos=[0, 0, cfg.table_z])
            scene_names.append("rs_table")
        types = {
            "box": mujoco.mjtGeom.mjGEOM_BOX,
            "sphere": mujoco.mjtGeom.mjGEOM_SPHERE,
            "capsule": mujoco.mjtGeom.mjGEOM_CAPSULE,
            "cylinder": mujoco.mjtGeom.mjGEOM_CYLINDER,
        }
        for ob in cfg.obstacles:
            x, y, z, w = ob.quat
            size = list(ob.size) + [0.0] * (3 - len(ob.size))
            wb.add_geom(name=f"rs_ob_{ob.name}", type=types[ob.shape], size=size, pos=list(ob.pos), quat=[w, x, y, z])
            scene_names.append(f"rs_ob_{ob.name}")
        from robot_stack.control.robot_model import RobotModel

        others = {}
        for o in cfg.arms:  # every other arm's own model at its base pose, under its node's name,
            other = RobotModel.load(o.robot)  # twice: at its measured joints and at its planned ones
            x, y, z, yaw = o.base
            for prefix in (f"{o.node}/", f"{o.node}/{PLAN}/"):
                frame = wb.add_frame(pos=[x, y, z], quat=[np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])
                try:
                    spec.attach(other.spec(), frame=frame, prefix=prefix)
                except ValueError as e:
                    raise ValueError(f"collision scene of {model.name}: other arm {o.node}: {e}") from None
            others[o.node] = other
        try:
            m = spec.compile()
        except ValueError as e:
            raise ValueError(f"collision scene of {model.name}: {e}") from None
        self.m, self.d = m, mujoco.MjData(m)
        #: other arm node -> qpos addresses of its joints (:meth:`set_other`); ``plan_qpos``: of its planned copy
        self.other_qpos = {
            n: np.array([m.joint(f"{n}/{j}").qposadr[0] for j in o.desc.joints]) for n, o in others.items()
        }
        self.plan_qpos = {
            n: np.array([m.joint(f"{n}/{PLAN}/{j}").qposadr[0] for j in o.desc.joints]) for n, o in others.items()
        }
        for n, o in others.items():
            self.d.qpos[self.other_qpos[n]] = o.home_q  # until its first state
            self.d.qpos[self.plan_qpos[n]] = o.home_q
        self._fromto = np.zeros(6)
        #: native distance queries repeated with libccd (see :meth:`_distance`)
        self.fallbacks = 0
        self.qpos_adr = np.array([m.joint(j).qposadr[0] for j in model.desc.joints])
        self.body_name = [m.body(b).name for b in range(m.nbody)]
        arm_joint_bodies = {int(m.jnt_bodyid[m.joint(j).id]) for j in model.desc.joints}
        last = int(m.jnt_bodyid[m.joint(model.desc.joints[-1]).id])

        def ancestors(b: int) -> list[int]:
            out = [b]
            while b != 0:
                b = int(m.body_parentid[b])
                out.append(b)
            return out

        moving = {b for b in range(1, m.nbody) if arm_joint_bodies & set(ancestors(b))}
        gripper = {b for b in range(1, m.nbody) if last in ancestors(b)[1:]}
        prefixes = tuple(f"{n}/" for n in others)
        robot = {b for b in range(1, m.nbody) if not (prefixes and m.body(b).name.startswith(prefixes))}
        other_geoms = [
            g
            for g in range(m.ngeom)
            if (m.geom_contype[g] or m.geom_conaffinity[g])
            and prefixes
            and m.body(m.geom_bodyid[g]).name.startswith(prefixes)
        ]
        scene_geoms = [m.geom(n).id for n in scene_names]
        col = [
            g
            for g in range(m.ngeom)
            if (m.geom_contype[g] or m.geom_conaffinity[g]) and int(m.geom_bodyid[g]) in robot and g not in scene_geoms
        ]
        pairs: list[tuple[int, int, float, str]] = []
        self._own_mask = np.zeros(m.ngeom, bool)  # this arm's moving geoms (motion_bound)
        self._own_mask[[g for g in col if int(m.geom_bodyid[g]) in moving]] = True
        self._own_idx = np.flatnonzero(self._own_mask)
        self._q_set: np.ndarray | None = None  # the arm's joints the kinematics were last run at
        self._set(model.home_q)
        # the links that only the first joint moves keep their height when its axis is vertical (a
        # UR's shoulder turns 3 mm over its mounting surface): never checked against the table
        j1 = m.joint(model.desc.joints[0]).id
        first = {b for b in moving if arm_joint_bodies & set(ancestors(b)) == {int(m.jnt_bodyid[j1])}}
        level = abs(float(self.d.xaxis[j1][2])) > 0.999
        table = m.geom("rs_table").id if cfg.table_z is not None else -1
        for g in col:
            b = int(m.geom_bodyid[g])
            if b not in moving:
                continue
            clear = cfg.clearance_fingers_m if b in gripper else cfg.clearance_scene_m
            group = "fingers" if b in gripper else "scene"
            pairs += [(g, s, clear, group) for s in scene_geoms if not (s == table and level and b in first)]
            pairs += [(g, o, cfg.clearance_arms_m, "arms") for o in other_geoms]
        # self pairs: not parent and child, not both in the gripper, not within the clearance at home
        for i, g1 in enumerate(col):
            for g2 in col[i + 1 :]:
                b1, b2 = int(m.geom_bodyid[g1]), int(m.geom_bodyid[g2])
                if b1 == b2 or (b1 in gripper and b2 in gripper) or not ({b1, b2} & moving):
                    continue
                if m.body_parentid[b1] == b2 or m.body_parentid[b2] == b1:
                    continue
                if b1 in gripper and b2 == last or b2 in gripper and b1 == last:
                    continue
                near = cfg.clearance_self_m + cfg.slowdown_m
                if self._distance(g1, g2, near) < near:
                    continue  # near at home (the wrist's links): a pair the mechanism keeps apart itself
                pairs.append((g1, g2, cfg.clearance_self_m, "self"))
        self.pairs = pairs
        slowdowns = (cfg.slowdown_m, cfg.slowdown_fingers_m, cfg.slowdown_self_m, cfg.slowdown_arms_m)
        clearances = (cfg.clearance_scene_m, cfg.clearance_fingers_m, cfg.clearance_self_m, cfg.clearance_arms_m)
        self.distmax = max(clearances) + max(slowdowns)

    @property
    def pairs(self) -> list[tuple[int, int, float, str]]:
        """The checked pairs: (geom id, geom id, clearance m, group)."""
        return self._pairs

    @pairs.setter
    def pairs(self, pairs: list[tuple[int, int, float, str]]) -> None:
        self._pairs = list(pairs)
        self._g1 = np.array([p[0] for p in self._pairs], int)
        self._g2 = np.array([p[1] for p in self._pairs], int)
        self._plane = self.m.geom_type[self._g2] == mujoco.mjtGeom.mjGEOM_PLANE  # (the table: level)
        # the other arm whose planned copy each pair holds ("" for none): such a pair is checked
        # only while that arm's plan is away from where it is (:meth:`set_other`)
        names = [self.m.body(int(self.m.geom_bodyid[g])).name for g in self._g2]
        self._plan_of = np.array([n.split("/")[0] if f"/{PLAN}/" in n else "" for n in names], dtype=object)
        self._active = self._plan_of == ""
        self._self_pairs = np.array([k for k, p in enumerate(self._pairs) if p[3] == "self"], int)

    def _lower_bounds(self) -> np.ndarray:
        """A lower bound of every pair's distance at the current posture, m: bounding spheres
        (``geom_rbound``) apart, or a sphere's height over the level table. Pairs whose bound
        exceeds the search distance need no exact query (broad phase)."""
        x, r = self.d.geom_xpos, self.m.geom_rbound
        g1, g2 = self._g1, self._g2
        spheres = np.linalg.norm(x[g1] - x[g2], axis=1) - r[g1] - r[g2]
        return np.where(self._plane, x[g1, 2] - r[g1] - x[g2, 2], spheres)

    def set_other(self, node: str, q: np.ndarray, q_plan: np.ndarray | None = None) -> None:
        """The measured joints ``q`` (n,) rad of the other arm ``node`` and where its commands are
        headed, ``q_plan`` (n,) rad (its ``robot/state``; None: unknown), used by every later
        check: this arm keeps its clearances from both (the planned copy is checked only while
        it differs from the measured one).

        Raises:
            KeyError: ``node`` is not one of ``cfg.arms``.
        """
        self.d.qpos[self.other_qpos[node]] = q
        self._q_set = None  # the other arm moved: kinematics again at the next check
        moving = q_plan is not None and float(np.max(np.abs(np.asarray(q_plan) - q))) > 1e-6
        self.d.qpos[self.plan_qpos[node]] = q_plan if moving else q
        self._active[self._plan_of == node] = moving

    def _set(self, q: np.ndarray) -> None:
        """Kinematics at this arm's joints ``q`` (skipped when they are already there)."""
        if self._q_set is not None and np.array_equal(self._q_set, q):
            return
        self.d.qpos[self.qpos_adr] = q
        mujoco.mj_kinematics(self.m, self.d)
        self._q_set = np.array(q, float)

    def _distance(self, g1: int, g2: int, distmax: float) -> float:
        """Signed distance of two geoms (m; capped at ``distmax``), MuJoCo's native GJK/EPA.

        MuJoCo 3.8.1's native query returns exactly 0 for about 0.2 % of the arm's mesh-mesh and
        mesh-box pairs at random postures, the shapes centimetres apart (its witness points apart,
        or both at one point); for those the query is repeated with libccd
        (``mjDSBL_NATIVECCD``), whose distance is at most the true one (its witness points lie
        inside the shapes), so the fallback errs on the safe side."""
        d = float(mujoco.mj_geomDistance(self.m, self.d, g1, g2, distmax, self._fromto))
        if d == 0.0:  # exactly touching is a measure-zero event; this is the failure described above
            self.fallbacks += 1
            self.m.opt.disableflags |= _NATIVE_CCD
            try:
                d = float(mujoco.mj_geomDistance(self.m, self.d, g1, g2, distmax, self._fromto))
            finally:
                self.m.opt.disableflags &= ~_NATIVE_CCD
        return d

    def closest(self, q: np.ndarray, motion: np.ndarray | None = None) -> Contact | None:
        """The checked pair with the smallest margin over its clearance at joint configuration
        ``q`` (n,) rad, or None when every pair is farther than clearance + slow-down distance.

        Args:
            motion: (pairs,) m, how much closer each pair may still come (:meth:`motion_bound`:
                an arm that brakes from ``q``); a pair's distance is then counted less that (its
                distance once the arm has moved, at worst), and the search reaches that much
                further.
        """
        self._set(np.asarray(q, float))
        best, best_margin = None, np.inf
        lower = self._lower_bounds()
        extra = 0.0 if motion is None else motion
        for k in np.flatnonzero((lower - extra < self.distmax) & self._active):
            g1, g2, clear, group = self._pairs[k]
            more = 0.0 if motion is None else float(extra[k])
            dist = self._distance(g1, g2, self.distmax + more) - more
            if dist - clear < best_margin and dist < self.distmax:
                best, best_margin = (g1, g2, dist, clear, group), dist - clear
        if best is None:
            return None
        g1, g2, dist, clear, group = best
        name = lambda g: self.m.geom(g).name or self.body_name[int(self.m.geom_bodyid[g])]  # noqa: E731
        a = self.body_name[int(self.m.geom_bodyid[g1])]
        b = name(g2) if group in ("scene", "fingers") else self.body_name[int(self.m.geom_bodyid[g2])]
        return Contact(a, b.removeprefix("rs_ob_").removeprefix("rs_"), dist, clear, group)

    def motion_bound(self, q_a: np.ndarray, q_b: np.ndarray) -> np.ndarray:
        """(pairs,) m: for each checked pair, an upper bound on how much closer its two geoms can
        be at joint configuration ``q_b`` (n,) rad than at ``q_a``, for a short move between them
        (a brake; to first order along the way). A geom's points move by at most its bounding
        sphere's centre displacement plus its rotation angle times the sphere's radius; for a pair
        with the scene or another arm, that of this arm's geom; for a pair within this arm, the
        same measured in the first geom's frame (the motion of the links both hang from cancels).
        """
        g1, g2, r = self._g1, self._g2, self.m.geom_rbound
        self._set(np.asarray(q_b, float))  # q_b first: the check that follows is at q_a
        xb, rb = self.d.geom_xpos.copy(), self.d.geom_xmat.reshape(-1, 3, 3).copy()
        self._set(np.asarray(q_a, float))
        xa, ra = self.d.geom_xpos, self.d.geom_xmat.reshape(-1, 3, 3)

        def angle(a, b):  # rotation angle between rotation matrices (k, 3, 3): trace(a^T b)
            return np.arccos(np.clip((np.einsum("kij,kij->k", a, b) - 1.0) / 2.0, -1.0, 1.0))

        moved = np.where(self._own_mask, np.linalg.norm(xb - xa, axis=1) + angle(ra, rb) * r, 0.0)  # per geom
        out = moved[g1] + moved[g2]
        s = self._self_pairs
        if len(s):  # within the arm: the second geom's motion in the first one's frame
            a1, b1 = ra[g1[s]], rb[g1[s]]
            rel_a = np.einsum("kji,kj->ki", a1, xa[g2[s]] - xa[g1[s]])
            rel_b = np.einsum("kji,kj->ki", b1, xb[g2[s]] - xb[g1[s]])
            rot_a = np.einsum("kji,kjl->kil", a1, ra[g2[s]])
            rot_b = np.einsum("kji,kjl->kil", b1, rb[g2[s]])
            out[s] = np.linalg.norm(rel_b - rel_a, axis=1) + angle(rot_a, rot_b) * r[g2[s]]
        return out

    def violation(self, q: np.ndarray) -> Contact | None:
        """The closest pair if it is closer than its clearance at ``q``, else None."""
        c = self.closest(q)
        return c if c is not None and c.margin < 0 else None

    def scale_of(self, c: Contact | None) -> float:
        """Speed factor for the closest pair ``c``: 1 beyond its group's slow-down distance of
        margin (:meth:`CollisionConfig.slowdown_for`), 0 at the clearance or closer, linear
        between (MoveIt Servo's collision velocity scaling); 1 for None."""
        if c is None:
            return 1.0
        return float(np.clip(c.margin / self.cfg.slowdown_for(c.group), 0.0, 1.0))

    def check_path(self, qs: np.ndarray, lever_m: float = 1.0) -> tuple[int, Contact] | None:
        """Check a joint path (k, n) rad, linear between waypoints (:meth:`scan_path` whole).

        Returns:
            (index of the waypoint whose segment reaches the first violation, the contact), or
            None when the path keeps every clearance.
        """
        i, c = self.scan_path(qs, lever_m=lever_m)
        return None if c is None else (i, c)

    def scan_path(
        self, qs: np.ndarray, start: int = 0, deadline: float | None = None, lever_m: float = 1.0
    ) -> tuple[int, Contact | None]:
        """Check a joint path (k, n) rad, linear between waypoints, from waypoint ``start`` on (the
        waypoints before it already checked), by conservative advancement (Mirtich, "Timewarp
        rigid body simulation", 2000; the continuous-collision scheme of FCL): from each sample
        the path advances so that no point of the arm moves more than half the current margin, at
        least half the smallest clearance, so no violation deeper than that floor is stepped over.
        A point's motion is bounded by ``lever_m`` (the arm's reach, m) times the sum of the
        joints' motions. Each waypoint is checked once, as the end of the segment that reaches it.

        Args:
            deadline: ``time.perf_counter()`` value after which the scan stops at the next
                waypoint (at least one segment is checked per call).

        Returns:
            (i, contact) with i the waypoint whose segment reaches the first violation, or
            (i, None): waypoints before i keep every clearance (i == k: the whole path).
        """
        qs = np.atleast_2d(np.asarray(qs, float))
        cfg = self.cfg
        clear_min = min(cfg.clearance_scene_m, cfg.clearance_fingers_m, cfg.clearance_self_m)
        floor = 0.5 * max(clear_min, 1e-3)
        free_far = self.distmax - max(cfg.clearance_scene_m, cfg.clearance_fingers_m, cfg.clearance_self_m)
        i = max(int(start), 0)
        if i >= len(qs):
            return len(qs), None
        c = self.closest(qs[max(i - 1, 0)])  # the margin the advancement starts from
        if i == 0:
            if c is not None and c.margin < 0:
                return 0, c
            i = 1
        while i < len(qs):
            a, dq = qs[i - 1], qs[i] - qs[i - 1]
            reach = lever_m * float(np.abs(dq).sum())  # bound on any point's motion over the segment, m
            t = 0.0
            while t < 1.0:
                free = free_far if c is None else c.margin
                t = 1.0 if reach <= 0 else min(1.0, t + max(0.5 * free, floor) / reach)
                c = self.closest(a + dq * t)
                if c is not None and c.margin < 0:
                    return i, c
            i += 1
            if deadline is not None and time.perf_counter() > deadline:
                break
        return i, None
