"""``robot-stack`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ConfigError


def _cmd_up(args: argparse.Namespace) -> int:
    from .launcher import up

    only = args.only.split(",") if args.only else None
    return up(args.config, duration_s=args.duration, only=only)


def _cmd_check(args: argparse.Namespace) -> int:
    from .config import load_config

    cfg = load_config(args.config)
    print(f"{args.config}: OK ({len(cfg.nodes)} nodes: {', '.join(f'{n} [{c.kind}]' for n, c in cfg.nodes.items())})")
    return 0


def _cmd_kinds(args: argparse.Namespace) -> int:
    from .nodes.registry import KINDS, node_class

    for kind in sorted(KINDS):
        cls = node_class(kind)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{kind:12s} {doc}")
        for name, f in cls.Params.model_fields.items():
            default = "required" if f.is_required() else repr(f.default)
            print(f"    {name}: {f.annotation!s} = {default}")
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    from .security import generate_keys

    out = generate_keys(args.dir, tuple(args.names))
    for name, path in out.items():
        print(f"{name}: {path} (public: {path.with_suffix('.key')})")
    print(f"authorized client keys: {Path(args.dir) / 'authorized_clients'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="robot-stack", description="Real-robot visuomotor control stack")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("up", help="start every node of a setup config and supervise them")
    p.add_argument("config", type=Path)
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--only", default=None, help="comma-separated node names to start")
    p.set_defaults(fn=_cmd_up)

    p = sub.add_parser("check", help="validate a setup config without starting anything")
    p.add_argument("config", type=Path)
    p.set_defaults(fn=_cmd_check)

    p = sub.add_parser("kinds", help="list node kinds and their parameters")
    p.set_defaults(fn=_cmd_kinds)

    p = sub.add_parser("keys", help="CURVE key management")
    ks = p.add_subparsers(dest="keys_cmd", required=True)
    g = ks.add_parser("generate", help="write server/client CURVE certificates into DIR")
    g.add_argument("dir", type=Path)
    g.add_argument("--names", nargs="+", default=["server", "client"])
    g.set_defaults(fn=_cmd_keys)

    p = sub.add_parser("demo", help="the main job on the simulated robot")
    p.add_argument("--quick", action="store_true", help="short run that proves the path (CI)")
    p.set_defaults(fn=_cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
