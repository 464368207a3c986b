"""The committed generated module is what protoc makes of the committed .proto (no stale or hand edits)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

HERE = REPO / "gateway" / "sparkplug"


def test_generated_module_matches_the_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the test extra) bundles protoc")
    done = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{HERE}", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
         str(HERE / "fieldgate_sparkplug_b.proto")], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    for name in ("fieldgate_sparkplug_b_pb2.py", "fieldgate_sparkplug_b_pb2.pyi"):
        # The version stamp in the header differs between protoc releases; the descriptor must not.
        def body(p: Path) -> list[str]:
            return [ln for ln in p.read_text().splitlines() if "Protobuf Python Version" not in ln
                    and not ln.strip().isdigit()]
        assert body(tmp_path / name) == body(HERE / name), f"{name} is stale: regenerate it (see the .proto)"


def test_field_numbers_are_the_specifications() -> None:
    from fieldgate.sparkplug.fieldgate_sparkplug_b_pb2 import Payload

    numbers = {f.name: f.number for f in Payload.Metric.DESCRIPTOR.fields}
    assert numbers == {
        "name": 1, "alias": 2, "timestamp": 3, "datatype": 4, "is_historical": 5, "is_transient": 6,
        "is_null": 7, "metadata": 8, "properties": 9, "int_value": 10, "long_value": 11, "float_value": 12,
        "double_value": 13, "boolean_value": 14, "string_value": 15, "bytes_value": 16, "dataset_value": 17,
        "template_value": 18, "extension_value": 19}
    assert {f.name: f.number for f in Payload.DESCRIPTOR.fields} == {
        "timestamp": 1, "metrics": 2, "seq": 3, "uuid": 4, "body": 5}
    assert {f.name: f.number for f in Payload.PropertyValue.DESCRIPTOR.fields} == {
        "type": 1, "is_null": 2, "int_value": 3, "long_value": 4, "float_value": 5, "double_value": 6,
        "boolean_value": 7, "string_value": 8, "propertyset_value": 9, "propertysets_value": 10,
        "extension_value": 11}
