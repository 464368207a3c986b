"""The driver seam: one small protocol for polled drivers, one for push drivers.

A driver instance serves one device. The supervisor opens it (``async with``),
then calls ``poll(sink)`` on the device's schedule, or, for a push driver,
runs ``run(sink)`` until cancelled. Drivers hand raw values to the sink and
raise ``DriverError`` for device-level failures; per-point failures go into
the raw reading as ``PointError``.

Drivers register through entry points in group ``fieldgate.drivers`` and are
imported only when a config uses them, so a third party can ship a driver as
its own package, and a missing optional dependency names the extra to install.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, PackageNotFoundError, distribution, entry_points, requires
from typing import Any, ClassVar, Protocol, Self, TypeVar, runtime_checkable

from pydantic import BaseModel

from .errors import DriverError, DriverUnavailable
from .profile import BaseProfile, Model
from .schema import RawReading

ENTRY_POINT_GROUP = "fieldgate.drivers"
BUILTIN_EXTRAS = {"modbus": "modbus", "serial": "serial", "ble": "ble", "coap": "coap"}

T = TypeVar("T")


class ReadingSink(Protocol):
    """Where a driver puts what it read."""

    def add(self, reading: RawReading) -> None:
        """Accept one poll's (or one report's) raw values."""

    def add_error(self, error: DriverError) -> None:
        """Report a partial failure; the poll goes on (the device is degraded)."""


class NoConnection(Model):
    """For drivers that need no connection settings."""


@dataclass(slots=True)
class SharedResources:
    """Objects several devices share, such as the owner of one serial port.

    A Modbus RTU line with ten meters has one port owner; each device's
    driver asks for it by key and gets the same object.
    """

    _items: dict[str, Any] = field(default_factory=dict)
    _users: dict[str, int] = field(default_factory=dict)

    def acquire(self, key: str, factory: Callable[[], T]) -> T:
        """Get (creating on first use) the resource under ``key``."""
        if key not in self._items:
            self._items[key] = factory()
        self._users[key] = self._users.get(key, 0) + 1
        return self._items[key]  # type: ignore[no-any-return]

    def release(self, key: str) -> Any | None:
        """Drop one use; returns the resource when its last user left (to close it)."""
        left = self._users.get(key, 0) - 1
        if left > 0:
            self._users[key] = left
            return None
        self._users.pop(key, None)
        return self._items.pop(key, None)


@dataclass(slots=True)
class DeviceContext:
    """Everything a driver instance gets about its device."""

    device_id: str
    profile: BaseProfile
    connection: BaseModel
    timeout: float
    log: logging.LoggerAdapter[logging.Logger]
    shared: SharedResources
    options: dict[str, Any] = field(default_factory=dict)
    #: Announce something operators should know (``kind`` plus fields) on the events topic and in
    #: the log, e.g. a BLE scanner restarted by its watchdog. Outside a gateway it only logs.
    event: Callable[..., None] = field(default=lambda kind, **fields: None)


@runtime_checkable
class Driver(Protocol):
    """A polled driver (Telegraf's Gather): the supervisor calls ``poll``."""

    name: ClassVar[str]
    Profile: ClassVar[type[BaseProfile]]
    Connection: ClassVar[type[BaseModel]]

    def __init__(self, ctx: DeviceContext) -> None: ...

    async def __aenter__(self) -> Self:
        """Open the port or socket. No I/O happens in ``__init__``."""
        ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def poll(self, sink: ReadingSink) -> None:
        """Read the device once and hand the values to ``sink``."""
        ...


@runtime_checkable
class ServiceDriver(Driver, Protocol):
    """A push driver (BLE adverts, CoAP observe/pushes): runs until cancelled."""

    async def run(self, sink: ReadingSink) -> None: ...


def bus_key(driver: type[Driver], connection: BaseModel) -> str | None:
    """The physical line a device is on, if drivers share one (e.g. a serial port)."""
    fn = getattr(driver, "bus_of", None)
    return fn(connection) if callable(fn) else None


def available_drivers() -> dict[str, EntryPoint]:
    """Installed drivers by name (not imported)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


_cache: dict[str, type[Driver]] = {}

_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def missing_requirements(extra: str, dist: str = "fieldgate") -> list[str]:
    """The distributions that ``dist[extra]`` requires and that are not installed.

    Read from the installed package's metadata (its ``Requires-Dist``), so it is the
    same list pip would install; nested extras (``fieldgate[coap]``) are followed.
    Without metadata (a bare source tree on ``sys.path``) nothing can be told: ``[]``.
    """
    try:
        reqs = requires(dist) or []
    except PackageNotFoundError:
        return []
    absent: list[str] = []
    for req in reqs:
        spec, _, marker = req.partition(";")
        m = _EXTRA_MARKER.search(marker)
        if m is None or m[1] != extra:
            continue
        name = re.match(r"[A-Za-z0-9._-]+", spec.strip())
        if name is None:
            continue
        nested = re.search(r"\[([^]]+)\]", spec)
        if name[0] == dist and nested:
            for sub in nested[1].split(","):
                absent += [a for a in missing_requirements(sub.strip(), dist) if a not in absent]
            continue
        try:
            distribution(name[0])
        except PackageNotFoundError:
            if name[0] not in absent:
                absent.append(name[0])
    return absent


def load_driver(name: str) -> type[Driver]:
    """Import a driver by name.

    Raises:
        DriverUnavailable: unknown name, or its optional dependency is missing
            (the message names the extra to install).
    """
    if name in _cache:
        return _cache[name]
    eps = available_drivers()
    ep = eps.get(name)
    if ep is None:
        from .validation import did_you_mean

        raise DriverUnavailable(
            f"unknown driver {name!r}{did_you_mean(name, eps)}",
            hint=f"installed drivers: {', '.join(sorted(eps)) or 'none'}",
        )
    extra = BUILTIN_EXTRAS.get(name)
    # Drivers import their protocol library lazily (BLE's bleak, Modbus's pymodbus are
    # imported when a device opens), so a successful import does not prove the extra is
    # there: the package's own metadata says what the extra needs.
    absent = missing_requirements(extra) if extra else []
    if extra and absent:
        raise DriverUnavailable(f"driver {name!r} needs the {extra} extra ({', '.join(absent)} not installed)",
                                hint=f"pip install 'fieldgate[{extra}]'")
    try:
        cls = ep.load()
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        # The command goes in the hint only: str() of the error appends the hint.
        if extra:
            raise DriverUnavailable(f"driver {name!r} needs the {extra} extra ({missing!r} not installed)",
                                    hint=f"pip install 'fieldgate[{extra}]'") from exc
        raise DriverUnavailable(f"driver {name!r} needs {missing!r}, which is not installed",
                                hint=f"install the package that provides {missing!r}") from exc
    if not isinstance(cls, type) or not all(hasattr(cls, a) for a in ("Profile", "poll", "name")):
        raise DriverUnavailable(f"entry point {ep.value!r} for driver {name!r} is not a driver class")
    _cache[name] = cls
    return cls


def import_string(path: str) -> Any:
    """``pkg.mod:attr`` → the object (for tests and plugins)."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)
