"""``robot-stack`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from robot_stack.errors import RobotStackError
from robot_stack.runtime.config import ConfigError
from robot_stack.comm.messages import RobotState


def _cmd_up(args: argparse.Namespace) -> int:
    from robot_stack.runtime.launcher import up

    only = args.only.split(",") if args.only else None
    return up(args.config, duration_s=args.duration, only=only)


def _cmd_check(args: argparse.Namespace) -> int:
    import yaml

    from robot_stack.runtime.config import apply_sets, config_from_dict, resolve_setup

    data, chain = resolve_setup(args.config)
    data = apply_sets(data, args.set)
    cfg = config_from_dict(data, where=str(args.config), base_dir=Path(args.config).resolve().parent)
    if args.explain:
        print("extends chain (each file overrides the next): " + " <- ".join(str(p) for p in chain))
        for expr in args.set:
            print(f"--set {expr}")
        print(yaml.safe_dump(data, sort_keys=False), end="")
    print(f"{args.config}: OK ({len(cfg.nodes)} nodes: {', '.join(f'{n} [{c.kind}]' for n, c in cfg.nodes.items())})")
    for line in _collision_warnings(cfg):
        print(f"warning: {line}")
    return 0


def _collision_warnings(cfg) -> list[str]:
    """One line per arm node whose collision checks are on while its robot model has no collision
    geometry (visual meshes only): the arm node would start and check nothing."""
    from robot_stack.control.collision import CollisionChecker
    from robot_stack.control.robot_model import RobotModel

    out = []
    for name, nc in cfg.nodes.items():
        if nc.kind != "arm":
            continue
        p = nc.typed
        coll = p.effective_collision(cfg)
        if coll.enabled:
            robot = p.robot_name(cfg)
            if not CollisionChecker(RobotModel.load(robot), coll).pairs:
                out.append(
                    f"nodes.{name}.params.collision: enabled, but the robot model {robot!r} has no collision "
                    "geometry: nothing would be checked (add collision geoms to its description, or set "
                    "collision.enabled: false)"
                )
    return out


def _cmd_doctor(args: argparse.Namespace) -> int:
    from robot_stack.apps.doctor import run_doctor

    return run_doctor(args.config)


def _cmd_graph(args: argparse.Namespace) -> int:
    from robot_stack.runtime.config import load_config
    from robot_stack.runtime.graph import render

    text = render(load_config(args.config), args.format)
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def _cmd_kinds(args: argparse.Namespace) -> int:
    from robot_stack.runtime.devices import FAMILIES
    from robot_stack.runtime.kinds import KINDS, node_class

    def fields(model, skip=()):
        for name, f in model.model_fields.items():
            if name in skip:
                continue
            default = (
                "required"
                if f.is_required()
                else ("(default factory)" if f.default_factory is not None else repr(f.default))
            )
            print(f"    {name}: {f.annotation!s} = {default}")

    for kind in sorted(KINDS):
        cls = node_class(kind)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{kind:12s} {doc}")
        fields(cls.Params)
    for kind, reg in FAMILIES.items():
        print(f"\n{reg.family}s ({kind} nodes, params.{reg.key}: {{type: ..., ...}}):")
        for t in sorted(reg.types):
            c = reg.config_class(t)
            doc = (c.__doc__ or "").strip().splitlines()[0]
            extra = f" [extra: {c.extra}]" if c.extra else ""
            print(f"  {t:10s} {doc}{extra}")
            fields(c, skip=("type",))
    return 0


def _cmd_robots(args: argparse.Namespace) -> int:
    from robot_stack.control.robot_model import RobotModel, available_robots

    names = [args.robot] if args.robot else list(available_robots())
    for name in names:
        print(RobotModel.load(name).describe())
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    from robot_stack.comm.security import generate_keys

    out = generate_keys(args.dir, tuple(args.names))
    for name, path in out.items():
        print(f"{name}: {path} (public: {path.with_suffix('.key')})")
    print(f"authorized client keys: {Path(args.dir) / 'authorized_clients'}")
    return 0


def _stack(config: Path):
    from robot_stack.runtime.config import load_config
    from robot_stack.runtime.launcher import default_run_dir

    cfg = load_config(config)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    if not (run_dir / "launcher.pid").exists():
        raise SystemExit(
            f"stack {cfg.name!r} is not running (no {run_dir / 'launcher.pid'}); start it with: robot-stack up {config}"
        )
    return cfg, run_dir


def _cmd_move(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from robot_stack.runtime.arm_client import ArmClient
    from robot_stack.control.paths import straight_line
    from robot_stack.runtime.clock import now_ns

    cfg, run_dir = _stack(args.config)
    sub = None
    from robot_stack.comm.transport import Subscriber

    sub = Subscriber([cfg.pub_endpoint(args.arm, run_dir)], (RobotState.TOPIC,), name="cli-move")
    client = ArmClient(cfg, run_dir, arm=args.arm, source="cli_move")
    try:
        st = sub.wait_for(RobotState.TOPIC, 5.0)
        if st is None:
            print("no robot/state from the arm node within 5 s", file=sys.stderr)
            return 1
        home = np.array(st.ee_pose)
        goal = home.copy()
        goal[:3] = args.to
        legs = [(home, goal)] + ([(goal, home)] if args.back else [])
        for a, b in legs:
            stamps, poses = straight_line(a, b, now_ns(), args.speed)
            client.send_schedule(stamps, poses, space="ee")
            time.sleep((stamps[-1] - now_ns()) / 1e9 + args.settle)
            st = sub.latest(RobotState.TOPIC)
            err = np.linalg.norm(np.array(st.ee_pose[:3]) - b[:3])
            print(
                f"reached {np.round(st.ee_pose[:3], 4).tolist()} m (target {np.round(b[:3], 4).tolist()}, "
                f"error {err * 1e3:.1f} mm, mode {st.mode}, safety events {st.safety_events})"
            )
        return 0
    finally:
        client.close()
        sub.close()


def _cmd_estop(args: argparse.Namespace) -> int:
    from robot_stack.runtime.arm_client import ArmClient

    cfg, run_dir = _stack(args.config)
    client = ArmClient(cfg, run_dir, arm=args.arm, source="cli_estop", heartbeat_hz=0)
    try:
        if args.release:
            client.release()
            print("e-stop released")
        elif args.recover:
            client.recover()
            print("recovery requested (the arm node's log says how it went)")
        else:
            client.estop(args.reason)
            print("E-STOP sent")
    finally:
        client.close()
    return 0


def _cmd_calibrate_hand_eye(args: argparse.Namespace) -> int:
    import numpy as np

    from robot_stack.calibration.hand_eye import CalibrationError
    from robot_stack.calibration.procedure import hand_eye

    cfg, run_dir = _stack(args.config)
    try:
        res = hand_eye(
            cfg,
            run_dir,
            args.camera,
            args.mode,
            n_poses=args.poses,
            seed=args.seed,
            center=None if args.center is None else np.array(args.center),
            rot_deg=args.rot_deg,
            write=not args.dry_run,
        )
    except CalibrationError as e:
        print(f"calibration failed: {e}", file=sys.stderr)
        return 1
    print(np.array2string(res.T, precision=4, suppress_small=True))
    return 0


def _cmd_calibrate_intrinsics(args: argparse.Namespace) -> int:
    import numpy as np

    from robot_stack.calibration.hand_eye import CalibrationError
    from robot_stack.calibration.procedure import intrinsics

    cfg, run_dir = _stack(args.config)
    try:
        check, _, _ = intrinsics(
            cfg,
            run_dir,
            args.camera,
            args.board,
            n_poses=args.poses,
            center=None if args.center is None else np.array(args.center),
            write=not args.dry_run,
        )
    except CalibrationError as e:
        print(f"calibration failed: {e}", file=sys.stderr)
        return 1
    return 0 if check.ok else 3


def _cmd_calibrate_latency(args: argparse.Namespace) -> int:
    import numpy as np

    from robot_stack.calibration import store
    from robot_stack.calibration.hand_eye import CalibrationError
    from robot_stack.calibration.latency import measure
    from robot_stack.calibration.procedure import board_of, camera_id_of

    cfg, run_dir = _stack(args.config)
    try:
        board = board_of(cfg, args.board)
    except CalibrationError as e:
        print(f"calibration failed: {e}", file=sys.stderr)
        return 1
    cam = camera_id_of(cfg, args.camera)
    T_gc = (store.load(cfg.calibration.file).get("cameras") or {}).get(cam, {}).get("T_gripper_camera")
    try:
        res = measure(
            cfg,
            run_dir,
            args.camera,
            board,
            center=None if args.center is None else np.array(args.center),
            moving="camera" if args.board == "table_board" else "board",
            T_gripper_camera=None if T_gc is None else np.array(T_gc),
        )
    except CalibrationError as e:
        print(f"calibration failed: {e}", file=sys.stderr)
        return 1
    if not args.dry_run:
        store.update(cfg.calibration.file, "cameras", cam, {"latency_s": round(res["camera_latency_s"], 4)})
        store.update(
            cfg.calibration.file, "robot", "latency", {"command_latency_s": round(res["command_latency_s"], 4)}
        )
        print(f"written to {cfg.calibration.file}")
    return 0


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from robot_stack.policies.generative import export_onnx, load_checkpoint, onnx_paths

    import shutil

    model, _ = load_checkpoint(args.checkpoint)
    out = (args.out or args.checkpoint.with_suffix(".onnx")).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(model, out)
    if out.with_suffix(".safetensors") != args.checkpoint.resolve():
        shutil.copyfile(args.checkpoint, out.with_suffix(".safetensors"))  # the ONNX policy reads its config there
    enc, den = onnx_paths(out)
    print(f"wrote {enc} and {den} (serve with: kind: policy, params: {{backend: {{type: onnx, path: {out}}}}})")
    return 0


def _cmd_collect(args: argparse.Namespace) -> int:
    from robot_stack.apps.collect import run_collect

    res = run_collect(
        args.config,
        args.out,
        args.episodes,
        max_episode_s=args.max_episode_s,
        seed=args.seed,
        verbose=args.verbose,
        view=args.view,
    )
    print(
        f"{len(res.saved)} episodes saved in {args.out}, {res.discarded} discarded, {res.dropped:.0f} samples dropped"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from robot_stack.runtime.config import load_yaml
    from robot_stack.data.dataset import list_episodes
    from robot_stack.policies.training import TrainSettings, train

    from pydantic import ValidationError

    from robot_stack.runtime.config import format_validation_error

    data = load_yaml(args.config) if args.config else {}
    if args.steps:
        data["steps"] = args.steps
    try:
        settings = TrainSettings.model_validate(data or {})
    except ValidationError as e:
        raise ConfigError(f"{args.config}:\n{format_validation_error(e)}") from None
    eps = list_episodes(args.episodes)
    if not eps:
        print(f"no finished episodes in {args.episodes}", file=sys.stderr)
        return 1
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:  # this process launches the ranks
        import subprocess

        from robot_stack.policies.distributed import torchrun_argv

        if settings.batch_size % args.nproc:
            raise ConfigError(f"batch_size {settings.batch_size} does not split over --nproc {args.nproc} ranks")
        argv = [
            "train",
            *([str(args.config)] if args.config else []),
            "--episodes",
            str(args.episodes),
            "--out",
            str(args.out),
            *(["--steps", str(args.steps)] if args.steps else []),
            *(["--resume"] if args.resume else []),
        ]
        return subprocess.call(torchrun_argv(args.nproc, argv))
    summary = train(settings, eps, args.out, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "loss_curve"}, indent=2))
        print(f"wrote {args.out}")
    return 0


def _cmd_train_fast(args: argparse.Namespace) -> int:
    from robot_stack.data.dataset import list_episodes
    from robot_stack.policies.fast_training import train_fast

    eps = list_episodes(args.episodes)
    if not eps:
        print(f"no finished episodes in {args.episodes}", file=sys.stderr)
        return 1
    if not args.policy.is_file():
        raise ConfigError(f"no slow policy checkpoint {args.policy}")
    summary = train_fast(args.policy, eps, args.out, rate_hz=args.rate_hz, steps=args.steps)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from robot_stack.apps.deploy import run_deploy

    res = run_deploy(
        args.config,
        args.policy,
        args.episodes,
        strategy=args.strategy,
        max_episode_s=args.max_episode_s,
        seed=args.seed,
        verbose=args.verbose,
        view=args.view,
        fast=args.fast,
        endpoint=args.policy_endpoint,
    )
    return 0 if res.success else 1


def _cmd_replay(args: argparse.Namespace) -> int:
    from robot_stack.apps.replay import run_replay

    run_replay(args.config, args.episode, verbose=args.verbose)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from robot_stack.data.dataset import list_episodes
    from robot_stack.data.lerobot import export_lerobot

    eps = list_episodes(args.episodes)
    out = export_lerobot(eps, args.out, fps=args.fps, cameras=args.cameras)
    print(f"wrote LeRobot v3.0 dataset {out} ({len(eps)} episodes at {args.fps:g} fps)")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from robot_stack.data.lerobot import import_lerobot

    paths = import_lerobot(args.dataset, args.out, require_videos=args.require_videos, log=print)
    print(f"imported {len(paths)} episodes into {args.out}")
    return 0


def _cmd_calibrate_servos(args: argparse.Namespace) -> int:
    import numpy as np

    from robot_stack.calibration import servos

    ids = list(args.ids) + ([args.gripper_id] if args.gripper_id is not None else [])
    signs = args.signs or [1] * len(args.ids)
    if len(signs) != len(args.ids) or any(s not in (-1, 1) for s in signs):
        raise ValueError(f"--signs: one +1/-1 per joint id ({len(args.ids)})")
    if args.bus == "feetech":
        from robot_stack.drivers.feetech import FeetechBus as Bus
    else:
        from robot_stack.drivers.dynamixel import DynamixelBus as Bus
    bus = Bus(args.port, ids, args.baudrate)
    try:
        bus.set_torque(False)  # moved by hand
        jm, ranges = servos.record(bus, len(args.ids), signs, args.gripper_id is not None)
    finally:
        bus.close()
    servos.save(args.file, args.section, args.name, jm, ranges)
    print(
        f"written to {args.file} ({args.section}.{args.name}): offsets {np.round(jm.offsets, 3).tolist()} rad, "
        f"gripper closed {jm.gripper_closed:.3f} / open {jm.gripper_open:.3f} rad"
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from robot_stack.apps.demo import run_demo, run_square

    if args.square:
        return run_square(quick=args.quick, verbose=args.verbose, config=args.config)
    if args.config is not None:
        raise ValueError("--config goes with --square (the main job runs on the task's own config)")
    res = run_demo(quick=args.quick, verbose=args.verbose, workdir=args.workdir, task=args.task)
    return 0 if res.deploy.policy_waypoints > 0 else 1


def _strategies() -> tuple[str, ...]:
    """The execution strategies the controller's setup model accepts (its ``strategy`` field)."""
    import typing

    from robot_stack.nodes.controller_params import ControllerParams

    return typing.get_args(ControllerParams.model_fields["strategy"].annotation)


