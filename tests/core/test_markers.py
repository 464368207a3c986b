"""Every registered pytest marker does something: something selects or deselects by it."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import REPO


def test_each_marker_is_used_by_a_selection() -> None:
    markers = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    selections = " ".join(re.findall(r"-m\s+(\"[^\"]*\"|'[^']*'|\S+)", (REPO / "Makefile").read_text()))
    for line in markers:
        name = line.split(":", 1)[0].strip()
        assert re.search(rf"\b{re.escape(name)}\b", selections), f"marker {name!r}: nothing selects or deselects it"
