"""The RTDE wire format (Universal Robots Real-Time Data Exchange, protocol version 2).

Facts from UR's "Real-Time Data Exchange (RTDE) Guide" (support article 22229): every message
is ``uint16 size`` (header included), ``uint8 type``, payload; all numbers big-endian. The client
negotiates the protocol version (``V``), asks the controller version (``v``), sets up one output
recipe (``O``: double frequency, then comma-separated variable names; reply: recipe id and the
variables' types, ``NOT_FOUND`` for an unknown name) and input recipes (``I``: names; reply: id
and types, ``IN_USE`` for a register another client writes), starts (``S``) and pauses (``P``)
synchronization; data packages (``U``) carry a recipe id and the values in recipe order.

This module is pure (no sockets): the emulator (:mod:`robot_stack.drivers.ur_emulator`) and the
tests use it; the driver talks RTDE through ``ur_rtde``.
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

import struct

REQUEST_PROTOCOL_VERSION = ord("V")
GET_URCONTROL_VERSION = ord("v")
TEXT_MESSAGE = ord("M")
DATA_PACKAGE = ord("U")
SETUP_OUTPUTS = ord("O")
SETUP_INPUTS = ord("I")
START = ord("S")
PAUSE = ord("P")

#: RTDE type name -> struct format (big-endian)
TYPES = {
    "BOOL": "?",
    "UINT8": "B",
    "UINT32": "I",
    "UINT64": "Q",
    "INT32": "i",
    "DOUBLE": "d",
    "VECTOR3D": "3d",
    "VECTOR6D": "6d",
    "VECTOR6INT32": "6i",
    "VECTOR6UINT32": "6I",
}

_V6 = "VECTOR6D"
#: controller outputs (RTDE guide, "Field names and associated types", outputs) that the
#: emulator serves; any other name is answered NOT_FOUND, as the controller does for a typo
OUTPUTS: dict[str, str] = {
    "timestamp": "DOUBLE",
    "target_q": _V6,
    "target_qd": _V6,
    "target_qdd": _V6,
    "target_current": _V6,
    "target_moment": _V6,
    "actual_q": _V6,
    "actual_qd": _V6,
    "actual_current": _V6,
    "joint_control_output": _V6,
    "actual_TCP_pose": _V6,
    "actual_TCP_speed": _V6,
    "actual_TCP_force": _V6,
    "target_TCP_pose": _V6,
    "target_TCP_speed": _V6,
    "actual_digital_input_bits": "UINT64",
    "joint_temperatures": _V6,
    "actual_execution_time": "DOUBLE",
    "robot_mode": "INT32",
    "joint_mode": "VECTOR6INT32",
    "safety_mode": "INT32",
    "safety_status": "INT32",
    "actual_tool_accelerometer": "VECTOR3D",
    "speed_scaling": "DOUBLE",
    "target_speed_fraction": "DOUBLE",
    "actual_momentum": "DOUBLE",
    "actual_main_voltage": "DOUBLE",
    "actual_robot_voltage": "DOUBLE",
    "actual_robot_current": "DOUBLE",
    "actual_joint_voltage": _V6,
    "actual_digital_output_bits": "UINT64",
    "runtime_state": "UINT32",
    "elbow_position": "VECTOR3D",
    "elbow_velocity": "VECTOR3D",
    "robot_status_bits": "UINT32",
    "safety_status_bits": "UINT32",
    "analog_io_types": "UINT32",
    "standard_analog_input0": "DOUBLE",
    "standard_analog_input1": "DOUBLE",
    "standard_analog_output0": "DOUBLE",
    "standard_analog_output1": "DOUBLE",
    "io_current": "DOUBLE",
    "tool_mode": "UINT32",
    "tool_analog_input_types": "UINT32",
    "tool_analog_input0": "DOUBLE",
    "tool_analog_input1": "DOUBLE",
    "tool_output_voltage": "INT32",
    "tool_output_current": "DOUBLE",
    "tool_temperature": "DOUBLE",
    "tcp_force_scalar": "DOUBLE",
    "output_bit_registers0_to_31": "UINT32",
    "output_bit_registers32_to_63": "UINT32",
    "input_bit_registers0_to_31": "UINT32",
    "input_bit_registers32_to_63": "UINT32",
    "payload": "DOUBLE",
    "payload_cog": "VECTOR3D",
    "payload_inertia": _V6,
    "script_control_line": "UINT32",
    "ft_raw_wrench": _V6,
    "joint_position_deviation_ratio": "DOUBLE",
    "collision_detection_ratio": "DOUBLE",
    "actual_tool_flange_pose": _V6,
    **{f"output_int_register_{i}": "INT32" for i in range(48)},
    **{f"output_double_register_{i}": "DOUBLE" for i in range(48)},
    **{f"output_bit_register_{i}": "BOOL" for i in range(64, 128)},
    **{f"input_int_register_{i}": "INT32" for i in range(48)},
    **{f"input_double_register_{i}": "DOUBLE" for i in range(48)},
    **{f"input_bit_register_{i}": "BOOL" for i in range(64, 128)},
}

#: controller inputs a client may write (RTDE guide, inputs)
INPUTS: dict[str, str] = {
    "speed_slider_mask": "UINT32",
    "speed_slider_fraction": "DOUBLE",
    "standard_digital_output_mask": "UINT8",
    "standard_digital_output": "UINT8",
    "configurable_digital_output_mask": "UINT8",
    "configurable_digital_output": "UINT8",
    "tool_digital_output_mask": "UINT8",
    "tool_digital_output": "UINT8",
    "standard_analog_output_mask": "UINT8",
    "standard_analog_output_type": "UINT8",
    "standard_analog_output_0": "DOUBLE",
    "standard_analog_output_1": "DOUBLE",
    "input_bit_registers0_to_31": "UINT32",
    "input_bit_registers32_to_63": "UINT32",
    "external_force_torque": _V6,
    **{f"input_int_register_{i}": "INT32" for i in range(48)},
    **{f"input_double_register_{i}": "DOUBLE" for i in range(48)},
    **{f"input_bit_register_{i}": "BOOL" for i in range(64, 128)},
}


class RTDEProtocolError(RobotStackError, ValueError):
    """A malformed RTDE message."""


def frame(msg_type: int, payload: bytes = b"") -> bytes:
    """One message: header (uint16 size incl. the 3-byte header, uint8 type) + payload."""
    if len(payload) + 3 > 0xFFFF:
        raise RTDEProtocolError(f"payload of {len(payload)} bytes does not fit an RTDE message")
    return struct.pack(">HB", len(payload) + 3, msg_type) + payload


def recipe_format(types: list[str]) -> struct.Struct:
    """The struct of a data package's values for a recipe's types (after the recipe id byte)."""
    try:
        return struct.Struct(">" + "".join(TYPES[t] for t in types))
    except KeyError as e:
        raise RTDEProtocolError(f"unknown RTDE type {e.args[0]!r}") from None


def flatten(values: list) -> list:
    """Recipe values (scalars and vectors) as the flat list a :func:`recipe_format` packs."""
    out: list = []
    for v in values:
        if isinstance(v, (list, tuple)) or hasattr(v, "__len__"):
            out.extend(float(x) if not isinstance(x, (int, bool)) else x for x in v)
        else:
            out.append(v)
    return out


def unflatten(types: list[str], flat: tuple) -> list:
    """Unpacked values back to one entry per variable (vectors as lists)."""
    out, i = [], 0
    for t in types:
        n = {"VECTOR3D": 3, "VECTOR6D": 6, "VECTOR6INT32": 6, "VECTOR6UINT32": 6}.get(t, 1)
        out.append(list(flat[i : i + n]) if n > 1 else flat[i])
        i += n
    return out


def text_message(text: str, source: str = "emulator", level: int = 1) -> bytes:
    """A v2 text message (``M``): length-prefixed message and source, warning level
    (0 exception, 1 error, 2 warning, 3 info)."""
    m, s = text.encode()[:255], source.encode()[:255]
    return frame(TEXT_MESSAGE, bytes([len(m)]) + m + bytes([len(s)]) + s + bytes([level]))
