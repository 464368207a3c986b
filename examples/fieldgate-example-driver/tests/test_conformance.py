"""The package's drivers pass fieldgate's conformance suite."""

from fieldgate.testing import conformance

TestCounter = conformance.suite("example-counter")
TestTicker = conformance.suite("example-ticker")
