"""The composition root: the one place that builds a running gateway from a loaded configuration.

``fieldgate run``, ``fieldgate demo`` and the tests' running-gateway helper all build
here: the output (stdout, or the durable buffer with its MQTT uplink, opened before
any device polls), the supervisor (:class:`~fieldgate.app.Gateway`) and the status
page. The command-line modules only parse arguments, install signal handlers and
print; none of them imports another (cli and demo used to import each other).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .config import GatewayConfig, LoadedConfig
from .errors import GatewayError
from .fanout import Output
from .supervisor import Gateway

if TYPE_CHECKING:
    from .commands import CommandExecutor
    from .commands.mqtt import CommandListener

log = logging.getLogger("fieldgate")

# The buffer's worker thread gives up the GIL for every SQLite step (each row read back for a
# replay is one step) and must then wait for the event loop to hand it back: by default only after
# 5 ms of a busy loop. A 5000-row read of a backlog then takes seconds while PUBACKs wait behind it;
# at 0.5 ms it takes tens of ms (bench/pipeline.py: drain 358k -> 443k values/s). Process-wide, so
# it is set here, where the process is composed, not by the uplink.
_SWITCH_INTERVAL_S = 0.0005


class NoUplink(GatewayError):
    """The configuration has no ``mqtt`` section and stdout was not asked for (a configuration problem)."""

    def __init__(self, file: str) -> None:
        super().__init__(f"{file}: no 'mqtt' section: add one to forward readings, or run with --stdout to print them")


async def make_output(cfg: GatewayConfig, *, stdout: bool = False, file: str = "the configuration") -> Output:
    """Stdout, or the durable buffer with its MQTT uplink (opened: the buffer is ready before devices poll).

    Raises:
        NoUplink: no ``mqtt`` section and not ``stdout``.
    """
    if stdout:
        from .outputs import StdoutOutput

        return StdoutOutput()
    if cfg.mqtt is None:
        raise NoUplink(file)
    from .uplink import BufferedUplink

    sys.setswitchinterval(min(sys.getswitchinterval(), _SWITCH_INTERVAL_S))
    uplink: BufferedUplink
    if cfg.mqtt.format == "sparkplug":  # exclusive: the Sparkplug edge node replaces the JSON output
        try:
            from .sparkplug.output import SparkplugUplink
        except ImportError as exc:
            raise GatewayError(f"mqtt.format sparkplug needs the sparkplug extra ({exc})",
                               hint="pip install 'fieldgate[sparkplug]'") from exc
        uplink = SparkplugUplink(cfg)
    else:
        uplink = BufferedUplink(cfg)
    await uplink.start()
    return uplink


class StatusPage(Protocol):
    """A started status page (:class:`~fieldgate.web.deferred.DeferredWebServer`)."""

    url: str

    async def close(self) -> None: ...


async def start_status_page(gw: Gateway, output: Output, cfg: GatewayConfig) -> StatusPage | None:
    """Start the status page if enabled; a missing extra or a taken port is logged, not fatal.

    The page listens and records from now on; its HTTP server (aiohttp, ~12 MiB) is loaded only
    when the first client connects (:mod:`fieldgate.web.deferred`).
    """
    if not cfg.web.enabled:
        return None
    if importlib.util.find_spec("aiohttp") is None:
        log.warning("the status page needs the web extra: pip install 'fieldgate[web]'")
        return None
    from .web.deferred import start_web_deferred

    try:
        server = await start_web_deferred(gw, output, cfg.web)
    except GatewayError as exc:
        log.error("%s; running without the status page", exc)
        return None
    log.info("status page on %s", server.url)
    return server


async def start_commands(gw: Gateway, output: Output,
                         cfg: GatewayConfig) -> tuple[CommandExecutor | None, CommandListener | None]:
    """The command executor (and its MQTT listener) when ``commands.enabled``; sets ``gw.commands``.

    Fails closed: a store that cannot be opened leaves commands off (logged), since without it
    "at most once" could not be kept.
    """
    if not cfg.commands.enabled:
        return None, None
    from .commands import CommandExecutor, CommandStore, StoreUnavailable
    from .commands.mqtt import CommandListener
    from .uplink import BufferedUplink

    store = CommandStore(cfg.gateway.data_dir, remember=cfg.commands.remember,
                         remember_max=cfg.commands.remember_max)
    try:
        unfinished = await asyncio.to_thread(store.open)
    except StoreUnavailable as exc:
        log.error("%s; commands are off", exc)
        # Named on the events topic too: a site sees its commands go unanswered, not the gateway's log.
        gw.announce("commands_unavailable", file=str(store.path), error=str(exc.__cause__ or exc),
                    hint="commands stay off until the store can be opened: move the damaged file aside "
                         "(its command ids are then forgotten) and restart")
        return None, None
    executor = CommandExecutor(cfg.gateway.id, cfg.commands, store, gw.runners.get, gw.announce,
                               clock_synced=lambda: gw.clock.synced)
    executor.settle_unfinished(unfinished)
    gw.commands = executor
    listener = None
    if getattr(output, "kind", None) == "sparkplug":
        # Sparkplug is the whole MQTT interface then: commands come as DCMD, not on JSON topics.
        output.commands = executor  # type: ignore[attr-defined]  # SparkplugUplink (an optional extra)
    elif isinstance(output, BufferedUplink):
        listener = CommandListener(executor, output)
        listener.start()
    log.info("commands enabled for %d device(s): %s", len(cfg.commands.allow), ", ".join(cfg.commands.allow) or "none")
    return executor, listener


class Integration(Protocol):
    """A part built beside the uplink (remote configuration, Home Assistant discovery)."""

    async def close(self) -> None: ...


async def start_integrations(gw: Gateway, output: Output, loaded: LoadedConfig,
                             loader: Callable[[], LoadedConfig] | None) -> list[Integration]:
    """Remote configuration and Home Assistant discovery, when the configuration enables them (issue 21)."""
    cfg = loaded.config
    if not (cfg.remote_config.enabled or cfg.homeassistant.enabled):
        return []
    from .uplink import BufferedUplink

    if not isinstance(output, BufferedUplink):
        log.warning("remote_config and homeassistant need the MQTT uplink; off while printing to stdout")
        return []
    out: list[Integration] = []
    if cfg.remote_config.enabled:
        if loader is None:
            log.warning("remote_config needs the gateway's configuration file (fieldgate run -c FILE); off")
        else:
            from .remote_config import RemoteConfig

            remote = RemoteConfig(gw, output, loaded.path)
            await remote.start()
            out.append(remote)
    if cfg.homeassistant.enabled:
        from .hass import HassDiscovery

        hass = HassDiscovery(gw, output)
        hass.start()
        out.append(hass)
    return out


@dataclass(slots=True)
class Runtime:
    """A built gateway: its supervisor, its output and (when enabled and startable) its status page."""

    gateway: Gateway
    output: Output
    web: StatusPage | None = None
    commands: CommandExecutor | None = None
    listener: CommandListener | None = None
    integrations: list[Integration] = field(default_factory=list)

    async def run(self) -> None:
        """Run the gateway until it is asked to stop; the status page and commands close with it."""
        try:
            await self.gateway.run()
        finally:
            if self.listener is not None:
                await self.listener.close()
            if self.commands is not None:
                self.commands.store.close()
            for part in self.integrations:
                await part.close()
            if self.web is not None:
                await self.web.close()


async def build(loaded: LoadedConfig, *, output: Output | None = None, stdout: bool = False,
                loader: Callable[[], LoadedConfig] | None = None, web: bool = True) -> Runtime:
    """The gateway of ``loaded``: the output (given, stdout, or buffer + uplink), supervisor and status page.

    Args:
        loaded: the validated configuration.
        output: use this output instead of building one (tests' memory output, a demo's reuse).
        stdout: print readings instead of buffering and forwarding them.
        loader: re-reads the configuration for reloads (SIGHUP, the page's button).
        web: start the status page when the configuration enables it.

    Raises:
        NoUplink: no ``mqtt`` section and neither ``output`` nor ``stdout``.
    """
    out = output if output is not None else await make_output(loaded.config, stdout=stdout, file=str(loaded.path))
    gw = Gateway(loaded, out, loader=loader)
    commands, listener = await start_commands(gw, out, loaded.config)
    server = await start_status_page(gw, out, loaded.config) if web else None
    return Runtime(gw, out, server, commands, listener, await start_integrations(gw, out, loaded, loader))


@contextlib.asynccontextmanager
async def running(loaded: LoadedConfig, *, output: Output | None = None, stdout: bool = False,
                  loader: Callable[[], LoadedConfig] | None = None, web: bool = False,
                  ready_timeout: float = 10.0, stop_timeout: float = 15.0) -> AsyncIterator[Runtime]:
    """Build and run the gateway in this event loop until the block ends, then stop it cleanly.

    Waits until every device task has started; a gateway that fails before that raises its error.
    """
    rt = await build(loaded, output=output, stdout=stdout, loader=loader, web=web)
    task = asyncio.create_task(rt.run(), name="gateway")
    ready = asyncio.create_task(rt.gateway.ready.wait(), name="gateway-ready")
    try:
        done, _ = await asyncio.wait({task, ready}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # its error, or:
            raise GatewayError("the gateway stopped before it was ready")
        if ready not in done:
            raise GatewayError(f"the gateway was not ready within {ready_timeout:g} s")
        yield rt
    finally:
        ready.cancel()
        rt.gateway.request_stop()
        await asyncio.wait_for(task, stop_timeout)  # a failed gateway's error surfaces here
