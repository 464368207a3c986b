"""The gateway configuration: one YAML file, validated in phases.

Phase 1 parses YAML (syntax, duplicate keys). Phase 2 validates the gateway
model. Phase 3 resolves each device: its driver, the driver's connection
model, and its profile (from the library or a path), validated with the
driver's profile model. Every phase runs to the end and all diagnostics are
reported at once, each with file:line:col and key path.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ModelWrapValidatorHandler, ValidationError, field_validator, model_validator

from .driver import DriverClass, available_drivers, bus_key, connection_model, load_driver
from .errors import ConfigError, DriverUnavailable
from .listen import ListenAddress, is_loopback
from .profile import BaseProfile, Model, raw_point_checks
from .secret import Secret  # also importable from here, as before the move
from .units import ByteSize, Duration, Identifier, PositiveDuration, RelPath
from .validation import did_you_mean, internal_error, validate_model
from .yamlsrc import (
    Budget,
    Diagnostic,
    Path_,
    SourceMap,
    format_path,
    load_yaml,
    load_yaml_file,
    read_source,
)

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("/etc/fieldgate/fieldgate.yaml")


class TlsConfig(Model):
    """TLS for the MQTT connection. The broker's certificate is always verified."""

    ca_file: RelPath | None = Field(None, description="CA bundle to verify the broker; system CAs if absent")
    cert_file: RelPath | None = Field(None, description="client certificate (mutual TLS)")
    key_file: RelPath | None = Field(None, description="client private key (mutual TLS)")
    key_password: Secret | None = None
    server_name: str | None = Field(
        None, description="name the broker's certificate must carry (and sent as SNI), when mqtt.host is an "
        "address or another name; verification stays on")

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS)")
        return self


class BatchConfig(Model):
    """Pack several readings into one batch message on ``{prefix}/{gw}/readings``."""

    enabled: bool = False
    max_readings: int = Field(100, ge=2, le=10_000)
    when: Literal["always", "backlog"] = Field(
        "backlog", description="backlog: batch only while replaying after an outage"
    )


class MqttConfig(Model):
    """The uplink to an MQTT broker (or to one of several: ``hosts``)."""

    host: str | None = Field(None, description="the broker; or list several in hosts")
    port: int | None = Field(None, ge=1, le=65535, description="default 1883, or 8883 with tls")
    hosts: list[str] = Field(
        default_factory=list,
        description="brokers to fail over between, in order ('host' or 'host:port', '[v6]:port'); the uplink "
        "stays on the one it reached until it fails, then tries the next; same TLS and login for all")
    protocol: Literal["3.1.1", "5"] = "5"
    client_id: str | None = Field(None, description="default fieldgate-<gateway id>")
    topic_prefix: str = Field("fieldgate", pattern=r"^[^+#]+$")
    username: str | None = None
    password: Secret | None = None
    tls: TlsConfig | None = None
    keepalive: PositiveDuration = 30.0
    connect_timeout: PositiveDuration = 10.0
    inflight: int = Field(50, ge=1, le=1000, description="QoS 1 messages awaiting PUBACK at once")
    reconnect_min: PositiveDuration = 1.0
    reconnect_max: PositiveDuration = 60.0
    replay_rate: float | None = Field(
        None, gt=0, description="cap on messages/s while replaying a backlog (metered links)"
    )
    batch: BatchConfig = Field(default_factory=BatchConfig)
    format: Literal["json", "sparkplug"] = Field(
        "json", description="json: the fieldgate contract; sparkplug: a Sparkplug B 3.0 edge node instead "
        "(section sparkplug, docs/sparkplug.md)")

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if v.startswith("/") or v.endswith("/"):
            raise ValueError("topic_prefix must not start or end with '/'")
        return v

    @field_validator("hosts", mode="before")
    @classmethod
    def _one_host(cls, value: Any) -> Any:
        # `hosts: broker-a` means a list of one (and `hots: x` is suggested `hosts`, which must then work).
        return [value] if isinstance(value, str) else value

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for entry in value:
            split_endpoint(entry, 1)  # a ValueError names the bad entry
        if len(set(value)) != len(value):
            raise ValueError("a broker is listed twice")
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _broker_missing_too(cls, data: Any, handler: ModelWrapValidatorHandler[MqttConfig]) -> MqttConfig:
        # With other errors in the section the check below never runs; say the broker is missing
        # with them, so one run still shows every problem (as when `host` was simply required).
        try:
            return handler(data)
        except ValidationError as exc:
            named = not isinstance(data, dict) or data.get("host") is not None or bool(data.get("hosts"))
            if named or any(not e["loc"] for e in exc.errors()):  # named, or said by the check below
                raise
            errors: list[Any] = [*exc.errors(), {"type": "missing", "loc": ("host",), "input": data}]
            raise ValidationError.from_exception_data(exc.title, errors) from None

    @model_validator(mode="after")
    def _one_way_to_name_brokers(self) -> MqttConfig:
        if self.hosts and (self.host is not None or self.port is not None):
            raise ValueError("give either host (and port) or hosts, not both: with hosts, each entry carries "
                             "its port ('broker-a:8883')")
        if not self.hosts and self.host is None:
            raise ValueError("name the broker: host (and port), or hosts for several")
        return self

    @property
    def effective_port(self) -> int:
        """The configured port, or the protocol default."""
        return self.port or (8883 if self.tls else 1883)

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        """The brokers in the order they are tried: ``hosts``, or the single ``host``/``port``."""
        default = 8883 if self.tls else 1883
        if self.hosts:
            return [split_endpoint(entry, default) for entry in self.hosts]
        assert self.host is not None  # the validator above
        return [(self.host, self.port or default)]


