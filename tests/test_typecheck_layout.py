"""The link tree mypy checks (.typecheck/fieldgate) mirrors the installed package (issue 15).

``mypy`` alone checks gateway/ and drivers/ under their installed names (fieldgate,
fieldgate.drivers) through ``.typecheck/fieldgate``: one link per entry of gateway/, plus
drivers/ and profiles/. A new module without its link would silently escape the strict
check; this test names it and the command that adds it.
"""

from __future__ import annotations

import os
import tomllib

from tests.conftest import REPO

TREE = REPO / ".typecheck" / "fieldgate"


def test_every_entry_of_the_package_has_its_link_and_no_link_dangles() -> None:
    expected = {p.name: f"../../gateway/{p.name}" for p in (REPO / "gateway").iterdir() if p.name != "__pycache__"}
    expected |= {"drivers": "../../drivers", "profiles": "../../profiles"}
    present = {p.name: os.readlink(p) for p in TREE.iterdir() if p.is_symlink()}
    missing = sorted(set(expected) - set(present))
    fix = " && ".join(f"ln -s {expected[name]} .typecheck/fieldgate/{name}" for name in missing)
    assert not missing, f"not type-checked: {missing}; add the link(s): {fix}"
    assert present == expected, "links in .typecheck/fieldgate that point elsewhere or at nothing"
    assert all((TREE / name).exists() for name in present)


def test_mypy_checks_the_tree_strictly() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["strict"] is True
    assert config["files"] == [".typecheck/fieldgate"]
