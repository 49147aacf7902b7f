"""Setup configs: YAML files validated into typed (pydantic) models.

A setup config lists the nodes of one robot setup. Each node names a ``kind`` (registered in
``robot_stack.runtime.kinds``) and ``params`` validated by that kind's own model, so any typo or
bad value is caught before a single process starts. Errors name the key path, the value and the
reason::

    configs/bad.yaml: nodes.camera.params.fps = -5: Input should be greater than 0

Endpoints: every node publishes on ``ipc://<run_dir>/<node>.pub`` and, if it receives lossless
traffic, pulls on ``ipc://<run_dir>/<node>.in``, unless the node config overrides them with
``tcp://`` endpoints (cross-host; CURVE required when leaving localhost).
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from robot_stack.comm.security import CurveClient, CurveServer


class ConfigError(RobotStackError, ValueError):
    """A config file is missing, not YAML, or fails validation; the message names key, value, reason."""


class StrictModel(BaseModel):
    """Base for config models: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid")


class CurveServerConfig(StrictModel):
    secret_file: Path = Field(
        ..., description="this node's CURVE secret key file (robot-stack keys generate), mode 600"
    )
    authorized_clients_dir: Path = Field(..., description="folder of the public keys of the clients allowed to connect")

    def build(self) -> CurveServer:
        return CurveServer(self.secret_file, self.authorized_clients_dir)


class CurveClientConfig(StrictModel):
    secret_file: Path = Field(..., description="this client's CURVE secret key file")
    server_public_file: Path = Field(..., description="the server's public key file")

    def build(self) -> CurveClient:
        return CurveClient(self.secret_file, self.server_public_file)


class NodeConfig(StrictModel):
    """One node (one OS process).

    Attributes:
        kind: registered node kind (see ``robot-stack kinds``).
        params: kind-specific parameters, validated by the kind's ``Params`` model.
        pub_endpoint / in_endpoint: override the default ipc endpoints.
        curve_server: CURVE keys for this node's bound sockets (required for non-local TCP).
        curve_client: CURVE keys this node uses to connect to non-local TCP endpoints.
        critical: if True and ``on_node_exit`` is "shutdown", this node's death stops the stack.
        nice: scheduling niceness of the process (0..19); give best-effort work such as sim
            rendering a higher value so servo loops keep the CPU on a small machine.
        env: extra environment variables for the process.
        heartbeat_hz: heartbeat rate.
    """

    kind: str
    params: dict[str, Any] = Field(default_factory=dict)
    _typed: Any = PrivateAttr(default=None)
    pub_endpoint: str | None = None
    in_endpoint: str | None = None
    curve_server: CurveServerConfig | None = None
    curve_client: CurveClientConfig | None = None
    heartbeat_hz: float = Field(2.0, gt=0, le=100)
    critical: bool = True
    nice: int = Field(0, ge=0, le=19)
    env: dict[str, str] = Field(default_factory=dict)

    @property
    def typed(self):
        """The node's params validated by its kind's ``Params`` model (set by :func:`load_config`):
        read other nodes' settings here, never from the raw ``params`` dict with defaults of one's own.

        Raises:
            ConfigError: the config was not loaded by :func:`load_config`.
        """
        if self._typed is None:
            raise ConfigError(f"node of kind {self.kind!r}: typed params exist only on a config from load_config")
        return self._typed


class CalibrationConfig(StrictModel):
    """Where a setup keeps its calibration and which boards it calibrates with.

    Attributes:
        file: calibration YAML (relative paths are relative to the config file).
        table_board: the board fixed in the world (eye-in-hand), or None.
        gripper_board: the board held by the gripper (eye-to-hand), or None.
    """

    file: Path
    table_board: dict[str, Any] | None = None
    gripper_board: dict[str, Any] | None = None

    #: ``check(spec: dict) -> str | None`` for a board spec, set by ``robot_stack.calibration.board``
    #: when it is imported (the runtime layer does not import the calibration package)
    board_check: ClassVar[Any] = None

    def problems(self) -> list[str]:
        """What is wrong with the board specs (empty when nothing is, or when no check is known)."""
        check = CalibrationConfig.board_check
        if check is None:
            try:  # the calibration package registers its check on import, when it is installed
                import importlib

                importlib.import_module("robot_stack.calibration.board")
            except ImportError:
                return []
            check = CalibrationConfig.board_check
        out = []
        for key in ("table_board", "gripper_board"):
            spec = getattr(self, key)
            why = check(spec) if spec is not None and check is not None else None
            if why:
                out.append(f"calibration.{key}: {why}")
        return out


