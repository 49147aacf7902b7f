"""Robotiq 2F-85 gripper over Modbus RTU (``minimalmodbus`` on ``pyserial``).

Facts from the Robotiq 2F-85 & 2F-140 instruction manual, section 4 "Control": RS-485 at
115200 baud, 8 data bits, no parity, 1 stop bit, slave id 9. The robot output registers (commands)
start at 0x03E8: byte 0 action request (rACT bit 0, rGTO bit 3, rATR bit 4), bytes 1-2 reserved,
byte 3 position request (0 open .. 255 closed), byte 4 speed, byte 5 force; written with function
16. The robot input registers (status) start at 0x07D0: byte 0 gripper status (gACT bit 0, gGTO
bit 3, gSTA bits 4-5, gOBJ bits 6-7), byte 1 reserved, byte 2 fault (gFLT), byte 3 position
request echo, byte 4 position (gPO), byte 5 motor current; read with function 3. Two bytes per
16-bit register, high byte first.

Wiring (both documented in the manual, section 3):

- UR tool flange: the gripper's cable on the tool connector; on the UR, Installation -> Tool I/O
  -> "Controlled by: User", RS-485 at 115200 8N1, tool voltage 24 V. The UR's "RS485 daemon"
  URCap (or ur_rtde's ``RTDEIOInterface`` tool communication) exposes it on the robot's network
  at port 54321 as a raw serial stream; ``socat pty,link=/tmp/ttyTool,raw tcp:<robot_ip>:54321``
  makes it a local serial port for this driver.
- USB RS-485 adapter (Robotiq's ACC-ADT-USB-RS485): the gripper's cable into the adapter, the
  adapter on the host; the port is ``/dev/ttyUSB0`` (udev rule or ``dialout`` group for access).
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

import logging
import threading
import time

log = logging.getLogger(__name__)

SLAVE_ID = 9
OUT_REG, IN_REG = 0x03E8, 0x07D0
STROKE_M = 0.085

#: gFLT (manual, table 4.8.4): 0x00 no fault; others named
FAULTS = {
    0x05: "action delayed: the activation (re-activation) must complete first",
    0x07: "the activation bit must be set before an action",
    0x08: "maximum operating temperature exceeded (>= 85 C internally): let the gripper cool",
    0x09: "no communication during at least 1 second",
    0x0A: "under minimum operating voltage",
    0x0B: "automatic release in progress",
    0x0C: "internal fault: contact support",
    0x0D: "activation fault: verify that no interference or other error occurred",
    0x0E: "overcurrent triggered",
    0x0F: "automatic release completed",
}
#: gOBJ
OBJECT = {0: "moving", 1: "contact while opening", 2: "contact while closing (object detected)", 3: "at position"}


class RobotiqError(RobotStackError, RuntimeError):
    """The gripper reported a fault, or did not answer."""


class GripperStatus:
    """A decoded status read (6 bytes from 0x07D0)."""

    def __init__(self, raw: bytes):
        if len(raw) != 6:
            raise RobotiqError(f"status of {len(raw)} bytes, expected 6")
        b0 = raw[0]
        self.activated = bool(b0 & 0x01)
        self.going = bool(b0 & 0x08)
        self.activation = (b0 >> 4) & 0x03  # gSTA: 0 reset, 1 activating, 3 activated
        self.object = (b0 >> 6) & 0x03  # gOBJ
        self.fault = raw[2] & 0x0F
        self.position_request = raw[3]
        self.position = raw[4]
        self.current = raw[5]

    @property
    def object_detected(self) -> bool:
        return self.object in (1, 2)

    @property
    def fault_text(self) -> str | None:
        if self.fault == 0:
            return None
        return FAULTS.get(self.fault, f"fault 0x{self.fault:02X}")


def width_from_position(pos: int, open_pos: int = 0, closed_pos: int = 255, stroke_m: float = STROKE_M) -> float:
    """Finger opening (m) from gPO: linear between the calibrated open and closed positions."""
    f = (pos - open_pos) / max(closed_pos - open_pos, 1)
    return float(stroke_m * min(max(1.0 - f, 0.0), 1.0))


class Robotiq2F85:
    """A 2F-85 on a serial port (Modbus RTU).

    Args:
        port: serial device (``/dev/ttyUSB0``, or a pty from socat for the UR tool flange).
        slave_id: Modbus slave id (9 by default).
        speed, force: 0..255 each (manual: 0 slowest/weakest).
        timeout_s: serial read timeout, s.
    Raises:
        RobotiqError: activation failed or timed out, or the gripper reported a fault.
    """

    def __init__(self, port: str, slave_id: int = SLAVE_ID, speed: int = 255, force: int = 150, timeout_s: float = 0.2):
        import minimalmodbus

        self.inst = minimalmodbus.Instrument(port, slave_id, mode=minimalmodbus.MODE_RTU)
        self.inst.serial.baudrate = 115200
        self.inst.serial.bytesize, self.inst.serial.parity, self.inst.serial.stopbits = 8, "N", 1
        self.inst.serial.timeout = timeout_s
        self.inst.clear_buffers_before_each_transaction = True
        self.speed, self.force = int(speed), int(force)
        self.lock = threading.Lock()

    def _write(self, action: int, position: int = 0) -> None:
        regs = [(action & 0xFF) << 8, position & 0xFF, ((self.speed & 0xFF) << 8) | (self.force & 0xFF)]
        with self.lock:
            self.inst.write_registers(OUT_REG, regs)

    def status(self) -> GripperStatus:
        """Read the 3 status registers."""
        import minimalmodbus

        try:
            with self.lock:
                regs = self.inst.read_registers(IN_REG, 3, functioncode=3)
        except (OSError, minimalmodbus.ModbusException) as e:
            raise RobotiqError(f"the gripper did not answer: {e}") from None
        return GripperStatus(bytes(b for r in regs for b in (r >> 8, r & 0xFF)))

    def activate(self, timeout_s: float = 5.0) -> None:
        """Reset (rACT 0), then activate (rACT 1) and wait for gSTA = 3 (the fingers open and close once)."""
        self._write(0x00)
        self._write(0x01)
        deadline = time.monotonic() + timeout_s
        while True:
            st = self.status()
            if st.fault_text and st.fault not in (0x05,):
                raise RobotiqError(f"activation: {st.fault_text}")
            if st.activation == 3:
                return
            if time.monotonic() > deadline:
                raise RobotiqError(f"activation did not complete within {timeout_s:.0f} s (gSTA {st.activation})")
            time.sleep(0.05)

    def move(self, position: int) -> None:
        """Go to ``position`` (0 open .. 255 closed) at the configured speed and force (rACT, rGTO)."""
        self._write(0x09, max(0, min(255, int(position))))

    def move_width(self, width_m: float) -> None:
        """Go to an opening of ``width_m`` (m), 0 .. 0.085."""
        frac = min(max(width_m / STROKE_M, 0.0), 1.0)
        self.move(round(255 * (1.0 - frac)))

    def wait(self, timeout_s: float = 3.0) -> GripperStatus:
        """Until the fingers stop (gOBJ != 0); raises on a fault."""
        deadline = time.monotonic() + timeout_s
        while True:
            st = self.status()
            if st.fault_text:
                raise RobotiqError(st.fault_text)
            if st.object != 0:
                return st
            if time.monotonic() > deadline:
                raise RobotiqError(f"fingers still moving after {timeout_s:.0f} s")
            time.sleep(0.02)

    def close(self) -> None:
        try:
            self.inst.serial.close()
        except Exception:  # noqa: BLE001
            pass
