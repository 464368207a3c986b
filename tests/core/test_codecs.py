"""The binary codecs (checksums, fields, frames) live in core, shared by serial and CoAP."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fieldgate.codecs import checksums, fields, frames


@pytest.mark.parametrize("module", ["fieldgate.drivers.coap.payload", "fieldgate.drivers.coap.profile"])
def test_coap_does_not_load_the_serial_driver(module: str) -> None:
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('fieldgate.drivers.serial')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_codecs_are_usable_from_core() -> None:
    assert checksums.CHECKSUMS["sum8"].compute(b"\x01\x02") == 3
    spec = fields.FieldSpec.model_validate({"at": 0, "type": "u16"})
    assert fields.BinaryDecoder([("x", spec)]).decode(b"\x01\x02") == {"x": 258}
    assert frames.parse_hex("AA C0") == b"\xaa\xc0"
