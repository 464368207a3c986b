"""A gateway with its MQTT uplink running in the test's event loop, and waiting without sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fieldgate.app import Gateway
from fieldgate.config import load_config_text
from fieldgate.runtime import running
from fieldgate.uplink import BufferedUplink


@asynccontextmanager
async def running_gateway(text: str, path: str = "t.yaml") -> AsyncIterator[tuple[Gateway, BufferedUplink]]:
    """Run the gateway of config ``text`` until the block ends (then stop it cleanly).

    Built by the composition root, as ``fieldgate run`` builds it (buffer + MQTT uplink, no status page).
    """
    async with running(load_config_text(text, path)) as rt:
        assert isinstance(rt.output, BufferedUplink)
        yield rt.gateway, rt.output


async def until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Wait for a condition by yielding to the loop (the gateway runs in it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
