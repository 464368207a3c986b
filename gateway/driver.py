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

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, PackageNotFoundError, distribution, entry_points, requires
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar, runtime_checkable

from pydantic import BaseModel

from .checks import DoctorDevice, Finding
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
    """The connection model of a driver that declares none: no keys are allowed."""


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


#: The profile and connection models a driver reads; a driver names its own
#: (``DeviceContext[ModbusProfile, ModbusConnection]``) and needs no cast to read them.
ProfileT = TypeVar("ProfileT", bound=BaseProfile)
ConnectionT = TypeVar("ConnectionT", bound=BaseModel)


@dataclass(slots=True)
class DeviceContext(Generic[ProfileT, ConnectionT]):
    """Everything a driver instance gets about its device."""

    device_id: str
    profile: ProfileT
    connection: ConnectionT
    timeout: float
    log: logging.LoggerAdapter[logging.Logger]
    shared: SharedResources
    #: Announce something operators should know (``kind`` plus fields) on the events topic and in
    #: the log, e.g. a BLE scanner restarted by its watchdog. Outside a gateway it only logs.
    event: Callable[..., None] = field(default=lambda kind, **fields: None)


#: What core holds before it knows the driver's models (it built them from the config).
AnyContext = DeviceContext[Any, Any]


class _Device(Protocol):
    """What both kinds of driver share: a name, a profile schema, and open/close."""

    name: ClassVar[str]
    Profile: ClassVar[type[BaseProfile]]

    async def __aenter__(self) -> Self:
        """Open the port or socket. No I/O happens in ``__init__``."""
        ...

    async def __aexit__(self, *exc: object) -> None: ...


@runtime_checkable
class Driver(_Device, Protocol):
    """A polled driver (Telegraf's Gather): the supervisor calls ``poll``."""

    async def poll(self, sink: ReadingSink) -> None:
        """Read the device once and hand the values to ``sink``."""
        ...


@runtime_checkable
class ServiceDriver(_Device, Protocol):
    """A push driver (BLE adverts, CoAP observe/pushes): ``run`` until cancelled.

    A sibling of ``Driver``, not a child: a push driver carries no dummy ``poll``.
    A class that has both is run as a push driver (its ``run`` is what feeds it).
    """

    async def run(self, sink: ReadingSink) -> None: ...


#: An open driver instance, of either kind.
AnyDriver = Driver | ServiceDriver


class DriverClass(Protocol):
    """What an entry point in ``fieldgate.drivers`` names: a class with a name and a profile schema.

    The optional parts (a ``Connection`` model, a factory, the hooks below) are asked for
    through the functions of this module, never with ``getattr`` at the call site.
    """

    name: ClassVar[str]
    Profile: ClassVar[type[BaseProfile]]

    def __call__(self, ctx: AnyContext) -> AnyDriver: ...


# --- optional hooks: declared once, here; core asks them through the helpers below -------------------
#
# A driver offers a hook by defining the attribute; ``runtime_checkable`` protocols say which
# attribute, with which signature. Drivers need not subclass anything (a third-party class with
# just ``name``, ``Profile`` and ``poll`` is a whole driver).


@runtime_checkable
class HasConnection(Protocol):
    """Class hook: the model of the device's ``connection:`` section (default: ``NoConnection``)."""

    Connection: ClassVar[type[BaseModel]]


@runtime_checkable
class HasFactory(Protocol):
    """Class hook: build the instance for this device, e.g. the class of its mode (serial stream/query,
    CoAP poll/observe/push, BLE adverts/GATT). Without it the class itself is called.
    """

    @classmethod
    def create(cls, ctx: AnyContext) -> AnyDriver: ...


@runtime_checkable
class SharesBus(Protocol):
    """Class hook: the physical line a device is on, when devices share one (Modbus RTU on one port).

    Devices with the same key are polled one at a time under one lock; ``None`` means no sharing.
    """

    @classmethod
    def bus_of(cls, connection: Any) -> str | None: ...


@dataclass(frozen=True, slots=True)
class PointWrite:
    """One point to set, as the command executor hands it to a driver's ``write``."""

    name: str  # the profile point's name
    value: float | int | bool  # the engineering value, already validated against write_range


@runtime_checkable
class Writes(Protocol):
    """Instance hook: write these points in one go; raise DriverError (its reason: 'timeout',
    'exception:02', ...) on failure.

    Everything that can be refused without touching the device (a value the register type cannot
    hold) is refused before the first frame. The executor serializes ``write`` with the device's
    polls (and with the other devices of a shared bus), so a driver need not lock.
    """

    async def write(self, writes: Sequence[PointWrite]) -> None: ...


