"""The status page of a real ``fieldgate run`` process with a real mosquitto uplink, in headless Chromium.

The gateway runs as its own process with simulated devices; the broker is the test's mosquitto,
stopped and started to make an outage. Every page is checked at desktop and phone width for
horizontal overflow and for ``[object`` text (a JavaScript value rendered as a string).
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from ..conftest import Proc
from ..support.broker import Mosquitto
from .conftest import GatewayProcess, process_yaml, start_gateway_process
from .test_browser import CHROMIUM, Browser, _browser, playwright_api, shot

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")

SIZES = [(1280, 900), (390, 844)]

# Elements wider than the viewport, or reaching past its right edge (what makes a phone page scroll sideways).
OVERFLOW_JS = """() => {
  const w = document.documentElement.clientWidth, out = [];
  if (document.documentElement.scrollWidth > w) out.push(`document ${document.documentElement.scrollWidth}px`);
  for (const el of document.querySelectorAll('body *')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    if (r.right > w + 0.5 || r.width > w + 0.5)
      out.push(`${el.tagName.toLowerCase()}#${el.id}.${el.className} ${Math.round(r.right)}px`);
  }
  return out.slice(0, 10);
}"""


@pytest.fixture
async def gateway(tmp_path: Path, mosquitto: Mosquitto, fieldgate_proc: Callable[..., Proc]
                  ) -> AsyncIterator[GatewayProcess]:
    """``fieldgate run`` with meter-1 and air-1, forwarding to the test's mosquitto."""
    gp = await asyncio.to_thread(start_gateway_process, fieldgate_proc, tmp_path / "gw",
                                 process_yaml(tmp_path / "gw", mqtt_port=mosquitto.port))
    yield gp
    assert "Traceback" not in gp.lines()


@pytest.fixture
async def browser(gateway: GatewayProcess, tmp_path: Path) -> AsyncIterator[Browser]:
    async for b in _browser(tmp_path, gateway.url):
        yield b


def api(gp: GatewayProcess, path: str) -> Any:
    with urllib.request.urlopen(gp.url + path, timeout=10) as resp:
        return json.loads(resp.read())


async def assert_fits(page: Any) -> None:
    """No horizontal overflow and no JavaScript object rendered as text."""
    assert await page.evaluate(OVERFLOW_JS) == []
    assert "[object" not in await page.evaluate("() => document.body.innerText")
    assert "[object" not in await page.content()


async def test_overview_shows_buffer_numbers_with_mqtt_up_and_fits_desktop_and_phone(
        browser: Browser, gateway: GatewayProcess) -> None:
    expect = playwright_api.expect
    for width, height in SIZES:
        page = await browser.page("/", width=width, height=height)
        await expect(page.locator("[data-field=uplink-state]")).to_have_text("connected")
        await expect(page.locator("[data-field=buffer-depth]")).to_have_text(re.compile(r"^\d+$"))
        await expect(page.locator("[data-field=buffer-dropped]")).to_have_text("0")
        await expect(page.locator("[data-field=buffer-bytes]")).to_contain_text("B")
        await expect(page.locator("[data-field=buffer-oldest]")).not_to_be_empty()
        await expect(page.locator("tr[data-device=meter-1] .state")).to_have_text("online")
        await assert_fits(page)
        for path in ("/devices", "/devices/meter-1", "/quality", "/events", "/check"):
            other = await browser.page(path, width=width, height=height)
            await expect(other.locator("#main h1")).to_be_visible()
            await assert_fits(other)
            await other.close()
        await page.close()


