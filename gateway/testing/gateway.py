"""A gateway running in the caller's event loop, for tests: config text in, clean stop out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from ..app import Gateway
from ..config import load_config_text
from ..runtime import running
from ..uplink import BufferedUplink


@asynccontextmanager
async def running_gateway(text: str, path: str = "t.yaml", *, ready_timeout: float = 10.0,
                          stop_timeout: float = 15.0) -> AsyncIterator[tuple[Gateway, BufferedUplink]]:
    """Run the gateway of config ``text`` (with its MQTT uplink) until the block ends, then stop it.

    Args:
        text: the YAML configuration.
        path: the name errors and relative paths refer to.
        ready_timeout: seconds to wait for the gateway to be ready.
        stop_timeout: seconds its clean stop may take.
    """
    # Built by the composition root, as ``fieldgate run`` builds it (buffer + MQTT uplink, no status page).
    async with running(load_config_text(text, path), ready_timeout=ready_timeout, stop_timeout=stop_timeout) as rt:
        assert isinstance(rt.output, BufferedUplink)
        yield rt.gateway, rt.output


async def until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Wait for a condition on a gateway running in this loop.

    It polls the predicate between loop turns (10 ms apart): the state it
    reads has no event of its own to wait on.

    Raises:
        AssertionError: it did not hold within ``timeout`` seconds (named by ``what``).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


__all__ = ["running_gateway", "until"]
