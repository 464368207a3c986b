"""What a reload (SIGHUP, or the status page's button) may change while the gateway runs.

Every key of the configuration is in exactly one of two places: applied live, or
named as taking effect after a restart. :func:`plan_reload` compares two
configurations key by key and says which of the changed keys are which, so the
supervisor can log and announce both lists (``config_reloaded`` event with
``applied`` and ``restart_required``) and nothing is silently ignored.

Why each key is where it is:

* ``devices``: started, stopped and restarted one by one (the supervisor).
* ``gateway.profile_dirs``: profiles are resolved when the file is loaded; a
  device whose profile changed is restarted with the new one.
* ``gateway.shutdown_timeout``: read when the stop begins.
* ``mqtt.*``: the uplink hands over to a new connection (other broker, prefix,
  credentials, TLS, limits). Buffered readings stay buffered across the switch.
* ``buffer.flush_interval``, ``buffer.max_pending``, ``buffer.max_pending_bytes``, ``buffer.keep_acked``:
  read on every turn.
* ``gateway.id`` and ``gateway.data_dir``: the identity of every seq and the file
  holding them; switching them half-way would mix two gateways' data.
* ``gateway.clock_check``: the clock monitor is shared by every device runner.
* ``buffer.max_bytes``, ``max_age``, ``durability``, ``spill_max``: settings of the
  open database (its pragmas and reserve are chosen when it opens).
* ``web.*``: the status page's listening socket and its password hash are made at
  start; it is not worth a window without a status page to swap them live.
* ``remote_config.*``, ``homeassistant.*``: built with the uplink at start (their
  subscriptions, probation and retained discovery messages).
* ``mqtt`` added or removed: the kind of output (buffer and MQTT, or none) is
  chosen at start.
* ``commands.allow``, ``rate``, ``devices``, ``max_queued``: read by the executor
  for every command, so revoking a device stops its writes at once.
* ``commands.enabled``, ``remember``, ``remember_max``: the store and the command
  subscription are opened at start.
* ``mqtt.format`` and ``sparkplug.*``: the output (JSON or a Sparkplug edge node) and
  the edge node's ids are chosen at start (a host pairs births and deaths by them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from .config import GatewayConfig, LoadedConfig
from .secret import Secret

LIVE_KEYS = frozenset({
    "gateway.profile_dirs", "gateway.shutdown_timeout",
    "buffer.flush_interval", "buffer.max_pending", "buffer.max_pending_bytes", "buffer.keep_acked",
    "commands.allow", "commands.rate", "commands.devices", "commands.max_queued",
})
LIVE_SECTIONS = frozenset({"mqtt", "devices"})
RESTART_KEYS = frozenset({
    "gateway.id", "gateway.data_dir", "gateway.clock_check",
    "buffer.max_bytes", "buffer.max_age", "buffer.durability", "buffer.spill_max",
    "web.enabled", "web.listen", "web.password", "web.allowed_hosts", "web.history_max_bytes", "web.commands",
    "commands.enabled", "commands.remember", "commands.remember_max",
    "mqtt.format", "sparkplug.group_id", "sparkplug.edge_node_id", "sparkplug.primary_host_id",
    "sparkplug.stale_state_wait",
    # Built at start beside the uplink (runtime.py): their subscriptions and retained messages.
    "remote_config.enabled", "remote_config.probation", "remote_config.min_online", "remote_config.max_bytes",
    "homeassistant.enabled", "homeassistant.discovery_prefix",
})

RELOAD_TIME_LIMIT_S = 15.0
"""The whole apply (stopping changed devices, starting new ones) is bounded by this."""


@dataclass(slots=True)
class ReloadPlan:
    """The changed keys of a reload, split by when they take effect (dotted paths, sorted)."""

    applied: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)


async def read_config(loader: Callable[[], LoadedConfig]) -> LoadedConfig:
    """Run ``loader`` (the file and every profile it names) in a worker thread.

    Parsing is CPU work: on the event loop a big or hostile file stalled every device's polls for
    as long as it took. The loader bounds itself (its ``Budget`` counts the CPU time of the thread
    it runs in, ``yamlsrc.DEFAULT_TIME_LIMIT``), so the thread always ends; a cancelled await (a
    shutdown during a reload) leaves it to finish and drops the result.

    Raises:
        ConfigError: the new file is refused, with every diagnostic.
    """
    return await asyncio.to_thread(loader)


def _leaves(model: BaseModel | None, prefix: str) -> dict[str, Any]:
    """Dotted key → value for the fields of ``model`` (``mqtt.tls`` and ``mqtt.batch`` are flattened)."""
    if model is None:
        return {}
    out: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = f"{prefix}.{name}"
        if isinstance(value, BaseModel) and not isinstance(value, Secret) and prefix == "mqtt":
            for sub, leaf in _leaves(value, key).items():
                out[sub] = leaf
        else:
            out[key] = value
    return out


def plan_reload(old: GatewayConfig, new: GatewayConfig) -> ReloadPlan:
    """Which changed keys apply now and which wait for a restart."""
    plan = ReloadPlan()
    if (old.mqtt is None) != (new.mqtt is None):
        plan.restart_required.append("mqtt")
    elif old.mqtt is not None:
        before, after = _leaves(old.mqtt, "mqtt"), _leaves(new.mqtt, "mqtt")
        changed = [k for k in sorted(before.keys() | after.keys()) if before.get(k) != after.get(k)]
        plan.applied += [k for k in changed if k not in RESTART_KEYS]
        plan.restart_required += [k for k in changed if k in RESTART_KEYS]
    for section in ("gateway", "buffer", "web", "commands", "sparkplug", "remote_config", "homeassistant"):
        before = _leaves(getattr(old, section), section)
        after = _leaves(getattr(new, section), section)
        for key in sorted(before.keys() | after.keys()):
            if before.get(key) == after.get(key):
                continue
            # A key added to the models later and not sorted into either list waits for a restart:
            # never claim to apply what nobody applies (test_reload checks every key is sorted).
            (plan.applied if key in LIVE_KEYS else plan.restart_required).append(key)
    if old.devices != new.devices:
        plan.applied.append("devices")
    plan.applied.sort()
    plan.restart_required.sort()
    return plan