class StackConfig(StrictModel):
    """A whole setup.

    Attributes:
        name: setup name.
        run_dir: folder for ipc sockets (default: a fresh temp folder per launch).
        on_node_exit: "shutdown" stops the stack when a critical node dies; "continue" reports only.
        shutdown_timeout_s: grace period after SIGTERM before SIGKILL.
        nodes: node name -> node config (names are [a-z0-9_]).
    """

    name: str = "stack"
    run_dir: Path | None = None
    on_node_exit: Literal["shutdown", "continue"] = "shutdown"
    shutdown_timeout_s: float = Field(5.0, gt=0, le=60)
    calibration: CalibrationConfig | None = Field(
        None, description="the setup's calibration file and boards (None: no calibration)"
    )
    nodes: dict[str, NodeConfig]

    @model_validator(mode="after")
    def _names(self) -> StackConfig:
        import re

        for n in self.nodes:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", n):
                raise ValueError(f"node name {n!r} must match [a-z][a-z0-9_]* (at most 40 chars)")
        if not self.nodes:
            raise ValueError("a stack needs at least one node")
        return self

    def pub_endpoint(self, node: str, run_dir: Path) -> str:
        """The PUB endpoint of ``node``. Raises ConfigError for an unknown node."""
        nc = self._node(node)
        return nc.pub_endpoint or f"ipc://{run_dir}/{node}.pub"

    def in_endpoint(self, node: str, run_dir: Path) -> str:
        """The lossless input (PULL) endpoint of ``node``."""
        nc = self._node(node)
        return nc.in_endpoint or f"ipc://{run_dir}/{node}.in"

    def _node(self, node: str) -> NodeConfig:
        if node not in self.nodes:
            raise ConfigError(f"no node named {node!r} in this config (have: {sorted(self.nodes)})")
        return self.nodes[node]


def format_validation_error(err: ValidationError, prefix: str = "", data: Any = None) -> str:
    """One line per problem: ``key.path = value: reason``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (prefix.split(".") if prefix else []) + list(e["loc"]))
        value = e.get("input", "<missing>")
        if e["type"] == "missing":
            lines.append(f"{loc}: required key is missing")
        elif e["type"] == "extra_forbidden":
            lines.append(f"{loc} = {value!r}: unknown key (typo?)")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{loc} = {value!r}: {msg}")
    return "\n".join(lines)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping. Raises ConfigError if missing or not a mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``delta``: mappings merge key by key, anything else (lists included) is
    replaced; a ``None`` in ``delta`` removes the key (how a derived setup drops a node). A device
    config (a mapping with ``type``) of another type replaces the base's whole: a UR driver keeps
    none of a Franka driver's keys."""
    out = dict(base)
    for key, value in delta.items():
        if value is None:
            out.pop(key, None)
        elif (
            isinstance(value, dict)
            and isinstance(out.get(key), dict)
            and not ("type" in value and value["type"] != out[key].get("type"))
        ):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _absolute_calibration(data: dict[str, Any], folder: Path) -> None:
    calib = data.get("calibration")
    if isinstance(calib, dict) and calib.get("file") and not Path(str(calib["file"])).is_absolute():
        calib["file"] = str((folder / str(calib["file"])).resolve())


def resolve_setup(path: str | Path) -> tuple[dict[str, Any], list[Path]]:
    """Read a setup and the chain of setups it ``extends:`` (a path relative to the file), merged
    with :func:`deep_merge`, base first. A relative calibration file is made absolute against the
    file that names it.

    Returns:
        (the merged mapping without ``extends``, the chain of files from the setup itself to its root).

    Raises:
        ConfigError: a missing or unreadable file in the chain, ``extends`` not a path, or a cycle
            (each names the files involved).
    """
    chain: list[Path] = []
    layers: list[dict[str, Any]] = []
    p = Path(path).resolve()
    while True:
        if p in chain:
            raise ConfigError(f"{chain[0]}: extends makes a cycle: " + " -> ".join(str(c) for c in [*chain, p]))
        data = load_yaml(p)
        _absolute_calibration(data, p.parent)
        chain.append(p)
        base = data.pop("extends", None)
        layers.append(data)
        if base is None:
            break
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{p}: extends = {base!r}: must be the path of another setup file")
        p = (p.parent / base).resolve()
        if not p.is_file():
            raise ConfigError(f"{chain[-1]}: extends = {base!r}: no such setup ({p})")
    merged: dict[str, Any] = {}
    for layer in reversed(layers):
        merged = deep_merge(merged, layer)
    return merged, chain


def parse_set(expr: str) -> tuple[str, Any]:
    """One ``--set key.path=value``: the dotted path and the value read as YAML (``0.05`` a
    float, ``[a, b]`` a list, ``true`` a bool, ``null`` removes the key; anything else a string).
    The setup's models then check and convert the value like one written in the file.

    Raises:
        ConfigError: no ``=``, an empty path or path part, or a value that is not YAML.
    """
    key, sep, text = expr.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {expr!r}: expected key.path=value (e.g. nodes.arm.params.rate_hz=250)")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: value {text!r} is not valid YAML ({' '.join(str(e).split())})") from None
    return key, value


