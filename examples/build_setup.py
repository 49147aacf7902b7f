"""Build a setup config in code, validate it like `robot-stack check`, and write it as YAML.

    python3 examples/build_setup.py [OUT.yaml]

The setup: the simulated Panda, its arm node with tighter limits than the defaults, and a scene
camera. `config_from_dict` validates every node's params with its kind's model and the cross-node
references (a controller's arm must be an arm node, ...); an error names the key, the value and the
reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from robot_stack.runtime.config import ConfigError, config_from_dict


def build() -> dict:
    """The setup as a plain mapping: exactly what a YAML file under configs/ holds."""
    return {
        "name": "my_lab",
        "nodes": {
            "sim": {"kind": "sim_world", "params": {"rate_hz": 500, "seed": 0}},
            "arm": {
                "kind": "arm",
                "params": {
                    "driver": {"type": "sim"},
                    "safety": {"max_joint_vel": 1.0, "max_jump_ee": 0.05, "heartbeat_timeout_s": 0.5},
                },
            },
            "cam_scene": {
                "kind": "camera",
                "nice": 10,
                "params": {"driver": {"type": "sim", "camera": "scene"}, "camera_id": "scene", "rate_hz": 15},
            },
        },
    }


def main(argv: list[str]) -> int:
    data = build()
    try:
        cfg = config_from_dict(data, where="my_lab")
    except ConfigError as e:
        print(f"invalid setup: {e}", file=sys.stderr)
        return 2
    for name, node in cfg.nodes.items():
        print(f"{name}: {node.kind}")
    safety = cfg.nodes["arm"].typed.safety
    print(f"arm limits: max_joint_vel {safety.max_joint_vel} rad/s, max_jump_ee {safety.max_jump_ee} m")
    text = yaml.safe_dump(data, sort_keys=False)
    if argv:
        Path(argv[0]).write_text(text)
        print(f"wrote {argv[0]}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
