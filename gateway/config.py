"""The gateway configuration: one YAML file, validated in phases.

Phase 1 parses YAML (syntax, duplicate keys). Phase 2 validates the gateway
model. Phase 3 resolves each device: its driver, the driver's connection
model, and its profile (from the library or a path), validated with the
driver's profile model. Every phase runs to the end and all diagnostics are
reported at once, each with file:line:col and key path.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from .driver import DriverClass, available_drivers, bus_key, connection_model, load_driver
from .errors import ConfigError, DriverUnavailable
from .profile import BaseProfile, Model
from .units import ByteSize, Duration, Identifier, PositiveDuration, RelPath
from .validation import did_you_mean, validate_model
from .yamlsrc import Diagnostic, Path_, SourceMap, format_path, load_yaml, load_yaml_file

DEFAULT_CONFIG = Path("/etc/fieldgate/fieldgate.yaml")


class Secret(Model):
    """A secret read from a file or an environment variable, never written inline.

    Inline secrets end up in backups, screenshots and support tickets.
    """

    file: RelPath | None = Field(None, description="path of a file holding the secret (one line)")
    env: str | None = Field(None, description="name of an environment variable holding the secret")

    @model_validator(mode="before")
    @classmethod
    def _no_inline(cls, data: Any) -> Any:
        if isinstance(data, str | int | float):
            raise ValueError(
                "secrets are not written inline: use {file: /etc/fieldgate/secret} "
                "or {env: VARIABLE_NAME}"
            )
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> Secret:
        if (self.file is None) == (self.env is None):
            raise ValueError("give exactly one of 'file' or 'env'")
        return self

    def reveal(self) -> str:
        """Read the secret now (files can be rotated between reconnects).

        Raises:
            OSError: the file cannot be read.
            KeyError: the environment variable is not set.
        """
        if self.file is not None:
            return self.file.read_text(encoding="utf-8").strip("\r\n")
        assert self.env is not None
        return os.environ[self.env]

    def __repr__(self) -> str:
        return f"Secret(file={self.file!s})" if self.file else f"Secret(env={self.env})"


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
    """The uplink to an MQTT broker."""

    host: str
    port: int | None = Field(None, ge=1, le=65535, description="default 1883, or 8883 with tls")
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

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if v.startswith("/") or v.endswith("/"):
            raise ValueError("topic_prefix must not start or end with '/'")
        return v

    @property
    def effective_port(self) -> int:
        """The configured port, or the protocol default."""
        return self.port or (8883 if self.tls else 1883)


class BufferConfig(Model):
    """The durable store-and-forward buffer."""

    max_bytes: ByteSize = Field(256 * 1000**2, description="disk the buffer may use; oldest dropped beyond")
    max_age: Duration = Field(30 * 86400.0, description="readings older than this are dropped")
    durability: Literal["full", "normal"] = Field(
        "full", description="full: each commit survives a power cut; normal: only a crash"
    )
    flush_interval: PositiveDuration = Field(0.2, description="readings are committed in batches this often")
    spill_max: int = Field(10_000, ge=0, description="readings held in memory while the disk is full")
    max_pending: int = Field(
        50_000, ge=1000, description="readings waiting in memory for their commit; only when devices produce "
        "more than the disk stores does this fill up, and then the oldest are dropped (counted, announced)")


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
        host = self.listen.rsplit(":", 1)[0].strip("[]")
        if self.enabled and self.password is None and not _is_loopback(host):
            raise ValueError(
                f"the status page listens on {host}, beyond this machine: set web.password "
                "({file: ...} or {env: ...}) or listen on 127.0.0.1"
            )
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    devices: list[DeviceConfig] = Field(default_factory=list)


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


def library_profiles(extra_dirs: list[Path] | None = None) -> dict[str, Path]:
    """All profiles by library name (``vendor/model``), later dirs first wins."""
    out: dict[str, Path] = {}
    for base in [builtin_profile_dir(), *(extra_dirs or [])]:
        if base.is_dir():
            for p in sorted(base.rglob("*.yaml")):
                out[p.relative_to(base).with_suffix("").as_posix()] = p
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
        for path, message, severity in profile.checks():
            out.add(smap, (*prefix, *path), message, severity)
    return profile, out.items


def load_profile_file(path: Path, driver: DriverClass | None = None) -> tuple[BaseProfile | None, list[Diagnostic]]:
    """Load one profile file; the driver comes from its ``driver`` key if not given."""
    data, smap, diags = load_yaml_file(path)
    if diags and data is None:
        return None, diags
    out = _Collector()
    out.items.extend(diags)
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


def load_config_text(text: str, file: str) -> LoadedConfig:
    """Validate a configuration given as text (``file`` names it in errors).

    Raises:
        ConfigError: with every diagnostic (errors and warnings) found.
    """
    data, smap, diags = load_yaml(text, file)
    out = _Collector()
    out.items.extend(diags)
    if data is None:
        if not diags:
            out.add(smap, (), "the configuration file is empty")
        raise ConfigError(out.items)
    cfg, more = validate_model(GatewayConfig, data, smap, context={"base": Path(file).parent})
    out.items.extend(more)
    raw_devices = data.get("devices") if isinstance(data, dict) else None
    profile_dirs = cfg.gateway.profile_dirs if cfg is not None else []
    seen: dict[str, int] = {}
    devices: list[DeviceSpec] = []
    for i, raw in enumerate(raw_devices if isinstance(raw_devices, list) else []):
        if not isinstance(raw, dict):
            continue
        dev_id = raw.get("id")
        if isinstance(dev_id, str):
            if dev_id in seen:
                out.add(smap, ("devices", i, "id"), f"device id {dev_id!r} is already used by devices[{seen[dev_id]}]")
            seen.setdefault(dev_id, i)
        # Resolve driver, connection and profile even when other keys of this
        # device (or of the file) are wrong, so one run shows every problem.
        spec = _resolve_device(raw, i, smap, Path(file).parent, profile_dirs, out)
        if spec is not None and cfg is not None:
            devices.append(DeviceSpec(cfg.devices[i], *spec))
    if out.errors or cfg is None:
        raise ConfigError(out.items)
    return LoadedConfig(Path(file), cfg, devices, warnings=out.items)


def _resolve_device(raw: dict[str, Any], i: int, smap: SourceMap, base: Path, profile_dirs: list[Path],
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
        path = _find_profile(ref, base, profile_dirs)
        source = ref
        if path is None:
            names = library_profiles(profile_dirs)
            out.add(smap, (*where, "profile"),
                    f"profile {ref!r} not found{did_you_mean(ref, names)} "
                    f"(library names look like 'vendor/model'; paths end in .yaml)")
        else:
            data, psmap, pdiags = load_yaml_file(path)
            out.items.extend(pdiags)
            if data is not None:
                profile, diags = load_profile(data, psmap, driver)
                out.items.extend(diags)
    if profile is None or connection is None or len(out.errors) > errors_before:
        return None
    bus = raw.get("bus") if isinstance(raw.get("bus"), str) else bus_key(driver, connection)
    return driver, profile, connection, source, bus


def _find_profile(ref: str, base: Path, profile_dirs: list[Path]) -> Path | None:
    if ref.endswith((".yaml", ".yml")) or ref.startswith((".", "/")):
        p = Path(ref)
        p = p if p.is_absolute() else base / p
        return p if p.is_file() else None
    return library_profiles(profile_dirs).get(ref)


def load_config(path: Path) -> LoadedConfig:
    """Read and validate a configuration file.

    Raises:
        ConfigError: with every diagnostic found.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        diag = Diagnostic(str(path), 1, 1, "", f"cannot read configuration: {exc.strerror or exc}")
        raise ConfigError([diag]) from exc
    return load_config_text(text, str(path))


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