async def test_buffer_depth_rises_while_the_broker_is_down_and_drains_after(
        browser: Browser, gateway: GatewayProcess, mosquitto: Mosquitto) -> None:
    expect = playwright_api.expect
    page = await browser.page("/")
    depth = page.locator("[data-field=buffer-depth]")
    await expect(page.locator("[data-field=uplink-state]")).to_have_text("connected")
    await asyncio.to_thread(mosquitto.stop)
    await expect(page.locator("[data-field=uplink-state]")).not_to_have_text("connected")
    await expect(page.locator("[data-field=uplink-rate]")).to_have_text("\u2013")  # no rate while disconnected
    await page.wait_for_function("() => +document.querySelector('[data-field=buffer-depth]').textContent >= 20",
                                 timeout=30_000)
    high = int(await depth.text_content() or 0)
    await asyncio.to_thread(mosquitto.start)
    await expect(page.locator("[data-field=uplink-state]")).to_have_text("connected", timeout=30_000)
    await page.wait_for_function("() => +document.querySelector('[data-field=buffer-depth]').textContent < 10",
                                 timeout=30_000)
    assert high >= 20
    # the overview's buffer chart shows the hill: up while the broker was away, down to the drained depth
    await page.wait_for_function(
        """() => { const u = window.__charts.buffer; if (!u) return false;
                   const v = u.data[1].filter((x) => x !== null);
                   return v.length && Math.max(...v) >= 20 && v[v.length - 1] < 10; }""", timeout=30_000)
    await assert_fits(page)
    await page.screenshot(path=shot("overview-after-outage.png"), full_page=True)


async def test_device_error_is_not_red_once_the_device_recovered(browser: Browser, gateway: GatewayProcess) -> None:
    expect = playwright_api.expect
    page = await browser.page("/")
    cell = page.locator("tr[data-device=meter-1] [data-field=last-error]")
    gateway.control.write_text("timeout")
    await expect(page.locator("tr[data-device=meter-1] .state")).to_have_text("offline", timeout=20_000)
    await expect(cell).to_contain_text("simulated timeout")
    assert "current" in (await cell.get_attribute("class") or "")
    gateway.control.write_text("none")
    await expect(page.locator("tr[data-device=meter-1] .state")).to_have_text("online", timeout=20_000)
    await expect(cell).to_contain_text("recovered")
    color = await cell.evaluate("el => getComputedStyle(el).color")
    red = await page.evaluate("() => { const e = document.createElement('span'); e.className = 'err';"
                              " document.body.append(e); const c = getComputedStyle(e).color; e.remove(); return c; }")
    assert color != red, "a recovered device's old error is still shown in red"
    assert "current" not in (await cell.get_attribute("class") or "")
    # the data-quality page puts the device that lost readings first
    quality = await browser.page("/quality")
    await expect(quality.locator("#quality tbody tr").first).to_have_attribute("data-device", "meter-1")
    await expect(quality.locator("tr[data-device=meter-1] td[data-label=Hour]")).to_have_class(re.compile(r"\berr\b"))
    await assert_fits(quality)


async def test_reload_feedback_survives_the_live_redraw(browser: Browser, gateway: GatewayProcess) -> None:
    expect = playwright_api.expect
    page = await browser.page("/")
    await expect(page.locator("tr[data-device=meter-1] .state")).to_have_text("online")
    await page.click("#reload")
    msg = page.locator("#reload-msg")
    await expect(msg).to_contain_text("applied")
    # five seconds and several live redraws later, the result is still there until dismissed
    await page.evaluate("() => { window.__t0 = Date.now(); window.__r0 = window.__renders || 0; }")
    await page.wait_for_function("() => Date.now() - window.__t0 >= 5000 && (window.__renders || 0) - window.__r0 >= 3",
                                 timeout=30_000, polling=250)
    await expect(msg).to_contain_text("applied")
    await page.screenshot(path=shot("reload-feedback.png"))
    await page.click("#reload-dismiss")
    await expect(msg).to_have_count(0)
    # a broken file is refused, with its errors, and the running configuration stays
    good = gateway.config.read_text()
    gateway.config.write_text(good.replace("poll_interval: 0.2s", "poll_interval: fast"))
    try:
        await page.click("#reload")
        await expect(msg).to_contain_text("refused")
        await expect(msg.locator("li").first).to_contain_text("fieldgate.yaml:")
        await page.wait_for_function("() => (window.__renders || 0) - window.__r0 >= 6", timeout=30_000, polling=250)
        await expect(msg).to_contain_text("refused")
        await expect(page.locator("tr[data-device=meter-1] .state")).to_have_text("online")
    finally:
        gateway.config.write_text(good)


