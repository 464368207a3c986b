"""The driver conformance suite (fieldgate.testing), run for every built-in driver."""

from __future__ import annotations

from fieldgate.testing import conformance

TestConformanceSim = conformance.suite("sim")
TestConformanceModbus = conformance.suite("modbus")
TestConformanceSerial = conformance.suite("serial")
TestConformanceBle = conformance.suite("ble")
TestConformanceCoap = conformance.suite("coap")


def test_missing_sections_are_named() -> None:
    text = "# x\n## Profile reference\n## Troubleshooting for field technicians\n"
    assert conformance.missing_sections(text) == ["what it produces"]
