"""One recording sink (issue 15): probe and doctor record a driver's output with fieldgate.testing's.

A second copy drifted before (probe's had no ``changed`` event and no ``wait``); what a third
party's tests record with is now exactly what ``fieldgate probe`` and ``doctor`` use.
"""

from __future__ import annotations

import ast

from fieldgate import probe
from fieldgate.testing import RecordingSink

from tests.conftest import REPO


def test_probe_records_with_the_exported_sink() -> None:
    assert probe.RecordingSink is RecordingSink


def test_no_other_sink_class_in_the_package() -> None:
    defined = []
    for path in sorted((REPO / "gateway").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            # Recording sinks only: the supervisor's own sink (app.py) forwards to a device runner.
            if isinstance(node, ast.ClassDef) and node.name.endswith("RecordingSink"):
                defined.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.name}")
    assert defined == ["gateway/testing/sink.py:12: RecordingSink"], defined
