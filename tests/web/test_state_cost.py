"""What the status page's state hub does per tick (issue 16: cheap with nobody watching, little with a client)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from .conftest import MakeClient, hub_of


async def test_a_live_document_builds_each_device_once(make_client: MakeClient,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The live stream's document (overview + devices) builds each device's document once, not twice."""
    hub = hub_of(await make_client())
    built: Counter[str] = Counter()
    real = hub.device

    def counting(dev_id: str, **kw: Any) -> Any:
        built[dev_id] += 1
        return real(dev_id, **kw)

    monkeypatch.setattr(hub, "device", counting)
    doc = hub.live()
    assert {d["id"] for d in doc["devices"]} == {"meter-1", "air-1"}
    assert doc["status"]["devices"]["total"] == 2
    assert built == {"meter-1": 1, "air-1": 1}


async def test_an_idle_tick_builds_no_document(make_client: MakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no live stream subscribed a tick samples the trends and builds no device document."""
    hub = hub_of(await make_client())
    built: list[str] = []
    real = hub.device
    monkeypatch.setattr(hub, "device", lambda dev_id, **kw: built.append(dev_id) or real(dev_id, **kw))
    for _ in range(3):
        assert hub.tick() is None
    assert built == []
    q = hub.subscribe()
    try:
        assert hub.tick() is not None
        assert sorted(built) == ["air-1", "meter-1"]
    finally:
        hub.unsubscribe(q)
