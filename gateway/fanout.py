"""What the gateway hands its work to: the output protocol, what an output may offer, and the fan-out.

:class:`Output` is the one seam between the supervisor and where readings go (stdout, the
buffer with its MQTT uplink, a test's memory); the optional capabilities an output may have
(``snapshot``, ``follow``, ``reconfigure``) are declared here as protocols, so the supervisor
and the status page ask ``isinstance``, never ``getattr`` on a guess. :class:`Fanout` is the
output as the device runners see it: the real output first, then every listener (the page).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .config import GatewayConfig

log = logging.getLogger(__name__)


class Output(Protocol):
    """Where normalized readings, device states and events go (stdout, buffer+MQTT)."""

    def submit(self, device: str, message: dict[str, Any]) -> None:
        """Accept one reading message (without ``seq``)."""

    def device_status(self, device: str, state: str, error: str | None) -> None:
        """A device changed state."""

    def event(self, kind: str, **fields: Any) -> None:
        """Something operators should know about (reloads, clock, drops)."""

    async def run(self) -> None:
        """Background work until cancelled."""

    async def close(self) -> None:
        """Flush and release on shutdown."""


@runtime_checkable
class DescribedOutput(Protocol):
    """What an output may tell the status page: its ``kind`` (``mqtt``, ``stdout``, ``memory``) and,
    for the buffered uplink, a ``snapshot()`` of its connection and buffer figures.
    """

    kind: str

    def snapshot(self) -> dict[str, Any]: ...


@runtime_checkable
class Announces(Protocol):
    """An output that tells followers every event, those it makes itself included (the uplink's
    buffer drops): the gateway follows it, so the status page sees them too."""

    def follow(self, callback: Callable[..., None]) -> Callable[[], None]: ...


@runtime_checkable
class Reconfigurable(Protocol):
    """An output that takes a reloaded configuration's changes it can apply live (the uplink's)."""

    def reconfigure(self, cfg: GatewayConfig) -> None: ...


@runtime_checkable
class NamedOutput(Protocol):
    """An output that says what kind it is (every output of this package does)."""

    kind: str


class GatewayListener(Protocol):
    """Follows what the gateway tells its output (the status page subscribes one): called after the
    output, on the event loop; an exception is logged and never reaches the gateway.
    """

    def device_status(self, device: str, state: str, error: str | None) -> None:
        """A device changed state."""

    def reading(self, device: str, message: dict[str, Any]) -> None:
        """A reading message was handed to the output."""

    def event(self, kind: str, **fields: Any) -> None:
        """An event was announced."""


class Fanout:
    """The output as the runners see it: the real output first, then every listener."""

    def __init__(self, output: Output, listeners: list[GatewayListener]) -> None:
        self.output = output
        self.listeners = listeners
        # An output that announces its events tells the listeners itself, its own events included.
        self._announced = isinstance(output, Announces)
        if isinstance(output, Announces):
            output.follow(self._tell_event)

    def _tell_event(self, kind: str, **fields: Any) -> None:
        self._tell(f"event {kind}", lambda lst: lst.event(kind, **fields))

    def _tell(self, what: str, call: Callable[[GatewayListener], None]) -> None:
        for listener in list(self.listeners):
            try:
                call(listener)
            except Exception:  # a listener's bug must not reach a poller
                log.exception("gateway listener failed on %s", what)

    def submit(self, device: str, message: dict[str, Any]) -> None:
        self.output.submit(device, message)
        self._tell("a reading", lambda lst: lst.reading(device, message))

    def device_status(self, device: str, state: str, error: str | None) -> None:
        self.output.device_status(device, state, error)
        self._tell("a device state", lambda lst: lst.device_status(device, state, error))

    def event(self, kind: str, **fields: Any) -> None:
        self.output.event(kind, **fields)
        if not self._announced:
            self._tell_event(kind, **fields)