def apply_sets(data: dict[str, Any], sets: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    """A copy of a setup mapping with dotted-path overrides applied (a dict path -> value, or
    ``--set`` expressions); missing intermediate mappings are created, a ``None`` value removes
    the key.

    Raises:
        ConfigError: a path that runs through a value that is not a mapping (names the path).
    """
    import copy

    items = [parse_set(e) for e in sets] if isinstance(sets, list) else list((sets or {}).items())
    out = copy.deepcopy(data)
    for key, value in items:
        d = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            d = d.setdefault(part, {})
            if not isinstance(d, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a mapping")
        if value is None:
            d.pop(parts[-1], None)
        else:
            d[parts[-1]] = value
    return out


def write_resolved(path: str | Path, sets: dict[str, Any] | list[str] | None, folder: str | Path) -> Path:
    """Write the setup at ``path`` flat (its ``extends`` chain merged, ``sets`` applied, relative
    calibration paths absolute) into ``folder`` under the same file name, and validate it: what
    the launcher hands its node processes when a command was given ``--set``.

    Raises:
        ConfigError: as :func:`load_config`, naming the original file.
    """
    data, _ = resolve_setup(path)
    data = apply_sets(data, sets)
    config_from_dict(data, where=str(path), base_dir=Path(path).resolve().parent)
    out = Path(folder) / Path(path).name
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def _params_problems(err: ValidationError, name: str, kind: str) -> str:
    """One line per problem of a node's params; a device key put beside ``driver`` (instead of
    inside it) says which device it belongs to."""
    from robot_stack.runtime.devices import FAMILIES

    family = FAMILIES.get(kind)
    lines = []
    for e in err.errors():
        key = str(e["loc"][0]) if e["loc"] else ""
        owners = family.owners(key) if family is not None and e["type"] == "extra_forbidden" else []
        if owners:
            lines.append(
                f"nodes.{name}.params.{key}: a key of {family.family} {', '.join(owners)}; put it inside "
                f"{family.key}: {{type: {owners[0]}, {key}: ...}}"
            )
        else:
            lines.append(
                format_validation_error(
                    ValidationError.from_exception_data(err.title, [e]), prefix=f"nodes.{name}.params"
                )
            )
    return "\n".join(lines)


def _node_problems(cfg: StackConfig, name: str, params) -> list[str]:
    """Cross-node checks of one node's typed params: references name nodes of the right kind,
    the arm's robot model exists, a device's SDK (package extra) is installed."""
    from robot_stack.runtime.devices import DeviceConfig, FAMILIES

    out = []
    for ref, kind in params.references().items():
        other = cfg.nodes.get(ref)
        if other is None:
            out.append(
                f"nodes.{name}.params: names {kind} node {ref!r}, which is not in this config: nothing "
                f"publishes what {name} expects from it (have: {', '.join(sorted(cfg.nodes))})"
            )
        elif other.kind != kind:
            out.append(f"nodes.{name}.params: node {ref!r} must be a {kind} node, it is a {other.kind} node")
    device = getattr(params, "driver", None)
    kind = cfg.nodes[name].kind
    if isinstance(device, DeviceConfig) and kind in FAMILIES:
        why = FAMILIES[kind].missing_requirements(device)
        if why:
            out.append(f"nodes.{name}.params.driver: {why}")
    out += [f"nodes.{name}.params.{p}" for p in params.problems(cfg)]
    return out


def load_config(path: str | Path, sets: dict[str, Any] | list[str] | None = None) -> StackConfig:
    """Load and fully validate a setup config, including every node's params: its ``extends``
    chain merged (:func:`resolve_setup`), then ``sets`` applied (:func:`apply_sets`).

    Raises:
        ConfigError: naming each offending key, its value and the reason.
    """
    data, _ = resolve_setup(path)
    return config_from_dict(apply_sets(data, sets), where=str(path), base_dir=Path(path).resolve().parent)


def config_from_dict(data: dict[str, Any], where: str = "<config>", base_dir: Path | None = None) -> StackConfig:
    """Validate a setup given as a mapping (what :func:`load_config` reads from YAML), every
    node's params included; relative calibration paths resolve against ``base_dir`` (default: the
    working directory). Tests and benches build their setups this way, not through YAML text.

    Raises:
        ConfigError: naming each offending key, its value and the reason.
    """
    from robot_stack.runtime.kinds import params_model

    try:
        cfg = StackConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{where}:\n{format_validation_error(e)}") from None
    problems = []
    typed = {}
    for name, nc in cfg.nodes.items():
        try:
            model = params_model(nc.kind)
        except KeyError as e:
            problems.append(f"nodes.{name}.kind = {nc.kind!r}: {e.args[0]}")
            continue
        try:
            typed[name] = nc._typed = model.model_validate(nc.params)
        except ValidationError as e:
            problems.append(_params_problems(e, name, nc.kind))
    for name, params in typed.items():
        problems += _node_problems(cfg, name, params)
    if cfg.calibration is not None:
        if not cfg.calibration.file.is_absolute():
            cfg.calibration.file = ((base_dir or Path.cwd()).resolve() / cfg.calibration.file).resolve()
        problems += cfg.calibration.problems()
    if problems:
        raise ConfigError(f"{where}:\n" + "\n".join(problems))
    return cfg