def _setup_args(p: argparse.ArgumentParser) -> None:
    """The setup argument and ``--set`` of every command that takes a setup."""
    p.add_argument("config", type=Path, help="setup config (YAML; may extend another)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override one setup key, e.g. nodes.arm.params.rate_hz=250 (repeatable; the value is YAML)",
    )


def _resolve_sets(args: argparse.Namespace) -> None:
    """A command given ``--set`` runs on the setup written flat with the overrides applied, in a
    folder removed at exit: every node process then reads the same setup."""
    if not getattr(args, "set", None) or args.cmd == "check":  # check applies them itself
        return
    if args.config is None:
        from robot_stack.runtime.config import ConfigError

        raise ConfigError("--set changes a setup: name one")
    import atexit
    import shutil
    import tempfile

    from robot_stack.runtime.config import write_resolved

    folder = tempfile.mkdtemp(prefix="rs-setup-")
    atexit.register(shutil.rmtree, folder, True)
    args.config = write_resolved(args.config, args.set, folder)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="robot-stack", description="Real-robot visuomotor control stack")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("up", help="start every node of a setup config and supervise them")
    _setup_args(p)
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--only", default=None, help="comma-separated node names to start")
    p.set_defaults(fn=_cmd_up)

    p = sub.add_parser("check", help="validate a setup config without starting anything")
    _setup_args(p)
    p.add_argument("--explain", action="store_true", help="print the extends chain and the setup as it resolves")
    p.set_defaults(fn=_cmd_check)

    p = sub.add_parser("doctor", help="preflight: is every device of this host (and of a setup) there? starts nothing")
    p.add_argument("config", type=Path, nargs="?", default=None, help="a setup to check device by device")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override one setup key")
    p.set_defaults(fn=_cmd_doctor)

    p = sub.add_parser("graph", help="print a setup's dataflow: which node sends what to which")
    _setup_args(p)
    p.add_argument(
        "--format",
        choices=["text", "dot", "mermaid"],
        default="text",
        help="text (one line per link), Graphviz DOT or a Mermaid flowchart",
    )
    p.add_argument("--out", type=Path, default=None, help="write to this file instead of printing")
    p.set_defaults(fn=_cmd_graph)

    p = sub.add_parser("kinds", help="list node kinds and their parameters")
    p.set_defaults(fn=_cmd_kinds)

    p = sub.add_parser("robots", help="list the shipped robot models (or load one: a name or a description YAML)")
    p.add_argument("robot", nargs="?", default=None)
    p.set_defaults(fn=_cmd_robots)

    p = sub.add_parser("keys", help="CURVE key management")
    ks = p.add_subparsers(dest="keys_cmd", required=True)
    g = ks.add_parser("generate", help="write server/client CURVE certificates into DIR")
    g.add_argument("dir", type=Path)
    g.add_argument("--names", nargs="+", default=["server", "client"])
    g.set_defaults(fn=_cmd_keys)

    p = sub.add_parser("move", help="move the TCP of a running stack's arm to a position (and back)")
    _setup_args(p)
    p.add_argument(
        "--to",
        type=float,
        nargs=3,
        required=True,
        metavar=("X", "Y", "Z"),
        help="target TCP position in the base frame, m (orientation kept)",
    )
    p.add_argument("--back", action="store_true", help="return to the start afterwards")
    p.add_argument("--speed", type=float, default=0.1, help="TCP speed, m/s")
    p.add_argument("--settle", type=float, default=0.5, help="wait after each leg, s")
    p.add_argument("--arm", default="arm", help="arm node name")
    p.set_defaults(fn=_cmd_move)

    p = sub.add_parser("estop", help="e-stop a running stack's arm (or --release it)")
    _setup_args(p)
    p.add_argument("--release", action="store_true")
    p.add_argument(
        "--recover",
        action="store_true",
        help="recover the robot from a fault (UR: unlock a protective stop, restart the script)",
    )
    p.add_argument("--reason", default="cli")
    p.add_argument("--arm", default="arm")
    p.set_defaults(fn=_cmd_estop)

    p = sub.add_parser("calibrate", help="calibration procedures on a running stack")
    cs = p.add_subparsers(dest="calib_cmd", required=True)
    h = cs.add_parser("hand-eye", help="drive the arm through a pose set, solve and store hand-eye extrinsics")
    _setup_args(h)
    h.add_argument("--camera", required=True, help="camera node name")
    h.add_argument("--mode", choices=["eye_in_hand", "eye_to_hand"], required=True)
    h.add_argument("--poses", type=int, default=15)
    h.add_argument("--seed", type=int, default=0)
    h.add_argument("--rot-deg", type=float, default=15.0, help="rotation range about each tool axis, deg")
    h.add_argument(
        "--center",
        type=float,
        nargs=3,
        default=None,
        metavar=("X", "Y", "Z"),
        help="nominal TCP position (default: where the arm is)",
    )
    h.add_argument("--dry-run", action="store_true", help="do not write the calibration file")
    h.set_defaults(fn=_cmd_calibrate_hand_eye)
    ci = cs.add_parser("intrinsics", help="check a camera's intrinsics against board views and calibrate them")
    _setup_args(ci)
    ci.add_argument("--camera", required=True)
    ci.add_argument("--board", choices=["table_board", "gripper_board"], default="table_board")
    ci.add_argument("--poses", type=int, default=12)
    ci.add_argument("--center", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"))
    ci.add_argument("--dry-run", action="store_true")
    ci.set_defaults(fn=_cmd_calibrate_intrinsics)
    sv = cs.add_parser("servos", help="zero offsets and ranges of a servo arm (leader or SO-101 follower), by hand")
    sv.add_argument("--bus", choices=["feetech", "dynamixel"], required=True)
    sv.add_argument("--port", required=True)
    sv.add_argument("--ids", type=int, nargs="+", required=True, help="joint servo ids, in order")
    sv.add_argument("--gripper-id", type=int, default=None)
    sv.add_argument("--signs", type=int, nargs="+", default=None, help="+1/-1 per joint (default all +1)")
    sv.add_argument("--baudrate", type=int, default=1_000_000)
    sv.add_argument("--file", type=Path, required=True, help="calibration file")
    sv.add_argument(
        "--section",
        choices=["leaders", "arms"],
        required=True,
        help="leaders (a teleop leader) or arms (a follower's arm driver)",
    )
    sv.add_argument("--name", required=True, help="its entry, e.g. so101_leader or so101_follower")
    sv.set_defaults(fn=_cmd_calibrate_servos)
    la = cs.add_parser("latency", help="camera and robot command latency by cross-correlating motion")
    _setup_args(la)
    la.add_argument("--camera", required=True, help="camera node name")
    la.add_argument(
        "--board", choices=["table_board", "gripper_board"], default="table_board", help="the board this camera watches"
    )
    la.add_argument("--center", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"))
    la.add_argument("--dry-run", action="store_true")
    la.set_defaults(fn=_cmd_calibrate_latency)

    p = sub.add_parser("export-onnx", help="export a policy checkpoint (.safetensors) to ONNX")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, default=None, help="X.onnx name (default: beside the checkpoint)")
    p.set_defaults(fn=_cmd_export_onnx)

    p = sub.add_parser("collect", help="collect teleoperated demonstrations (teleop + recorder)")
    _setup_args(p)
    p.add_argument("--out", type=Path, default=Path("episodes"), help="dataset folder")
    p.add_argument("--episodes", type=int, default=10, help="episodes to save")
    p.add_argument("--max-episode-s", type=float, default=30.0, help="an episode running longer is discarded")
    p.add_argument("--seed", type=int, default=None, help="sim: seed of the cube placement")
    p.add_argument("--verbose", action="store_true", help="stream every node's log")
    p.add_argument(
        "--view",
        default=None,
        metavar="spawn|URL|FILE.rrd",
        help="live view in rerun: a window, a viewer at URL, or a recording file",
    )
    p.set_defaults(fn=_cmd_collect)

    p = sub.add_parser("train", help="train a visuomotor policy on recorded episodes")
    p.add_argument(
        "config", type=Path, nargs="?", default=None, help="training settings YAML (default settings if omitted)"
    )
    p.add_argument("--episodes", type=Path, required=True, help="dataset folder")
    p.add_argument("--out", type=Path, default=Path("policy.safetensors"), help="checkpoint to write")
    p.add_argument("--steps", type=int, default=None, help="override the number of training steps")
    p.add_argument("--resume", action="store_true", help="continue from --out's last checkpoint")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="ranks (processes) for DistributedDataParallel through "
        "torchrun: gloo on CPU, NCCL on GPUs; batch_size is the global batch",
    )
    p.set_defaults(fn=_cmd_train)

    p = sub.add_parser(
        "train-fast",
        help="slow-fast control: train the fast layer that corrects a slow policy's "
        "plan from the wrist wrench (RDP-style) on recorded episodes",
    )
    p.add_argument("--policy", type=Path, required=True, help="the slow policy checkpoint (.safetensors)")
    p.add_argument("--episodes", type=Path, required=True, help="dataset folder (recorded with a wrench)")
    p.add_argument("--out", type=Path, default=Path("fast.safetensors"), help="fast-layer file to write")
    p.add_argument("--rate-hz", type=float, default=50.0, help="the fast layer's rate")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps")
    p.set_defaults(fn=_cmd_train_fast)

    p = sub.add_parser("deploy", help="run a trained policy on the robot (sim by default) for N episodes")
    _setup_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--policy", type=Path, help="checkpoint (.safetensors) or ONNX export (.onnx)")
    which.add_argument(
        "--policy-endpoint",
        metavar="URL",
        help="a policy served elsewhere (ws:// or wss://: openpi's protocol, with the controller's "
        "openpi_keys; tcp://: ours): the controller calls it and no local policy node starts",
    )
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument(
        "--strategy",
        choices=_strategies(),
        default=None,
        help="short for --set nodes.CONTROLLER.params.strategy=NAME (the setup's controller; default: the setup's)",
    )
    p.add_argument("--max-episode-s", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=None, help="sim: seed of the cube placement")
    p.add_argument(
        "--fast",
        type=Path,
        default=None,
        help="slow-fast control: a fast-layer file (robot-stack "
        "train-fast) the controller runs at its rate, correcting the plan from the wrist wrench",
    )
    p.add_argument("--verbose", action="store_true")
    p.add_argument(
        "--view",
        default=None,
        metavar="spawn|URL|FILE.rrd",
        help="live view in rerun: a window, a viewer at URL, or a recording file",
    )
    p.set_defaults(fn=_cmd_deploy)

    p = sub.add_parser("replay", help="replay a recorded episode's actions through the controller")
    _setup_args(p)
    p.add_argument("episode", type=Path)
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(fn=_cmd_replay)

    p = sub.add_parser("export", help="export native episodes to another dataset format")
    p.add_argument("episodes", type=Path, help="dataset folder of native episodes")
    p.add_argument("--format", choices=["lerobot"], default="lerobot", help="lerobot: LeRobot v3.0")
    p.add_argument("--out", type=Path, required=True, help="new dataset folder")
    p.add_argument("--fps", type=float, default=10.0, help="frame rate of the exported grid")
    p.add_argument("--cameras", nargs="*", default=None, help="camera ids (default: all)")
    p.set_defaults(fn=_cmd_export)

    p = sub.add_parser("import", help="import a LeRobot v2.1/v3.0 dataset as native episodes")
    p.add_argument("dataset", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--require-videos",
        action="store_true",
        help="refuse a dataset whose video files are missing (default: import the tabular streams)",
    )
    p.set_defaults(fn=_cmd_import)

    p = sub.add_parser("demo", help="the main job on the simulated robot")
    p.add_argument("--quick", action="store_true", help="short run that proves the path (CI)")
    p.add_argument(
        "--task",
        default="reach",
        metavar="NAME",
        help="a task of the registry (robot_stack/tasks/registry.py) with a demo setup: reach the cube (quick to "
        "learn, the default), pick (pick it and place it in the target square), bimanual (lift a bar with two arms)",
    )
    p.add_argument(
        "--square", action="store_true", help="bring-up check instead: trace a square, print tracking and timing"
    )
    p.add_argument("--config", type=Path, default=None, help="--square on this setup (default configs/sim_panda.yaml)")
    p.add_argument(
        "--workdir", type=Path, default=None, help="folder for episodes and the policy (default: a temp folder)"
    )
    p.add_argument("--verbose", action="store_true", help="stream every node's log")
    p.set_defaults(fn=_cmd_demo)
    return ap


