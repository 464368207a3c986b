"""The demo API the lead wires into `fieldgate demo`: its YAML lines run in a gateway and every device reports."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fieldgate.app import Gateway
from fieldgate.config import load_config_text
from fieldgate.outputs import MemoryOutput
from fieldgate_hwsim.coap_sim import CoapDemo


async def test_coap_demo_devices_report_through_a_gateway(tmp_path: Path) -> None:
    demo = CoapDemo()
    lines = await demo.start(tmp_path)
    try:
        assert len(lines) == 3 and demo.notes
        text = f"gateway: {{id: demo-gw, data_dir: {tmp_path / 'data'}, clock_check: off}}\ndevices:\n" + \
            "\n".join(lines) + "\n"
        out = MemoryOutput()
        gw = Gateway(load_config_text(text, str(tmp_path / "demo.yaml")), out)
        task = asyncio.create_task(gw.run())
        try:
            await out.wait_for(lambda o: all(o.by_device(d) for d in ("bin-level-1", "manhole-1", "climate-coap-1")),
                               15)
        finally:
            gw.request_stop()
            await asyncio.wait_for(task, 10)
    finally:
        await demo.stop()
    assert out.by_device("bin-level-1")[0]["metrics"]["distance"]["unit"] == "mm"
