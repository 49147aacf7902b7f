"""The dataflow graph of a setup: which node sends what to which.

Edges come from what each node's params reference (``NodeParams.references``: a controller's arm,
cameras, teleop and policy, a recorder's streams, a sim driver's world) and from what each node kind
publishes (``Node.publishes``, from its message classes' topics). A referenced node's streams flow to
the node that references it; a node that commands another (a controller or a teleop device and an
arm, a sim driver and its world) also sends to the other's lossless input, and a controller asks its
policy by request/reply. ``robot-stack graph SETUP`` prints it; ``--format dot`` or ``mermaid``
writes it for Graphviz or a Markdown page.
"""

from __future__ import annotations

from dataclasses import dataclass

from robot_stack.runtime.config import StackConfig

#: (kind that references, kind referenced) -> what the first sends to the second's input or
#: request channel (beside the streams it reads from it)
COMMANDS: dict[tuple[str, str], str] = {
    ("controller", "arm"): "waypoint schedules, heartbeats (input)",
    ("teleop", "arm"): "e-stop (input)",
    ("controller", "policy"): "observation windows -> action chunks (request/reply)",
    ("arm", "sim_world"): "joint targets (sim/joint_target)",
}
#: (kind that references, kind referenced): the first reads none of the second's streams
NO_STREAMS = {("controller", "policy")}
#: (kind that references, kind referenced) -> the topic prefixes the first reads of the second's
#: (pairs not listed read every topic the second publishes)
READS: dict[tuple[str, str], tuple[str, ...]] = {
    ("arm", "sim_world"): ("sim/joint_state",),
    ("camera", "sim_world"): ("sim/state",),
    ("teleop", "sim_world"): ("sim/objects",),
    ("recorder", "sim_world"): ("sim/objects",),
}


@dataclass(frozen=True)
class Link:
    """One edge: ``src`` sends ``what`` to ``dst`` over ``channel`` ("stream": PUB/SUB topics,
    "input": the lossless PUSH/PULL input, "request": request/reply)."""

    src: str
    dst: str
    what: str
    channel: str


def publishes(cfg: StackConfig, name: str) -> list[str]:
    """The topics node ``name`` publishes (its heartbeat excluded)."""
    from robot_stack.runtime.kinds import node_class

    nc = cfg.nodes[name]
    return list(node_class(nc.kind).publishes(nc.typed))


def links(cfg: StackConfig) -> list[Link]:
    """Every edge of the setup's dataflow, in the setup's node order.

    Raises:
        KeyError: a reference to a node the setup lacks (``load_config`` refuses such a setup first).
    """
    out: list[Link] = []
    for name, nc in cfg.nodes.items():
        for ref in nc.typed.references():
            ref_kind = cfg.nodes[ref].kind
            if (nc.kind, ref_kind) not in NO_STREAMS:
                prefixes = READS.get((nc.kind, ref_kind), ("",))
                arm = getattr(getattr(nc.typed, "driver", None), "arm", "")
                if (nc.kind, ref_kind) == ("arm", "sim_world") and arm:
                    prefixes = (f"sim/joint_state/{arm}",)  # its own arm of a multi-arm world
                topics = [t for t in publishes(cfg, ref) if t.startswith(prefixes)]
                if topics:
                    out.append(Link(ref, name, ", ".join(topics), "stream"))
            command = COMMANDS.get((nc.kind, ref_kind))
            if command:
                channel = "request" if "request" in command else "input"
                out.append(Link(name, ref, command, channel))
    return out


def render(cfg: StackConfig, fmt: str = "text") -> str:
    """The graph as text (one line per edge), Graphviz DOT or a Mermaid flowchart.

    Raises:
        ValueError: an unknown format.
    """
    edges = links(cfg)
    kinds = {n: nc.kind for n, nc in cfg.nodes.items()}
    if fmt == "text":
        lines = [f"{cfg.name}: {len(cfg.nodes)} nodes, {len(edges)} links"]
        width = max((len(e.src) for e in edges), default=0)
        lines += [f"  {e.src:<{width}} --[{e.what}]--> {e.dst}" for e in edges]
        lonely = [n for n in cfg.nodes if not any(n in (e.src, e.dst) for e in edges)]
        lines += [f"  {n} ({kinds[n]}: no links)" for n in lonely]
        return "\n".join(lines) + "\n"
    if fmt == "dot":
        style = {"stream": "solid", "input": "bold", "request": "dashed"}
        lines = [f'digraph "{cfg.name}" {{', "  rankdir=LR;", "  node [shape=box];"]
        lines += [f'  "{n}" [label="{n}\\n({k})"];' for n, k in kinds.items()]
        lines += [f'  "{e.src}" -> "{e.dst}" [label="{e.what}", style={style[e.channel]}];' for e in edges]
        return "\n".join(lines) + "\n}\n"
    if fmt == "mermaid":
        arrow = {"stream": "-->", "input": "==>", "request": "-.->"}
        lines = ["flowchart LR"]
        lines += [f'  {n}["{n} ({k})"]' for n, k in kinds.items()]
        lines += [f'  {e.src} {arrow[e.channel]}|"{e.what}"| {e.dst}' for e in edges]
        return "\n".join(lines) + "\n"
    raise ValueError(f"unknown graph format {fmt!r} (text, dot, mermaid)")