def split_endpoint(entry: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` as (host, port).

    Raises:
        ValueError: the entry is not a host with an optional port in 1..65535.
    """
    host, port = entry, default_port
    if entry.startswith("["):
        end = entry.find("]")
        host, rest = entry[1:end], entry[end + 1:]
        if end < 0 or (rest and not rest.startswith(":")):
            raise ValueError(f"{entry!r}: write an IPv6 address as '[addr]:port'")
        rest = rest[1:]
    elif entry.count(":") == 1:
        host, rest = entry.split(":")
    else:
        rest = ""
    if rest:
        if not rest.isdigit() or not 1 <= int(rest) <= 65535:
            raise ValueError(f"{entry!r}: the port must be a number in 1..65535")
        port = int(rest)
    if not host or any(c in host for c in "/@?# "):
        raise ValueError(f"{entry!r} is not a broker address ('host' or 'host:port', no scheme)")
    return host, port


_SPARKPLUG_ID = r"^[^/+#]+$"  # no "/", "+" or "#" ([tck-id-topic-structure-namespace-valid-group-id])


class SparkplugConfig(Model):
    """The Sparkplug B edge node (with ``mqtt.format: sparkplug``)."""

    group_id: str | None = Field(None, pattern=_SPARKPLUG_ID,
                                 description="the Sparkplug group of this edge node (required by format sparkplug)")
    edge_node_id: str | None = Field(None, pattern=_SPARKPLUG_ID, description="default: the gateway id")
    primary_host_id: str | None = Field(
        None, pattern=_SPARKPLUG_ID, description="wait for this host application's STATE online before "
        "NBIRTH, and leave when it goes offline (Ignition: its Primary Host ID); absent: do not wait")
    stale_state_wait: Duration = Field(
        10.0, description="after a lost connection, a retained STATE online no newer than the one seen before "
        "may be a broker's saved copy of a host that is gone (the broker crashed with it): wait this long for "
        "a newer STATE before NBIRTH (readings stay buffered meanwhile); 0: trust it at once")


class BufferConfig(Model):
    """The durable store-and-forward buffer."""

    max_bytes: ByteSize = Field(256 * 1000**2, description="disk the buffer may use; oldest dropped beyond")
    max_age: Duration = Field(30 * 86400.0, description="readings older than this are dropped")
    durability: Literal["full", "normal"] = Field(
        "full", description="full: each commit survives a power cut; normal: only a crash"
    )
    flush_interval: PositiveDuration = Field(
        0.2, description="no longer used (commits are group commits: one starts as soon as readings wait "
        "and none is in flight); accepted so that older configs load")
    keep_acked: Duration = Field(
        5.0, description="a reading stays this long after the broker acknowledged it, and a reconnect sends "
        "it again: a broker killed before its next save lost what it acknowledged since (duplicates, never "
        "loss). Set it to at least the broker's save interval (mosquitto: autosave_interval); 0 deletes at once")
    spill_max: int = Field(10_000, ge=0, description="readings held in memory while the disk is full")
    max_pending: int = Field(
        50_000, ge=1000, description="readings waiting in memory for their commit; only when devices produce "
        "more than the disk stores does this fill up, and then the oldest are dropped (counted, announced)")
    max_pending_bytes: ByteSize = Field(
        16_000_000, ge=100_000, description="memory those readings may take (their JSON); the same policy "
        "beyond it. A 100-register reading is about 4 KB")


class WebConfig(Model):
    """The local status page."""

    enabled: bool = True
    listen: str = Field("127.0.0.1:8080", description="host:port; off loopback a password is required")
    password: Secret | None = None
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="more names the page answers to in Host (its DNS name, a proxy's); "
        "'*.example.org' allows subdomains. Loopback and the listen address are always allowed",
    )

    commands: bool = Field(
        False,
        description="the local API takes commands (the page's write form, `fieldgate write` through the "
        "service); needs commands.enabled and the device's allow as well",
    )
    history_max_bytes: ByteSize = Field(
        5_000_000,
        description="memory for the page's trends (about 5 KiB per metric for the hour and the day; "
        "with few metrics every reading of the hour is kept)",
    )

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, value: list[str]) -> list[str]:
        for name in value:
            bare = name[2:] if name.startswith("*.") else name
            if not bare or any(c in bare for c in "/:@?# *"):
                raise ValueError(f"{name!r} is not a host name (no scheme, port or path: e.g. gw-12.plant.example)")
        return value

    @model_validator(mode="after")
    def _password_off_loopback(self) -> WebConfig:
        host = ListenAddress.parse(self.listen).host  # a ValueError names the bad value
        if self.enabled and self.password is None and not is_loopback(host):
            raise ValueError(
                f"the status page listens on {host}, beyond this machine: set web.password "
                "({file: ...} or {env: ...}) or listen on 127.0.0.1"
            )
        return self


class CommandRate(Model):
    """How many commands one device takes: a token bucket (``rate`` per second, at most ``burst`` at once)."""

    rate: float = Field(0.5, gt=0, le=100, description="commands per second a device takes, on average")
    burst: int = Field(5, ge=1, le=1000, description="commands a device takes at once after a quiet spell")


class CommandsConfig(Model):
    """Downlink commands (writes, read-now) on ``{prefix}/{gw}/{dev}/cmd``: off unless enabled.

    Only the devices in ``allow`` take commands; every other device answers ``rejected``
    (``not_allowed``). See docs/commands.md for the safety rules and the broker ACL.
    """

    enabled: bool = Field(False, description="subscribe the command topics and execute commands")
    allow: list[Identifier] = Field(default_factory=list, description="ids of the devices that take commands")
    rate: CommandRate = Field(default_factory=CommandRate, description="per-device rate limit (default)")
    devices: dict[Identifier, CommandRate] = Field(
        default_factory=dict, description="per-device rate limits that differ from the default")
    max_queued: int = Field(4, ge=1, le=100, description="commands one device may have waiting; more are refused")
    remember: PositiveDuration = Field(
        7 * 86400.0, description="how long a command id is remembered (a repeat in this time is a duplicate)")
    remember_max: int = Field(100_000, ge=100, description="most command ids remembered; the oldest go first")

    def rate_of(self, device: str) -> CommandRate:
        """The rate limit of one device."""
        return self.devices.get(device, self.rate)


class RemoteConfigSection(Model):
    """Configuration sent over MQTT on ``{prefix}/{gw}/config/set`` (docs/fleet.md); off by default.

    Whoever may publish on that topic may reconfigure the gateway: allow it in the broker's ACL
    only to the fleet's operators.
    """

    enabled: bool = False
    probation: PositiveDuration = Field(
        60.0, description="after a remote change, the uplink must reconnect and the devices come online within "
        "this time, else the previous configuration is restored")
    min_online: float = Field(
        1.0, ge=0.0, le=1.0, description="share of the devices online before the change (and still configured) "
        "that must be online again within the probation")
    max_bytes: ByteSize = Field(1_000_000, description="a larger config/set message is refused unread")


class HomeAssistantSection(Model):
    """Home Assistant MQTT discovery (docs/fleet.md); off by default."""

    enabled: bool = False
    discovery_prefix: str = Field("homeassistant", pattern=r"^[^+#/][^+#]*[^+#/]$|^[^+#/]$")


class GatewaySection(Model):
    """Who this gateway is and where it keeps its state."""

    id: Identifier
    data_dir: RelPath = Path("/var/lib/fieldgate")
    profile_dirs: list[RelPath] = Field(default_factory=list, description="extra profile libraries")
    clock_check: Literal["auto", "off"] = Field(
        "auto", description="auto: flag readings clock=unsynced until the system clock is synchronized"
    )
    shutdown_timeout: PositiveDuration = 10.0

    @field_validator("clock_check", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        # YAML 1.1 reads an unquoted `off` as false; that is what people mean.
        return {False: "off", True: "auto"}.get(v, v) if isinstance(v, bool) else v


class DeviceConfig(Model):
    """One device the gateway polls or listens to."""

    id: Identifier
    driver: str
    profile: str | dict[str, Any] = Field(description="library name (vendor/model), a path, or inline")
    connection: dict[str, Any] = Field(default_factory=dict, description="driver-specific")
    poll_interval: PositiveDuration = 10.0
    timeout: PositiveDuration | None = Field(
        None, description="per poll, a guard against a hung driver; default 5s whatever the poll interval")
    tags: dict[str, str | int | float | bool] = Field(default_factory=dict)
    enabled: bool = True
    bus: str | None = Field(None, description="devices naming the same bus are polled one at a time")
    offline_after: int = Field(3, ge=1, description="failed polls in a row before the device is offline")
    backoff_max: PositiveDuration = Field(300.0, description="longest wait between retries of a failing device")

    @property
    def poll_timeout(self) -> float:
        """The timeout around one poll.

        Not tied to the poll interval: drivers time their own requests, and a guard as short as a
        fast interval timed out every device at once when the host stalled for that long.
        """
        return self.timeout if self.timeout is not None else 5.0


class GatewayConfig(Model):
    """The whole configuration file."""

    gateway: GatewaySection
    mqtt: MqttConfig | None = None
    buffer: BufferConfig = Field(default_factory=BufferConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    remote_config: RemoteConfigSection = Field(default_factory=RemoteConfigSection)
    homeassistant: HomeAssistantSection = Field(default_factory=HomeAssistantSection)
    devices: list[DeviceConfig] = Field(default_factory=list)
    commands: CommandsConfig = Field(default_factory=CommandsConfig)
    sparkplug: SparkplugConfig = Field(default_factory=SparkplugConfig)

    @model_validator(mode="after")
    def _sparkplug_section(self) -> GatewayConfig:
        if self.mqtt is not None and self.mqtt.format == "sparkplug" and self.sparkplug.group_id is None:
            raise ValueError("mqtt.format is sparkplug: add a sparkplug section with at least group_id")
        return self


@dataclass(slots=True)
class DeviceSpec:
    """A device with everything resolved: driver class, profile, connection."""

    config: DeviceConfig
    driver: DriverClass
    profile: BaseProfile
    connection: BaseModel
    profile_source: str
    bus: str | None

    def fingerprint(self) -> tuple[Any, ...]:
        """Equal when a reload leaves this device unchanged."""
        return (self.config, self.driver, self.profile, self.connection)


@dataclass(slots=True)
class LoadedConfig:
    """A validated configuration."""

    path: Path
    config: GatewayConfig
    devices: list[DeviceSpec]
    warnings: list[Diagnostic] = field(default_factory=list)


def builtin_profile_dir() -> Path:
    """The profile library shipped with fieldgate."""
    return Path(str(files("fieldgate.profiles")))


MAX_LIBRARY_ENTRIES = 20_000
"""Files and folders one profile library may hold: ``profile_dirs: [/]`` must not walk the whole disk."""


def _scan_library(base: Path, budget: Budget | None = None) -> tuple[dict[str, Path], str | None]:
    """Profiles below ``base`` by library name, and what stopped the walk early (or None).

    Symlinked folders are not followed (as ``Path.rglob`` did): a link to ``/`` or
    to a parent would loop or walk the disk. The walk is bounded in entries
    and by the load's deadline.
    """
    out: dict[str, Path] = {}
    pending = [base]
    seen = 0
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue  # unreadable folders hold no profiles we could load anyway
        for entry in entries:
            seen += 1
            if seen > MAX_LIBRARY_ENTRIES:
                return out, (f"more than {MAX_LIBRARY_ENTRIES} files and folders below {base}: "
                             "name the folder that holds the profiles")
            if seen & 1023 == 0 and budget is not None and budget.over_time():
                return out, budget.timeout_message()
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                elif entry.name.endswith(".yaml"):
                    rel = Path(entry.path).relative_to(base).with_suffix("").as_posix()
                    out.setdefault(rel, Path(entry.path))
            except OSError:
                continue
    return out, None


def entry_point_profile_dirs() -> list[Path]:
    """Profile packs of installed packages: each ``fieldgate.profiles`` entry point names a package folder."""
    out: list[Path] = []
    for ep in entry_points(group="fieldgate.profiles"):
        try:
            out.append(Path(str(files(ep.value))))
        except (ImportError, TypeError, ValueError) as exc:  # a broken pack must not stop the gateway
            log.warning("profile pack %r (%s) cannot be read: %s", ep.name, ep.value, exc)
    return out


def library_profiles(extra_dirs: list[Path] | None = None) -> dict[str, Path]:
    """All profiles by library name (``vendor/model``): shipped, then packs, then ``extra_dirs``; the later wins."""
    out: dict[str, Path] = {}
    for base in [builtin_profile_dir(), *entry_point_profile_dirs(), *(extra_dirs or [])]:
        if base.is_dir():
            out.update(_scan_library(base)[0])
    return out


class _Collector:
    def __init__(self) -> None:
        self.items: list[Diagnostic] = []

    def add(self, smap: SourceMap, path: Path_, message: str, severity: str = "error",
            prefer_key: bool = False) -> None:
        line, col = smap.position(path, prefer_key=prefer_key)
        self.items.append(Diagnostic(smap.file, line, col, format_path(path), message, severity))

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity == "error"]


def load_profile(
    data: Any, smap: SourceMap, driver: DriverClass, prefix: Path_ = ()
) -> tuple[BaseProfile | None, list[Diagnostic]]:
    """Validate profile data with a driver's profile model, plus semantic checks."""
    out = _Collector()
    if not isinstance(data, dict):
        out.add(smap, prefix, "a profile is a mapping with schema_version, driver, vendor, model, points")
        return None, out.items
    declared = data.get("driver")
    if declared is not None and declared != driver.name:
        out.add(smap, (*prefix, "driver"),
                f"this profile is for driver {declared!r}, but the device uses {driver.name!r}")
        return None, out.items
    profile, diags = validate_model(driver.Profile, data, smap, prefix)
    out.items.extend(diags)
    if profile is not None:
        try:
            checks = profile.checks()
        except Exception as exc:  # a driver's check must not turn a hostile file into a traceback
            out.add(smap, prefix, internal_error(f"{driver.name} profile checks", exc))
            return None, out.items
        for path, message, severity in checks:
            out.add(smap, (*prefix, *path), message, severity)
    else:
        # the schema failed, so the model's checks cannot run: the field checks still can, so one
        # pass reports them with the schema's errors instead of after the next edit
        for path, message, severity in raw_point_checks(data.get("points")):
            out.add(smap, (*prefix, *path), message, severity)
    return profile, out.items


def load_profile_file(path: Path, driver: DriverClass | None = None,
                      budget: Budget | None = None) -> tuple[BaseProfile | None, list[Diagnostic]]:
    """Load one profile file; the driver comes from its ``driver`` key if not given.

    ``budget`` bounds the file (size, values, aliases, time); a fresh default one if omitted.
    """
    data, smap, diags = load_yaml_file(path, budget)
    if diags and data is None:
        return None, diags
    out = _Collector()
    out.items.extend(diags)
    if data is None:
        out.add(smap, (), "the profile file is empty")
        return None, out.items
    if driver is None:
        name = data.get("driver") if isinstance(data, dict) else None
        if not isinstance(name, str):
            out.add(smap, ("driver",) if isinstance(data, dict) else (),
                    "required key is missing: which driver is this profile for?", prefer_key=True)
            return None, out.items
        try:
            driver = load_driver(name)
        except DriverUnavailable as exc:
            out.add(smap, ("driver",), str(exc))
            return None, out.items
    profile, more = load_profile(data, smap, driver)
    out.items.extend(more)
    return (profile if not out.errors else None), out.items


class _Load:
    """What one load of a configuration shares: its budget, the library, the profile files read."""

    def __init__(self, budget: Budget, profile_dirs: list[Path]) -> None:
        self.budget = budget
        self.profile_dirs = profile_dirs
        self._library: dict[str, Path] | None = None
        self.library_problems: list[tuple[int, str]] = []
        # A profile file named by many devices is read and validated once (and its errors said once).
        self.profiles: dict[tuple[Path, str], tuple[BaseProfile | None, bool]] = {}

    def library(self) -> dict[str, Path]:
        if self._library is None:
            self._library = {}
            # The shipped library, then installed profile packs, then the config's profile_dirs (later wins);
            # a problem is reported at the profile_dirs entry it comes from (-1: not from the config).
            bases = [(-1, builtin_profile_dir()), *((-1, d) for d in entry_point_profile_dirs()),
                     *enumerate(self.profile_dirs)]
            for i, base in bases:
                if base.is_dir():
                    found, problem = _scan_library(base, self.budget)
                    self._library.update(found)
                    if problem is not None:
                        self.library_problems.append((i, problem))
        return self._library


def load_config_text(text: str, file: str, budget: Budget | None = None) -> LoadedConfig:
    """Validate a configuration given as text (``file`` names it in errors).

    Args:
        text: the configuration.
        file: its name in errors; relative paths in it are taken from its folder.
        budget: limits and deadline of the whole load (the file and every profile it names);
            a fresh default one (:data:`~fieldgate.yamlsrc.DEFAULT_TIME_LIMIT`) if omitted.

    Raises:
        ConfigError: with every diagnostic (errors and warnings) found.
    """
    budget = budget or Budget()
    data, smap, diags = load_yaml(text, file, budget)
    out = _Collector()
    out.items.extend(diags)
    if data is None:
        if not diags:
            out.add(smap, (), "the configuration file is empty")
        raise ConfigError(out.items)
    cfg, more = validate_model(GatewayConfig, data, smap, context={"base": Path(file).parent})
    out.items.extend(more)
    raw_devices = data.get("devices") if isinstance(data, dict) else None
    load = _Load(budget, cfg.gateway.profile_dirs if cfg is not None else [])
    seen: dict[str, int] = {}
    devices: list[DeviceSpec] = []
    for i, raw in enumerate(raw_devices if isinstance(raw_devices, list) else []):
        if budget.over_time():
            out.add(smap, ("devices", i), budget.timeout_message())
            raise ConfigError(out.items)
        if not isinstance(raw, dict):
            continue
        dev_id = raw.get("id")
        if isinstance(dev_id, str):
            if dev_id in seen:
                out.add(smap, ("devices", i, "id"), f"device id {dev_id!r} is already used by devices[{seen[dev_id]}]")
            seen.setdefault(dev_id, i)
        # Resolve driver, connection and profile even when other keys of this
        # device (or of the file) are wrong, so one run shows every problem.
        spec = _resolve_device(raw, i, smap, Path(file).parent, load, out)
        if spec is not None and cfg is not None:
            devices.append(DeviceSpec(cfg.devices[i], *spec))
    for i, problem in load.library_problems:
        out.add(smap, ("gateway", "profile_dirs", i) if i >= 0 else (), problem)
    if cfg is not None:
        _check_command_devices(cfg, smap, out)
    if budget.over_time():
        out.add(smap, (), budget.timeout_message())
    if out.errors or cfg is None:
        raise ConfigError(out.items)
    return LoadedConfig(Path(file), cfg, devices, warnings=out.items)


def _check_command_devices(cfg: GatewayConfig, smap: SourceMap, out: _Collector) -> None:
    """``commands.allow`` and ``commands.devices`` name configured devices (each wrong one at its line)."""
    ids = {d.id for d in cfg.devices}
    for i, dev in enumerate(cfg.commands.allow):
        if dev not in ids:
            out.add(smap, ("commands", "allow", i), f"no device {dev!r}{did_you_mean(dev, ids)}")
    for dev in cfg.commands.devices:
        if dev not in ids:
            out.add(smap, ("commands", "devices", dev), f"no device {dev!r}{did_you_mean(dev, ids)}",
                    prefer_key=True)


def _resolve_device(raw: dict[str, Any], i: int, smap: SourceMap, base: Path, load: _Load,
                    out: _Collector) -> tuple[DriverClass, BaseProfile, BaseModel, str, str | None] | None:
    where: Path_ = ("devices", i)
    name = raw.get("driver")
    if not isinstance(name, str):
        return None
    try:
        driver = load_driver(name)
    except DriverUnavailable as exc:
        msg = str(exc) if name in available_drivers() else (
            f"unknown driver {name!r}{did_you_mean(name, available_drivers())}"
        )
        out.add(smap, (*where, "driver"), msg)
        return None
    errors_before = len(out.errors)
    connection, diags = validate_model(connection_model(driver), raw.get("connection") or {}, smap,
                                       (*where, "connection"))
    out.items.extend(diags)
    ref = raw.get("profile")
    profile: BaseProfile | None = None
    if isinstance(ref, dict):
        profile, diags = load_profile(ref, smap, driver, (*where, "profile"))
        source = "inline"
        out.items.extend(diags)
    elif isinstance(ref, str):
        path = _find_profile(ref, base, load)
        source = ref
        if path is None:
            names = load.library()
            out.add(smap, (*where, "profile"),
                    f"profile {ref!r} not found{did_you_mean(ref, names)} "
                    f"(library names look like 'vendor/model'; paths end in .yaml)")
        elif (path, driver.name) in load.profiles:
            profile, failed = load.profiles[(path, driver.name)]
            if failed:  # its errors were reported for the first device that named it
                out.add(smap, (*where, "profile"), f"profile {ref!r} has errors (reported above)")
        else:
            data, psmap, pdiags = load_yaml_file(path, load.budget)
            out.items.extend(pdiags)
            failed = data is None
            if data is not None:
                profile, diags = load_profile(data, psmap, driver)
                out.items.extend(diags)
                failed = profile is None or any(d.severity == "error" for d in (*pdiags, *diags))
            elif not pdiags:
                out.add(psmap, (), "the profile file is empty")
            load.profiles[(path, driver.name)] = (profile, failed)
    if profile is None or connection is None or len(out.errors) > errors_before:
        return None
    try:
        bus = raw.get("bus") if isinstance(raw.get("bus"), str) else bus_key(driver, connection)
    except Exception as exc:  # a driver's hook must not turn a hostile file into a traceback
        out.add(smap, (*where, "connection"), internal_error(f"{driver.name} bus key", exc))
        return None
    return driver, profile, connection, source, bus


def _find_profile(ref: str, base: Path, load: _Load) -> Path | None:
    if ref.endswith((".yaml", ".yml")) or ref.startswith((".", "/")):
        p = Path(ref)
        p = p if p.is_absolute() else base / p
        try:
            # Anything by that name (a folder, a FIFO, a link loop) is handed to the reader, which
            # names what it is; only a name that is not there at all is "not found".
            return p if os.path.lexists(p) else None
        except ValueError:  # a NUL in the name
            return None
    return load.library().get(ref)


def load_config(path: Path, budget: Budget | None = None) -> LoadedConfig:
    """Read and validate a configuration file.

    Args:
        path: the file.
        budget: limits and deadline of the whole load; a fresh default one if omitted,
            so that no file, however built, makes this hang.

    Raises:
        ConfigError: with every diagnostic found.
    """
    budget = budget or Budget()
    text, problem = read_source(path, budget, "configuration")
    if text is None:
        assert problem is not None
        raise ConfigError([problem])
    return load_config_text(text, str(path), budget)


def config_json_schema() -> dict[str, Any]:
    """JSON Schema of the configuration file (for editors)."""
    schema = GatewayConfig.model_json_schema(mode="validation")
    schema["title"] = "fieldgate configuration"
    return schema


def profile_json_schema() -> dict[str, Any]:
    """JSON Schema of a profile: one alternative per installed driver, by ``driver``."""
    from typing import Annotated, Union

    from pydantic import TypeAdapter

    models: list[type[BaseModel]] = []
    for name in sorted(available_drivers()):
        try:
            models.append(load_driver(name).Profile)
        except DriverUnavailable:
            continue
    if len(models) == 1:
        schema = models[0].model_json_schema()
    else:
        union = Annotated[Union[tuple(models)], Field(discriminator="driver")]  # type: ignore[valid-type]  # noqa: UP007
        schema = TypeAdapter(union).json_schema()  # type: ignore[arg-type]  # a union built at run time
    schema["title"] = "fieldgate device profile"
    return schema
