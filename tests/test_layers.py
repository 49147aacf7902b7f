"""The layering rule as data, checked against every import in the package.

Layers, lowest first (docs/design.md, "Layers"): comm and runtime; control and tasks (pure);
data, drivers, policies, teleop, calibration; nodes; apps and the CLI; testing on top. A module may
import its own layer and the layers below, never one above; a few same-row imports are allowed by
name below, each with its reason.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: package -> its row; a module may import its own row and the rows below, never a row above
RANK = {
    "errors": 0,
    "comm": 1,
    "runtime": 1,
    "control": 2,
    "tasks": 2,
    "data": 3,
    "drivers": 3,
    "policies": 3,
    "teleop": 3,
    "calibration": 3,
    "nodes": 4,
    "apps": 5,
    "cli": 5,
    "testing": 6,
}
#: rows whose packages may not import each other, except the pairs in ALLOWED_ACROSS
STRICT_ROWS = {3}
#: same-row imports across packages of a strict row that the rule allows, each with its reason
ALLOWED_ACROSS = {
    ("policies", "data"): "training reads the native episode format",
    ("policies", "drivers"): "the oracle policy (sim only, by design) reads the sim world's object state",
    ("teleop", "drivers"): "leader arms read their servos through the bus drivers",
    ("teleop", "calibration"): "leader arms load their joint map from the setup's calibration store",
    ("calibration", "drivers"): "the servo and camera calibrations talk to the drivers",
    ("calibration", "teleop"): "the servo calibration writes the leader arm's joint map",
    ("drivers", "calibration"): "drivers apply the stored calibration (intrinsics, latency)",
    ("drivers", "teleop"): "the SO-101 follower reads the leader arm's joint map (to be moved to calibration)",
}
#: where each installed subpackage lives in the tree
ROOTS = {"drivers": "drivers", "calibration": "calibration", "policies": "policies", "teleop": "teleop"}


def package_of(path: Path) -> str:
    rel = path.relative_to(REPO)
    if rel.parts[0] in ROOTS:
        return rel.parts[0]
    part = rel.parts[1]
    return part[:-3] if part.endswith(".py") else part


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, robot_stack package) for every import of a robot_stack module in ``path``."""
    tree = ast.parse(path.read_text())
    here = package_of(path)
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: ..x from a subpackage of robot_stack
                mod = (node.module or "").split(".")[0] if node.level >= 2 or here in ROOTS else here
                names = [mod]
            elif node.module and node.module.startswith("robot_stack."):
                names = [node.module.split(".")[1]]
            elif node.module == "robot_stack":
                names = [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("robot_stack.")]
        out += [(node.lineno, n) for n in names if n in RANK]
    return out


def upward_imports(files) -> list[str]:
    bad = []
    for f in files:
        here = package_of(f)
        if here not in RANK:
            continue
        for line, there in imported_packages(f):
            if there == here or RANK[there] < RANK[here]:
                continue
            if RANK[there] == RANK[here] and (RANK[here] not in STRICT_ROWS or (here, there) in ALLOWED_ACROSS):
                continue
            bad.append(f"{f.relative_to(REPO)}:{line}: {here} imports {there}")
    return bad


def sources():
    files = list((REPO / "robot_stack").rglob("*.py"))
    for root in ROOTS.values():
        files += list((REPO / root).rglob("*.py"))
    return sorted(files)


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports(sources()) == []


def test_the_layer_check_finds_an_upward_import_added_on_purpose(tmp_path, monkeypatch):
    bad = REPO / "robot_stack" / "control" / "_upward_probe.py"
    bad.write_text("from robot_stack.nodes.arm import ArmNode\nfrom robot_stack.comm.codec import encode\n")
    try:
        found = upward_imports([bad])
    finally:
        bad.unlink()
    assert found == ["robot_stack/control/_upward_probe.py:1: control imports nodes"]


@pytest.mark.parametrize("pkg", sorted(RANK))
def test_every_layer_named_in_the_rule_exists(pkg):
    assert (
        (REPO / "robot_stack" / pkg).exists()
        or (REPO / "robot_stack" / f"{pkg}.py").exists()
        or (REPO / ROOTS.get(pkg, "-")).exists()
    )