async def test_overview_of_a_stdout_gateway_renders_and_fits(tmp_path: Path, fieldgate_proc: Callable[..., Proc]
                                                             ) -> None:
    expect = playwright_api.expect
    gp = await asyncio.to_thread(start_gateway_process, fieldgate_proc, tmp_path / "gw",
                                 process_yaml(tmp_path / "gw"), stdout=True)
    async for b in _browser(tmp_path, gp.url):
        for width, height in SIZES:
            page = await b.page("/", width=width, height=height)
            await expect(page.locator("[data-field=uplink-state]")).to_have_text("no uplink")
            await expect(page.locator("#main")).to_contain_text("readings printed to stdout")
            await expect(page.locator("#main")).to_contain_text("none (no MQTT uplink configured)")
            await expect(page.locator("tr[data-device=air-1] .state")).to_have_text("online")
            await assert_fits(page)
            await page.close()
    assert "Traceback" not in gp.lines()


async def test_device_chart_points_are_the_history_api_points(browser: Browser, gateway: GatewayProcess) -> None:
    expect = playwright_api.expect
    for width, height in SIZES:
        page = await browser.page("/devices/meter-1", width=width, height=height)
        await expect(page.locator("tr[data-metric=voltage] .value")).not_to_have_text("\u2013")
        await page.click("tr[data-metric=voltage]")  # the chart opens on tap
        await expect(page.locator("#device-chart canvas")).to_be_visible()
        await page.wait_for_function("() => (window.__charts['metric:voltage'] || {data: [[]]}).data[0].length >= 5",
                                     timeout=30_000)
        chart = await page.evaluate("() => window.__charts['metric:voltage'].data.slice(0, 2)")
        hist = await asyncio.to_thread(api, gateway, "/api/v1/devices/meter-1/history?metric=voltage&since=3600")
        api_points = dict(zip(hist["metrics"][0]["points"]["t"], hist["metrics"][0]["points"]["v"], strict=True))
        assert len(chart[0]) >= 5
        for t, v in zip(*chart, strict=True):
            if v is None and t not in api_points:
                continue  # a gap the chart marks where the device sent nothing
            assert api_points.get(t) == v, (t, v)
        await expect(page.locator("#state-timeline .seg").last).to_have_attribute("data-state", "online")
        await assert_fits(page)
        await page.close()


async def test_screenshots_of_overview_and_device_page(browser: Browser, gateway: GatewayProcess,
                                                       mosquitto: Mosquitto) -> None:
    """The pictures in docs/img (copied from test-artifacts/web/docs-*.png when the page changes).

    Before them: a short broker outage (the buffer hill) and a meter that failed and recovered.
    """
    expect = playwright_api.expect
    page = await browser.page("/")
    await expect(page.locator("[data-field=uplink-state]")).to_have_text("connected")
    gateway.control.write_text("timeout")
    await asyncio.to_thread(mosquitto.stop)
    await page.wait_for_function("() => +document.querySelector('[data-field=buffer-depth]').textContent >= 30",
                                 timeout=30_000)
    gateway.control.write_text("none")
    await asyncio.to_thread(mosquitto.start)
    await page.wait_for_function("() => +document.querySelector('[data-field=buffer-depth]').textContent < 5",
                                 timeout=30_000)
    await expect(page.locator("tr[data-device=meter-1] [data-field=last-error]")).to_contain_text("recovered")
    await page.close()
    for width, height, tag in [(1280, 900, "desktop"), (390, 844, "phone")]:
        page = await browser.page("/", width=width, height=height)
        await expect(page.locator("[data-field=uplink-state]")).to_have_text("connected")
        await page.wait_for_function("() => window.__charts.buffer && window.__charts.buffer.data[0].length >= 3",
                                     timeout=30_000)
        await assert_fits(page)
        await page.screenshot(path=shot(f"docs-overview-{tag}.png"), full_page=True)
        page = await browser.page("/devices/meter-1?metric=voltage", width=width, height=height)
        await page.wait_for_function("() => (window.__charts['metric:voltage'] || {data: [[]]}).data[0].length >= 5",
                                     timeout=30_000)
        if width > 600:  # phones show no sparkline column: the chart is a tap away
            await expect(page.locator("tr[data-metric=energy] .spark-cell canvas")).to_have_attribute(
                "data-points", re.compile(r"^[1-9]\d*$"))
        await assert_fits(page)
        await page.screenshot(path=shot(f"docs-device-{tag}.png"), full_page=True)
