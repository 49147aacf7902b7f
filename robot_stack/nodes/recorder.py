"""Recorder node: writes episodes of every sample at its capture stamp, never blocking anyone.

It subscribes to the arm (``robot/state``), the cameras (``camera/<id>``), the teleop node
(``teleop/command``), the sim world's object ground truth (``sim/objects``, when
``sim_world`` is set) and the controller (``controller/action``, the waypoints actually sent to the
arm, with their origin: policy or teleop) through one bounded queue; a sample that does not fit is
counted in ``dropped`` (heartbeat), never silently lost. Episode events on its input drive it:
``start`` opens a new episode (task text from the event), ``stop`` saves it (samples stamped
before the stop, after a short grace period for frames still in flight), ``discard`` moves it to
``discarded/``, ``quit`` saves the current one. Writing happens in blocks on a flush thread
(``robot_stack.data.dataset``): crash-safe, and a full disk stops the recording with a clear error,
leaving earlier episodes untouched.

Several arms (``arms``, bimanual): each arm's states go to ``robot_state/<arm node>`` and the
controller's schedules for it (``WaypointSchedule.arm``) to ``action/<arm node>``, with the same
fields as the one-arm streams; the episode's ``robots`` metadata lists every arm in order.

On start-up, episodes interrupted by a crash (``*.zarr.partial``) are recovered up to their last
complete sample or discarded, as ``on_interrupted`` says, with a log line for each.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from robot_stack.runtime.clock import now_ns
from robot_stack.data.dataset import (
    ORIGINS,
    DatasetError,
    EpisodeWriter,
    discard_interrupted,
    find_interrupted,
    recover,
)
from robot_stack.comm.messages import (
    TELEOP_BUTTONS,
    CameraFrame,
    EpisodeEvent,
    RobotState,
    TeleopCommand,
    WaypointSchedule,
)
from robot_stack.drivers.sim_messages import ObjectState
from robot_stack.runtime.node import Node, NodeParams

log = logging.getLogger(__name__)
TELEOP_KINDS = ("ee_delta", "ee_absolute", "joint")


_NO_WRENCH = np.full(6, np.nan)


class RecorderParams(NodeParams):
    root: str = Field(..., description="dataset folder (episodes are written here)")
    arm: str = Field("arm", description="the arm node recorded (one arm)")
    arms: list[str] | None = Field(
        None,
        min_length=1,
        description=(
            "several arm nodes (bimanual), in the controller's order: streams robot_state/<arm> and action/<arm>. "
            "None: the one arm ``arm`` (streams robot_state and action)"
        ),
    )
    cameras: list[str] = Field(default_factory=list, description="camera node names")
    teleop: str | None = Field(
        None, description="teleop node whose commands are recorded, and whose buttons start and save episodes"
    )
    controller: str | None = Field(None, description="controller node whose waypoints are recorded as actions")
    sim_world: str | None = Field(None, description="sim world node: its object ground truth is recorded too")
    rate_hz: float = Field(200.0, gt=0, description="loop rate draining the sample queue, Hz")
    flush_every_s: float = Field(0.5, gt=0, description="buffered samples are written to disk this often, s")
    stop_grace_s: float = Field(0.3, ge=0, description="after stop, wait this long for samples still in flight")
    queue_size: int = Field(
        20000, ge=100, description="samples held between socket and disk; overflow is dropped and counted"
    )
    on_interrupted: Literal["recover", "discard"] = Field(
        "recover",
        description="an episode interrupted by a crash: recover it up to its last complete sample, or discard it",
    )
    task: str = Field("", description="the task's text, stored with each episode (LeRobot's task string)")

    @property
    def arm_nodes(self) -> list[str]:
        return list(self.arms) if self.arms else [self.arm]

    def references(self) -> dict[str, str]:
        refs = {**{a: "arm" for a in self.arm_nodes}, **{c: "camera" for c in self.cameras}}
        for name, kind in ((self.teleop, "teleop"), (self.controller, "controller"), (self.sim_world, "sim_world")):
            if name:
                refs[name] = kind
        return refs


class RecorderNode(Node):
    Params = RecorderParams
    default_rate_hz = 200.0

    def configure(self) -> None:
        p = self.params
        try:  # made now, so a bad root fails at start-up and the folder exists once the node is up
            Path(p.root).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"recorder root {p.root} cannot be created: {e}") from e
        self.recovered = self.discarded_on_start = 0
        for path in find_interrupted(p.root):
            if p.on_interrupted == "discard":
                discard_interrupted(path, "was interrupted (on_interrupted: discard)")
                self.discarded_on_start += 1
            elif recover(path) is not None:
                self.recovered += 1
            else:
                self.discarded_on_start += 1
        self.multi = len(p.arm_nodes) > 1
        nodes = [*p.arm_nodes, *p.cameras] + [n for n in (p.teleop, p.controller, p.sim_world) if n]
        self.sub = self.own(
            self.ctx.subscriber(
                nodes,
                (
                    RobotState.TOPIC,
                    CameraFrame.TOPIC,
                    TeleopCommand.TOPIC,
                    WaypointSchedule.EXECUTED_TOPIC,
                    ObjectState.TOPIC,
                ),
                queue_size=p.queue_size,
                hwm=10000,
            )
        )
        self.rx = self.own(self.ctx.receiver())
        self.lock = threading.Lock()
        self.writer: EpisodeWriter | None = None
        self.t_start = self.t_stop = 0
        self.stop_kind = ""
        self.cam_meta: dict[str, dict] = {}
        self.counts = {"saved": 0.0, "discarded": 0.0, "write_errors": 0.0}
        self.episode_rows = 0
        self._stop_flush = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, daemon=True)
        self._flusher.start()
        self.own(self._flusher, self._finish)  # before the sockets close (released in reverse order)
        log.info(
            "recording into %s (recovered %d, discarded %d interrupted episodes)",
            p.root,
            self.recovered,
            self.discarded_on_start,
        )

    def _robot_meta(self, name: str) -> dict:
        """A recorded arm: node name, typed driver config and robot model name."""
        arm = self.ctx.config.nodes.get(name)
        if arm is None or arm.kind != "arm":
            return {"arm_node": name, "driver": None, "model": None}
        ap = arm.typed
        return {"arm_node": name, "driver": ap.driver.model_dump(mode="json"), "model": ap.robot_name(self.ctx.config)}

    def _meta(self, ev: EpisodeEvent) -> dict:
        cfg = self.ctx.config
        rates = {n: nc.typed.rate_hz for n, nc in cfg.nodes.items() if "rate_hz" in type(nc.typed).model_fields}
        arms = self.params.arm_nodes
        meta = {
            "task": ev.task or self.params.task,
            "episode_event": ev.episode,
            "config_name": cfg.name,
            "config": cfg.model_dump(mode="json"),
            "rates_hz": rates,
            "robot": self._robot_meta(arms[0]),
        }
        if self.multi:
            meta["robots"] = [self._robot_meta(a) for a in arms]
        if cfg.calibration is not None:
            from pathlib import Path

            f = Path(cfg.calibration.file)
            meta["calibration"] = f.read_text() if f.is_file() else None
        return meta

    # ----------------------------------------------------------------------------- events
    def _events(self) -> None:
        while (item := self.rx.recv(0.0)) is not None:
            self.guarded("recorder_input", self._on_event, item[1])

    def _on_event(self, ev) -> None:
        if not isinstance(ev, EpisodeEvent):
            return
        with self.lock:
            if ev.kind == "start":
                if self.writer is not None:
                    self._close()
                try:
                    self.writer = EpisodeWriter(self.params.root, meta=self._meta(ev))
                except DatasetError as e:
                    self.counts["write_errors"] += 1
                    log.error("cannot start an episode: %s", e)
                    return
                self.t_start, self.t_stop, self.episode_rows = now_ns(), 0, 0
                self.cam_meta = {}
                log.info("episode %d started (%s)", self.writer.index, ev.task or self.params.task)
            elif ev.kind in ("stop", "quit") and self.writer is not None and not self.t_stop:
                self.t_stop = now_ns()  # closed after the grace period
            elif ev.kind == "discard" and self.writer is not None:
                dst = self.writer.discard()
                self.writer = None
                self.counts["discarded"] += 1
                log.info("episode discarded (kept in %s)", dst)

    def _close(self) -> None:
        w, self.writer = self.writer, None
        try:
            st = self.sub.stats  # session totals so far: what a gap in an episode's frame counters may stem from
            path = w.close(
                {
                    "cameras": self.cam_meta,
                    "dropped": float(st.dropped),
                    "receive": {"decode_errors": st.decode_errors, "errors_by_reason": dict(st.errors_by_reason)},
                }
            )
        except DatasetError as e:
            self.counts["write_errors"] += 1
            log.error("%s", e)
            return
        self.counts["saved"] += 1
        log.info("episode %d saved: %s rows %s", w.index, path, w.rows)

    # ----------------------------------------------------------------------------- samples
    def _add(self, topic: str, msg) -> None:
        w = self.writer
        if isinstance(msg, RobotState):
            w.add(
                f"robot_state/{msg.source}" if self.multi else "robot_state",
                msg.stamp_ns,
                q=msg.q,
                dq=msg.dq,
                ee_pose=msg.ee_pose,
                gripper_width=np.float64(msg.gripper_width),
                wrench=_NO_WRENCH if msg.wrench is None else msg.wrench,
            )  # NaN: the arm measures none
        elif isinstance(msg, CameraFrame):
            cid = msg.camera_id
            fields = {"color": msg.color}
            if msg.depth is not None:
                fields["depth"] = msg.depth
            w.add(
                f"camera/{cid}",
                msg.stamp_ns,
                frame_index=np.int64(msg.frame_index),
                device_stamp_ns=np.int64(msg.device_stamp_ns),
                **fields,
            )
            if cid not in self.cam_meta:
                self.cam_meta[cid] = {
                    "K": msg.K.tolist(),
                    "depth_scale": msg.depth_scale,
                    "height": int(msg.color.shape[0]),
                    "width": int(msg.color.shape[1]),
                }
        elif isinstance(msg, TeleopCommand):
            v = np.zeros(8)
            v[: min(8, len(msg.value))] = msg.value[:8]
            mask = sum(1 << TELEOP_BUTTONS.index(b) for b in msg.buttons)
            w.add(
                "teleop",
                msg.stamp_ns,
                kind=np.int8(TELEOP_KINDS.index(msg.kind)),
                value=v,
                gripper=np.float64(msg.gripper),
                buttons=np.int32(mask),
            )
        elif isinstance(msg, ObjectState):
            w.add(
                "sim_objects",
                msg.stamp_ns,
                cube_pose=msg.cube_pose,
                target_xy=msg.target_xy,
                target_half=np.float64(msg.target_half),
            )
        elif isinstance(msg, WaypointSchedule):
            origin = np.int8(ORIGINS.index(msg.origin)) if msg.origin in ORIGINS else np.int8(-1)
            # ee waypoints -> "action" (pose); joint waypoints (leader-arm teleop) -> "action_joint" (q)
            stream, field = ("action_joint", "q") if msg.space == "joint" else ("action", "pose")
            if self.multi:
                if msg.arm not in self.params.arm_nodes:
                    raise ValueError(f"an action for arm {msg.arm!r}, recording {self.params.arm_nodes}")
                stream = f"{stream}/{msg.arm}"
            for i in range(len(msg.stamps_ns)):
                w.add(
                    stream,
                    msg.stamp_ns,
                    target_ns=np.int64(msg.stamps_ns[i]),
                    **{field: msg.positions[i]},
                    gripper=np.float64(1.0 if msg.gripper is None else msg.gripper[i]),
                    origin=origin,
                )
        self.episode_rows += 1

    def step(self) -> None:
        self._events()
        with self.lock:
            while (item := self.sub.get(0.0)) is not None:
                topic, msg = item
                if self.writer is None or msg.stamp_ns < self.t_start or (self.t_stop and msg.stamp_ns >= self.t_stop):
                    continue
                try:
                    self._add(topic, msg)
                except DatasetError as e:
                    self.counts["write_errors"] += 1
                    log.error("sample of %s not recordable: %s", topic, e)
                except Exception as e:  # a sample that decodes but is wrong: that sample, not the node
                    self.input_rejections[f"recorder_sample.{type(e).__name__}"] += 1
                    log.error("sample of %s rejected: %s: %s", topic, type(e).__name__, e)
            if self.writer is not None and self.t_stop and now_ns() - self.t_stop > self.params.stop_grace_s * 1e9:
                self._close()

    def _flush_loop(self) -> None:
        while not self._stop_flush.wait(self.params.flush_every_s):
            with self.lock:
                if self.writer is None:
                    continue
                try:
                    self.writer.flush()
                except DatasetError as e:
                    self.counts["write_errors"] += 1
                    log.error("%s", e)
                    self.writer = None  # the partial episode stays for recovery on the next start

    def metrics(self) -> dict[str, float]:
        w = self.writer
        m = dict(self.counts)
        m.update(
            recording=float(w is not None),
            episode=float(w.index if w else -1),
            duration_s=(now_ns() - self.t_start) / 1e9 if w else 0.0,
            rows=float(self.episode_rows),
            dropped=float(self.sub.stats.dropped),
            recovered_on_start=float(self.recovered),
        )
        return m

    def _finish(self) -> None:
        """Stop the flusher; an episode still open is left as .partial: the next start recovers it
        (a stop is explicit)."""
        self._stop_flush.set()
        self._flusher.join(timeout=5)
        if self.writer is not None:
            with self.lock:
                try:
                    self.writer.flush()
                except DatasetError as e:
                    log.error("%s", e)
                log.warning(
                    "stopped while recording episode %d: left for recovery on the next start", self.writer.index
                )
