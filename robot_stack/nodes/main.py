"""Entry point of one node process: ``python -m robot_stack.nodes.main CONFIG NODE RUN_DIR``.

Started by the launcher; also usable by hand to run one node of a config in the foreground.
"""

from __future__ import annotations

from robot_stack.runtime.lifeline import tie_to_parent

if __name__ == "__main__":  # (not when multiprocessing's spawn re-imports this module in a child)
    tie_to_parent()  # first act, before the imports below (seconds for torch or MuJoCo)

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from robot_stack.runtime.config import ConfigError, load_config  # noqa: E402
from robot_stack.runtime.node import NodeContext, setup_logging  # noqa: E402
from robot_stack.runtime.kinds import node_class  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="robot_stack.nodes.main")
    ap.add_argument("config")
    ap.add_argument("node")
    ap.add_argument("run_dir")
    args = ap.parse_args(argv)
    setup_logging(args.node)
    try:
        cfg = load_config(args.config)
        if args.node not in cfg.nodes:
            raise ConfigError(f"{args.config}: no node named {args.node!r}")
    except ConfigError as e:
        logging.getLogger("robot_stack").error("%s", e)
        return 2
    nc = cfg.nodes[args.node]
    cls = node_class(nc.kind)
    params = nc.typed  # validated once, by load_config
    node = cls(NodeContext(args.node, cfg, Path(args.run_dir)), params)
    return node.run()


if __name__ == "__main__":
    sys.exit(main())
