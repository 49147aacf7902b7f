"""Intel RealSense camera driver (pyrealsense2).

Color (rgb8) and depth (z16) are streamed and depth is aligned to the color image with
``rs.align(rs.stream.color)``, so one (u, v) addresses both; intrinsics K are the color stream's,
depth scale comes from the depth sensor (D4xx: 0.001 m per unit). Device timestamps
(``frame.get_timestamp()``, ms) are mapped to the stack clock by
:class:`~robot_stack.runtime.clock.DeviceClockMapper`; for ``global_time`` domain stamps (host-synchronized
by librealsense) the same mapper applies. A recorded ``.bag``/``.db3`` file plays back instead of a
device with ``playback_file`` (every frame delivered: ``set_real_time(False)``): it plays at the
reader's pace, so its frames are stamped on receipt, and a looping recording plays as one
continuous device (frame counter and device stamps go on across loops).
Source: librealsense Python wrapper docs and examples (align-depth2color.py, read_bag_example.py).
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

import os
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from robot_stack.runtime.clock import DeviceClockMapper, now_ns
from robot_stack.runtime.devices import DeviceConfig, Check, path_check
from robot_stack.drivers.camera import CameraDriver, Frame


class RealSenseError(RobotStackError, RuntimeError):
    """No device / bad recording / stream configuration refused by the device."""


class RealSenseCamera(CameraDriver):
    """RealSense D4xx RGB-D camera, live or from a recording.

    Args:
        width, height, fps: stream settings (live devices; a recording uses its own).
        serial: device serial number to open (None: the first device).
        playback_file: path of a ``.bag``/``.db3`` recording to play instead of a device.
        loop: repeat the recording.
        sync: inter-camera hardware sync of a live D4xx (``off``, ``master``, ``slave``; see
            :func:`apply_sync`), set and checked at start.
    """

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        fps: int = 30,
        serial: str | None = None,
        playback_file: str | None = None,
        loop: bool = True,
        sync: str = "off",
    ):
        self.width, self.height, self.fps, self.sync = width, height, fps, sync
        self.serial, self.playback_file, self.loop = serial, playback_file, loop
        # a recording plays at the reader's pace (not real time): its device clock says nothing
        # about when a frame is read, so a playback's frames are stamped when they are received
        self.clock = None if playback_file else DeviceClockMapper()
        self._pipe = None
        self._last_frame_ns = 0
        self.playback_restarts = 0  # stalled playbacks restarted (librealsense can stall under load)
        self.playback_loops = 0  # times a looping recording started over
        self._unloop_last: tuple[int, int, int] | None = None  # (raw index, index out, device ns out)
        self._unloop_off = (0, 0)  # (index offset, device ns offset) added to the recording's own

    #: a playback that delivers nothing for this long is restarted (live devices are not: a silent
    #: device is reported by the camera node as missing frames)
    PLAYBACK_STALL_S = 2.0

    def start(self) -> None:
        import pyrealsense2 as rs

        self._rs = rs
        cfg = rs.config()
        if self.playback_file:
            if not os.path.isfile(self.playback_file):
                raise RealSenseError(f"recording {self.playback_file} does not exist")
            cfg.enable_device_from_file(self.playback_file, repeat_playback=self.loop)
        else:
            ctx = rs.context()
            serials = [d.get_info(rs.camera_info.serial_number) for d in ctx.query_devices()]
            if not serials:
                raise RealSenseError("no RealSense device connected").with_fix(
                    "plug the camera into a USB 3 port; rs-enumerate-devices lists what the host sees; set its serial"
                )
            if self.serial is not None:
                if self.serial not in serials:
                    raise RealSenseError(f"RealSense {self.serial} not found (connected: {serials})")
                cfg.enable_device(self.serial)
            cfg.enable_stream(rs.stream.color, self.width, self.height, rs.format.rgb8, self.fps)
            cfg.enable_stream(rs.stream.depth, self.width, self.height, rs.format.z16, self.fps)
        self._pipe = rs.pipeline()
        if self.sync != "off" and not self.playback_file:  # before streaming starts
            try:
                dev = cfg.resolve(rs.pipeline_wrapper(self._pipe)).get_device()
            except RuntimeError as e:
                raise RealSenseError(f"cannot open the RealSense for its sync setting: {e}") from None
            apply_sync(dev.first_depth_sensor(), self.sync, rs)
        try:
            profile = self._pipe.start(cfg)
        except RuntimeError as e:
            raise RealSenseError(f"cannot start the RealSense pipeline: {e}") from None
        dev = profile.get_device()
        if self.playback_file:
            dev.as_playback().set_real_time(False)
        self.depth_scale = float(dev.first_depth_sensor().get_depth_scale())
        color_profile = profile.get_stream(rs.stream.color).as_video_stream_profile()
        intr = color_profile.get_intrinsics()
        self.width, self.height, self.fps = intr.width, intr.height, int(color_profile.fps())
        self.K = np.array([[intr.fx, 0, intr.ppx], [0, intr.fy, intr.ppy], [0, 0, 1]], dtype=np.float64)
        self.distortion = np.array(intr.coeffs, dtype=np.float64)
        self.serial_number = dev.get_info(rs.camera_info.serial_number)
        self._align = rs.align(rs.stream.color)
        self._last_frame_ns = now_ns()

    def read(self, timeout_s: float) -> Frame | None:
        ok, frames = self._pipe.try_wait_for_frames(max(1, int(timeout_s * 1000)))
        t_recv = now_ns()
        if not ok:
            if self.playback_file and self.loop and t_recv - self._last_frame_ns > self.PLAYBACK_STALL_S * 1e9:
                # a looping playback never ends: a stall is librealsense's, not the file's
                self.stop()
                self.start()
                self.playback_restarts += 1
            return None
        self._last_frame_ns = t_recv
        aligned = self._align.process(frames)
        cf, df = aligned.get_color_frame(), aligned.get_depth_frame()
        if not cf or not df:
            return None
        color = np.array(cf.get_data(), dtype=np.uint8, copy=True)
        depth = np.array(df.get_data(), dtype=np.uint16, copy=True)
        index = int(cf.get_frame_number())
        dev_ns = int(cf.get_timestamp() * 1e6)  # readout start (librealsense: frame timestamp)
        if self.playback_file and self.loop:
            index, dev_ns = self._unloop(index, dev_ns)
        stamp = t_recv if self.clock is None else self.clock.map(dev_ns, t_recv)
        mid = _mid_exposure_lead_ns(cf, self._rs)  # readout start - middle of exposure, when reported
        return Frame(
            stamp_ns=stamp - mid,
            frame_index=index,
            color=color,
            depth=depth,
            device_stamp_ns=dev_ns - mid,
        )

    def _unloop(self, index: int, dev_ns: int) -> tuple[int, int]:
        """A looping recording plays as one continuous device: when the recording starts over (its
        frame counter does not increase), frame counter and device clock go on from where the last
        loop ended, one frame period (``1/fps``) later. Without this every loop would read as a
        frozen camera (the counter repeats) and a device-clock jump."""
        if self._unloop_last is not None:
            raw_last, idx_last, ns_last = self._unloop_last
            if index <= raw_last:  # started over
                self.playback_loops += 1
                self._unloop_off = (idx_last + 1 - index, ns_last + int(1e9 / max(self.fps, 1)) - dev_ns)
        out = (index + self._unloop_off[0], dev_ns + self._unloop_off[1])
        self._unloop_last = (index, *out)
        return out

    def stop(self) -> None:
        if self._pipe is not None:
            try:
                self._pipe.stop()
            except RuntimeError:
                pass
            self._pipe = None


def _mid_exposure_lead_ns(frame, rs) -> int:
    """How long before its readout a frame's exposure was half done, ns: the frame timestamp
    metadata (readout start) minus the sensor timestamp (middle of exposure), both device-clock
    microseconds (librealsense ``rs2_frame_metadata_value``); 0 where the device does not report
    both (a kernel without the metadata patch) or they disagree by over 100 ms."""
    md = rs.frame_metadata_value
    try:
        if not (
            frame.supports_frame_metadata(md.frame_timestamp) and frame.supports_frame_metadata(md.sensor_timestamp)
        ):
            return 0
        lead = int(frame.get_frame_metadata(md.frame_timestamp) - frame.get_frame_metadata(md.sensor_timestamp)) * 1000
    except RuntimeError:
        return 0
    return lead if 0 <= lead < 100_000_000 else 0


#: D4xx inter-camera sync modes (librealsense ``RS2_OPTION_INTER_CAM_SYNC_MODE`` on the stereo
#: module; Intel, "Multi-camera configurations with the Intel RealSense D400 series", white paper)
SYNC_MODES = {"off": 0, "master": 1, "slave": 2}


def apply_sync(sensor, mode: str, rs) -> None:
    """Set a D4xx stereo module's inter-camera sync mode (``off``, ``master``: drives the sync
    cable, ``slave``: triggered by it) and check what the device reports back.

    Raises:
        RealSenseError: the sensor has no sync option (not a D4xx stereo module, or firmware too
            old), or reports another mode than the one set.
    """
    want = SYNC_MODES[mode]
    opt = rs.option.inter_cam_sync_mode
    if not sensor.supports(opt):
        raise RealSenseError(f"sync {mode}: this sensor has no inter-camera sync option").with_fix(
            "hardware sync needs a D4xx stereo module (firmware 5.9.15 or later); set sync: off"
        )
    sensor.set_option(opt, float(want))
    got = int(round(sensor.get_option(opt)))
    if got != want:
        names = {v: k for k, v in SYNC_MODES.items()}
        raise RealSenseError(f"sync {mode}: the device reports mode {names.get(got, got)} after setting it")


class RealSenseConfig(DeviceConfig):
    """camera driver ``realsense``: an Intel RealSense D4xx, live (``serial``) or a recording
    (``playback_file``). SDK: pyrealsense2 (extra ``realsense``; needs libusb-1.0)."""

    type: Literal["realsense"] = "realsense"
    extra = "realsense"
    requires = ("pyrealsense2",)
    serial: str | None = Field(None, description="device serial (None: the first device found)")
    playback_file: str | None = Field(None, description=".bag/.db3 recording to play instead of a device")
    loop_playback: bool = Field(True, description="a recording starts over at its end")
    sync: Literal["off", "master", "slave"] = Field(
        "off",
        description="D4xx inter-camera hardware sync over the sync cable: one master, the others slave "
        "(set and checked at start)",
    )

    @model_validator(mode="after")
    def _sync_is_for_devices(self):
        if self.sync != "off" and self.playback_file:
            raise ValueError("sync is a live device's setting; a recording plays as it was recorded")
        return self

    def doctor(self) -> list[Check]:
        if self.playback_file:
            return [path_check(f"RealSense recording {self.playback_file}", self.playback_file, "check the path")]
        import pyrealsense2 as rs

        found = {}
        for d in rs.context().query_devices():
            info = {
                k: d.get_info(getattr(rs.camera_info, k)) if d.supports(getattr(rs.camera_info, k)) else "?"
                for k in ("serial_number", "firmware_version", "usb_type_descriptor", "name")
            }
            found[info["serial_number"]] = info
        listed = (
            ", ".join(
                f"{s} ({i['name']}, firmware {i['firmware_version']}, USB {i['usb_type_descriptor']})"
                for s, i in found.items()
            )
            or "none connected"
        )
        want = self.serial or (next(iter(found)) if found else None)
        if want is None or want not in found:
            return [
                Check(
                    False,
                    f"RealSense {self.serial or '(any)'}",
                    f"not found; connected: {listed}",
                    "plug it into a USB 3 port (rs-enumerate-devices lists what the host sees); set its serial",
                )
            ]
        usb = found[want]["usb_type_descriptor"]
        out = [Check(True, f"RealSense {want}", f"{found[want]['name']}, firmware {found[want]['firmware_version']}")]
        out.append(
            Check(
                usb.startswith("3"),
                f"RealSense {want} link",
                f"USB {usb}",
                "" if usb.startswith("3") else "use a USB 3 port and cable (USB 2 offers fewer modes)",
                blocking=False,
            )
        )
        return out

    def build(self, ctx, params) -> RealSenseCamera:
        return RealSenseCamera(
            params.width,
            params.height,
            int(params.rate_hz),
            serial=self.serial,
            playback_file=self.playback_file,
            loop=self.loop_playback,
            sync=self.sync,
        )
