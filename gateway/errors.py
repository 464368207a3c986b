"""The error tree: small, carrying data, with a hint a person can act on.

``GatewayError`` is the root of every error fieldgate raises on purpose.
Drivers raise the ``DriverError`` family; the supervisor turns them into
device states and reading qualities, never into crashes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .yamlsrc import Diagnostic


class GatewayError(Exception):
    """Base of fieldgate's own errors.

    Attributes:
        hint: one sentence telling a person what to check or do, or ``None``.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} (hint: {self.hint})" if self.hint else text


class ConfigError(GatewayError):
    """A configuration or profile is invalid; carries every diagnostic found."""

    def __init__(self, diagnostics: Sequence[Diagnostic], message: str = "invalid configuration") -> None:
        super().__init__(message)
        self.diagnostics = list(diagnostics)


class DriverUnavailable(GatewayError):
    """A driver is unknown or its optional dependencies are not installed."""


class DriverError(GatewayError):
    """A device-level failure during open or poll; the poll loop goes on.

    Attributes:
        reason: a short machine word used as the reading quality reason
            (``timeout``, ``unreachable``, ``exception:02``, ``decode_error``).
    """

    reason = "error"

    def __init__(self, message: str, *, reason: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        if reason is not None:
            self.reason = reason


class DeviceUnreachable(DriverError):
    """The device or its port cannot be reached (refused, unplugged, no answer)."""

    reason = "unreachable"


class DeviceTimeout(DriverError):
    """The device did not answer in time."""

    reason = "timeout"


class DeviceBusy(DriverError):
    """The device answered that it is busy; try again later."""

    reason = "busy"


class DeviceProtocolError(DriverError):
    """The device answered with an exception or a frame that cannot be decoded."""

    reason = "protocol_error"


class UplinkError(GatewayError):
    """The MQTT uplink failed (unreachable broker, TLS, credentials)."""