@runtime_checkable
class Reports(Protocol):
    """Instance hook: a JSON-able ``dict`` about the open driver for the status page and ``probe``."""

    def status(self) -> dict[str, Any]: ...


@runtime_checkable
class ShowsRaw(Protocol):
    """Instance hook: the last poll's raw values as text, ``(point, raw)``, for ``probe``'s raw column."""

    def last_raw(self) -> list[tuple[str, str]]: ...


@runtime_checkable
class MaybePassive(Protocol):
    """Instance or class hook: ``passive`` is true for a device that sleeps and reports when it wakes
    (an NB-IoT push device): probe waits longer and doctor does not wait for it at all.
    """

    passive: bool


@runtime_checkable
class HasDoctor(Protocol):
    """Class hook: what ``fieldgate doctor`` checks on the host for this driver (BlueZ, serial ports).

    Called once per installed driver with its enabled devices (possibly none, for a finding such
    as "not applicable"); returns ``fieldgate.checks.Finding`` objects. Must not open the devices
    (doctor polls them itself, through the same driver).
    """

    @classmethod
    async def doctor(cls, devices: Sequence[DoctorDevice], timeout: float) -> list[Finding]: ...


#: Entry point group of the demo's (and tests') simulated devices: ``name = "pkg.module:Class"``.
SIMULATORS_GROUP = "fieldgate.simulators"


@runtime_checkable
class Simulator(Protocol):
    """What a ``fieldgate.simulators`` entry point builds, called with the demo's folder.

    ``start()`` brings the simulated devices up (raising ``ImportError`` when an optional
    dependency is missing), ``config`` then holds their device entries (YAML flow lines for
    the configuration's ``devices:``), ``notes`` one console line each; ``stop()`` ends them.
    """

    label: str  # what the devices are, for a "skipped" note ("Modbus simulators")
    config: list[str]
    notes: list[str]

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def simulator_factories() -> dict[str, EntryPoint]:
    """Installed simulators by name (not imported)."""
    return {ep.name: ep for ep in entry_points(group=SIMULATORS_GROUP)}


def connection_model(driver: DriverClass | type) -> type[BaseModel]:
    """The model of a driver's ``connection:`` section; ``NoConnection`` when it declares none."""
    return driver.Connection if isinstance(driver, HasConnection) else NoConnection


def create_driver(driver: DriverClass, ctx: AnyContext) -> AnyDriver:
    """The driver instance for one device: the class's declared factory, else the class itself."""
    if isinstance(driver, HasFactory):
        return driver.create(ctx)
    return driver(ctx)


def pushes(driver: object) -> bool:
    """Whether an instance is a push driver (it has ``run``): the supervisor runs it instead of polling."""
    return isinstance(driver, ServiceDriver)


def is_passive(driver: object) -> bool:
    """Whether a driver (instance or class) declares its device sleeps between reports."""
    return isinstance(driver, MaybePassive) and bool(driver.passive)


def driver_status(driver: object) -> dict[str, Any] | None:
    """The instance's ``status()`` report, or None when it offers none."""
    return driver.status() if isinstance(driver, Reports) else None


def raw_values(driver: object) -> dict[str, str]:
    """The instance's last raw values as text by point, empty when it offers none."""
    return dict(driver.last_raw()) if isinstance(driver, ShowsRaw) else {}


def can_write(driver: object) -> bool:
    """Whether an open driver instance offers the ``write`` hook (without it commands answer ``not_supported``)."""
    return isinstance(driver, Writes)


def bus_key(driver: DriverClass | type, connection: BaseModel) -> str | None:
    """The physical line a device is on, if drivers share one (e.g. a serial port)."""
    return driver.bus_of(connection) if isinstance(driver, SharesBus) else None


def available_drivers() -> dict[str, EntryPoint]:
    """Installed drivers by name (not imported)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


_cache: dict[str, DriverClass] = {}

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


def load_driver(name: str) -> DriverClass:
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
    if not _is_driver_class(cls):
        raise DriverUnavailable(f"entry point {ep.value!r} for driver {name!r} is not a driver class",
                                hint="a driver class has `name`, `Profile` and `poll` (polled) or `run` (push)")
    _cache[name] = cls
    return cls  # type: ignore[no-any-return]  # checked by _is_driver_class


def _is_driver_class(cls: object) -> bool:
    if not isinstance(cls, type) or not isinstance(getattr(cls, "name", None), str):
        return False
    profile = getattr(cls, "Profile", None)
    if not (isinstance(profile, type) and issubclass(profile, BaseProfile)):
        return False
    # A factory may hand out mode classes, so the class itself need not poll or run.
    return any(callable(getattr(cls, a, None)) for a in ("poll", "run", "create"))

