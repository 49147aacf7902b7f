"""The documentation stays true: generated reference pages match the code, every registry entry has
its section, relative links resolve, the README stays short, and nothing cites a document the
repository does not carry."""

from __future__ import annotations

import re
import runpy
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GEN = runpy.run_path(str(REPO / "scripts" / "gen_reference.py"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_generated_reference_pages_match_the_code():
    for name, page in GEN["PAGES"].items():
        committed = (REPO / "docs" / "reference" / name).read_text()
        assert committed == page(), f"docs/reference/{name} is stale: run python3 scripts/gen_reference.py"


def test_config_reference_lists_every_node_kind_and_device_type():
    from robot_stack.runtime.devices import FAMILIES
    from robot_stack.runtime.kinds import KINDS

    page = (REPO / "docs" / "reference" / "config.md").read_text()
    headings = set(re.findall(r"^#+ .*\{#([\w-]+)\}$", page, re.M))
    assert {f"kind-{k}" for k in KINDS} <= headings
    for kind, family in FAMILIES.items():
        for t in family.types:
            assert f"{kind}-{t}" in headings, f"{family.family} {t} has no section"
    # and every key of a device's model is in its table
    for kind, family in FAMILIES.items():
        for t in family.types:
            section = page.split(f"{{#{kind}-{t}}}", 1)[1].split("\n#", 1)[0]
            for key in family.config_class(t).model_fields:
                assert f"| `{key}`" in section, f"{family.family} {t}: key {key} missing"


def test_cli_reference_has_every_command():
    from robot_stack.cli import build_parser

    page = (REPO / "docs" / "reference" / "cli.md").read_text()
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in sub.choices:
        assert f"## `robot-stack {name}" in page, name


def _markdown_files() -> list[Path]:
    return [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").rglob("*.md"))]


def test_relative_links_resolve():
    bad = []
    for md in _markdown_files():
        text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = target.split("#", 1)[0]
            if not (md.parent / path).exists():
                bad.append(f"{md.relative_to(REPO)}: {target}")
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_readme_fits_on_a_screen_and_nothing_cites_outside_the_repository():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    citing = [
        f
        for f in files
        if f.endswith((".py", ".md", ".yaml", ".toml"))
        and f != "tests/test_docs.py"
        and (
            "DESIGN.md" in (REPO / f).read_text(errors="replace")
            or "../shared" in (REPO / f).read_text(errors="replace")
        )
    ]
    assert not citing, f"cite DESIGN.md or ../shared (use docs/design.md): {citing}"


def test_every_page_is_in_the_navigation():
    yaml = pytest.importorskip("yaml")

    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text().replace("!!", ""))["nav"]

    def pages(entry):
        if isinstance(entry, str):
            yield entry
        elif isinstance(entry, dict):
            for v in entry.values():
                yield from pages(v)
        elif isinstance(entry, list):
            for v in entry:
                yield from pages(v)

    listed = set(pages(nav))
    on_disk = {str(p.relative_to(REPO / "docs")) for p in (REPO / "docs").rglob("*.md")}
    assert on_disk == listed, f"not in nav: {sorted(on_disk - listed)}; missing: {sorted(listed - on_disk)}"


def test_version_is_written_in_one_place():
    import robot_stack

    text = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and "robot_stack.__version__" in text
    assert re.fullmatch(r"\d+\.\d+\.\d+", robot_stack.__version__)