def _one_line(e: BaseException) -> str:
    """An error as one line: its message (no traceback), its type when the message is empty."""
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg if len(msg) <= 2000 else msg[:2000] + " ..."


def main(argv: list[str] | None = None) -> int:
    """``robot-stack``: every domain error becomes one line on stderr and a non-zero exit code
    (2: config error; 1: anything else); ``--debug`` shows the traceback too."""
    args = build_parser().parse_args(argv)
    if args.debug:  # node processes log the traceback of a failed start too
        os.environ["ROBOT_STACK_DEBUG"] = "1"
    try:
        _resolve_sets(args)
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        return 130
    except ConfigError as e:
        if args.debug:
            traceback.print_exc()
        print(f"robot-stack {args.cmd}: config error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the CLI's contract: one clear line, never a traceback
        if args.debug:
            traceback.print_exc()
            if getattr(e, "log_tail", ""):
                print(f"--- last log lines of the stack ---\n{e.log_tail}", file=sys.stderr)
        hint = "" if args.debug or _is_domain_error(e) else f" ({type(e).__name__}; --debug shows where)"
        msg = getattr(e, "summary", None) or _one_line(e)
        print(f"robot-stack {args.cmd}: error: {msg}{hint}", file=sys.stderr)
        return 1


def _is_domain_error(e: BaseException) -> bool:
    """Errors whose message is the whole story for a user (no need to point at --debug): every
    :class:`~robot_stack.errors.RobotStackError`, and a missing or unreadable file."""
    return isinstance(e, (RobotStackError, FileNotFoundError, PermissionError))


if __name__ == "__main__":
    sys.exit(main())
