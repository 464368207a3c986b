"""The profile check page's logic: the very same validation as ``fieldgate validate``.

The pasted or uploaded text is written to a private temporary folder under
its own file name and checked with :func:`fieldgate.config.load_profile_file`,
the function the CLI uses, so the page shows exactly the lines the CLI prints
(same order: errors by position, then warnings), with the file named as the
technician named it.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from pathlib import Path
from typing import Any

from ..config import load_profile_file
from ..yamlsrc import Diagnostic

MAX_PROFILE_BYTES = 256 * 1024
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def display_name(filename: str | None) -> str:
    """A safe base name ending in .yaml for the diagnostics (``pasted.yaml`` by default)."""
    name = _SAFE_NAME.sub("_", Path(filename or "").name).strip("._") if filename else ""
    if not name:
        return "pasted.yaml"
    return name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"


def _sorted(diags: list[Diagnostic]) -> list[Diagnostic]:
    errors = sorted((d for d in diags if d.severity == "error"), key=lambda d: (d.file, d.line, d.col))
    warnings = sorted((d for d in diags if d.severity != "error"), key=lambda d: (d.file, d.line, d.col))
    return [*errors, *warnings]


def check_profile_text(text: str, filename: str | None = None) -> dict[str, Any]:
    """Validate one profile given as text; returns the API document.

    Blocking (file I/O and validation): call it in a worker thread.
    """
    name = display_name(filename)
    with tempfile.TemporaryDirectory(prefix="fieldgate-check-") as tmp:
        path = Path(tmp) / name
        path.write_text(text, encoding="utf-8")
        _, diags = load_profile_file(path)
        prefix = str(path)
    diags = [dataclasses.replace(d, file=name) if d.file == prefix else d for d in diags]
    ordered = _sorted(diags)
    errors = sum(1 for d in ordered if d.severity == "error")
    warnings = len(ordered) - errors
    summary = (f"{errors} error(s), {warnings} warning(s) in {name}" if errors
               else f"valid: {name} (1 profile(s), {warnings} warning(s))")
    return {
        "file": name, "valid": errors == 0, "errors": errors, "warnings": warnings, "summary": summary,
        "diagnostics": [
            {"file": d.file, "line": d.line, "col": d.col, "path": d.path, "message": d.message,
             "severity": d.severity, "text": str(d)}
            for d in ordered
        ],
    }
