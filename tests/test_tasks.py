"""cancel_and_wait: stopping a child task never swallows the cancellation of the one stopping it.

The CI run of 2026-12-02 hung at shutdown: a Modbus poll, stopping pymodbus's call after a
wrong-function answer, was cancelled by the shutdown while it waited, swallowed that
cancellation with the child's, and went on polling.
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest
from fieldgate.tasks import cancel_and_wait

from .conftest import REPO


async def _slow_to_stop(release: asyncio.Event) -> None:
    """A child that takes a while to finish once cancelled (as a library call cleaning up does)."""
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        await release.wait()
        raise


async def test_the_callers_cancellation_survives_the_wait() -> None:
    release = asyncio.Event()
    child = asyncio.create_task(_slow_to_stop(release))
    await asyncio.sleep(0)  # the child runs up to its wait
    waiting = asyncio.Event()

    async def parent() -> str:
        waiting.set()
        await cancel_and_wait(child)
        return "carried on"  # what the old idiom did: the shutdown was lost

    p = asyncio.create_task(parent())
    await waiting.wait()
    await asyncio.sleep(0)  # the parent now waits for the child
    p.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await p
    assert child.cancelled()


async def test_the_childs_own_cancellation_and_failure_are_consumed() -> None:
    child = asyncio.create_task(asyncio.Event().wait())
    await asyncio.sleep(0)
    await cancel_and_wait(child)
    assert child.cancelled()

    async def boom() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    failing = asyncio.create_task(boom())
    await asyncio.sleep(0)
    await cancel_and_wait(failing)  # no exception: the caller is stopping it
    done = asyncio.get_running_loop().create_future()
    done.set_exception(ValueError("x"))
    await cancel_and_wait(done)  # already failed: retrieved, no warning at exit


def _swallowing_waits(path: Path) -> list[int]:
    """Lines of ``with suppress(CancelledError): await x`` in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lines = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.With)
                and any("CancelledError" in ast.unparse(item.context_expr) for item in node.items)
                and any(isinstance(n, ast.Await) for stmt in node.body for n in ast.walk(stmt))):
            lines.append(node.lineno)
    return lines


def test_no_code_swallows_cancellation_while_it_waits() -> None:
    found = [f"{p.relative_to(REPO)}:{line}" for root in ("gateway", "drivers", "hw-sim")
             for p in sorted((REPO / root).rglob("*.py")) for line in _swallowing_waits(p)]
    assert not found, f"use fieldgate.tasks.cancel_and_wait instead of suppress(CancelledError) + await: {found}"
