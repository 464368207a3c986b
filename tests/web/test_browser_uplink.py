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
    over = await page.evaluate(OVERFLOW_JS)
    assert over == [], over
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
            # no empty chart box: there is no buffer or rate to draw
            await expect(page.locator("#main")).to_contain_text("nothing to chart")
            await expect(page.locator("#trend-chart")).to_have_count(0)
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


# --- from outside, the way an operator meets it: outages, a dead gateway, a phone, large text ---

# Lines of text a run of letters and digits (a host name, an address, a port) is spread over:
# a URL may break between its parts, never inside "37005".
SPLIT_WORDS_JS = """(el) => {
  const text = el.textContent, out = [];
  const node = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
  const chars = [];
  for (let n = node.nextNode(); n; n = node.nextNode())
    for (let i = 0; i < n.data.length; i++) {
      const r = document.createRange(); r.setStart(n, i); r.setEnd(n, i + 1);
      chars.push([n.data[i], Math.round(r.getBoundingClientRect().top)]);
    }
  let word = [];
  for (const [c, top] of [...chars, [" ", 0]]) {
    if (/[A-Za-z0-9]/.test(c)) { word.push([c, top]); continue; }
    if (new Set(word.map((w) => w[1])).size > 1) out.push(word.map((w) => w[0]).join(""));
    word = [];
  }
  return out;
}"""

# Interactive elements smaller than 44 x 44 CSS px (Apple's and WCAG 2.5.5's touch target); a
# field inside its label is tapped through the label.
SMALL_TARGETS_JS = """() => [...document.querySelectorAll('a[href], button, select, input, [role=button]')]
  .filter((el) => el.offsetParent !== null)
  .map((el) => [el, (el.tagName === "INPUT" && el.closest("label") || el).getBoundingClientRect()])
  .filter(([el, r]) => r.height < 44 || r.width < 44)
  .map(([el, r]) => `${el.tagName.toLowerCase()} "${(el.textContent || el.id).trim().slice(0, 24)}" `
       + `${Math.round(r.width)}x${Math.round(r.height)}`)"""


async def test_broker_url_and_chart_times_read_at_a_glance(browser: Browser, gateway: GatewayProcess) -> None:
    """The broker's address breaks only between its parts; the chart's times are 24-hour."""
    expect = playwright_api.expect
    page = await browser.page("/", width=1280, height=800)
    broker = page.locator("[data-field=uplink-broker]")
    await expect(broker).to_contain_text("mqtt://127.0.0.1:")
    assert await broker.evaluate(SPLIT_WORDS_JS) == []
    await page.wait_for_function("() => window.__charts.buffer && window.__charts.buffer.data[0].length >= 3",
                                 timeout=30_000)
    # uPlot keeps the labels it drew on its canvas in the axis' _values (a private field, read by tests only)
    labels = await page.evaluate("() => window.__charts.buffer.axes[0]._values")
    assert labels and all(re.fullmatch(r"\d\d:\d\d(:\d\d)?(\n\d{4}-\d\d-\d\d)?", x) for x in labels), labels
    for phrase in ("am", "pm", ".000"):
        assert not any(phrase in x.lower() for x in labels), labels


async def test_phone_targets_are_big_enough_and_large_text_fits(browser: Browser, gateway: GatewayProcess) -> None:
    expect = playwright_api.expect
    for path in ("/", "/devices", "/devices/meter-1", "/quality", "/events", "/check"):
        page = await browser.page(path, width=390, height=844)
        await expect(page.locator("#main h1, #main .cards").first).to_be_visible()
        await expect(page.locator("#main")).not_to_contain_text("Loading")
        assert await page.evaluate(SMALL_TARGETS_JS) == [], path
        await page.close()
    # the reader's font size (Chromium's setting, which sets the root font size) is honoured and fits
    for width, height in [(390, 844), (1280, 800)]:
        page = await browser.page("/", width=width, height=height)
        await expect(page.locator("[data-field=uplink-state]")).to_have_text("connected")
        await page.evaluate("() => { document.documentElement.style.fontSize = '200%'; }")
        assert await page.evaluate("() => parseFloat(getComputedStyle(document.body).fontSize)") >= 32
        await assert_fits(page)
        await page.close()
    # 200 % zoom on a desktop is a 640 px wide page at twice the pixels
    page = await browser.page("/devices/meter-1?metric=voltage", width=640, height=400)
    await expect(page.locator("#device-chart canvas")).to_be_visible()
    await assert_fits(page)
    await page.screenshot(path=shot("zoom-200-device.png"), full_page=True)


async def test_broker_down_says_since_when_and_how_much_waits(
        browser: Browser, gateway: GatewayProcess, mosquitto: Mosquitto) -> None:
    expect = playwright_api.expect
    page = await browser.page("/", width=390, height=844)
    await expect(page.locator("[data-field=uplink-state]")).to_have_text("connected")
    assert await page.locator("#uplink-alert").count() == 0
    await asyncio.to_thread(mosquitto.stop)
    alert = page.locator("#uplink-alert")
    await expect(alert).to_contain_text("not getting out", timeout=20_000)
    await expect(alert).to_contain_text(re.compile(r"since \d\d:\d\d:\d\d"))
    await page.wait_for_function("() => +document.querySelector('[data-field=buffer-depth]').textContent >= 5",
                                 timeout=30_000)
    await expect(alert).to_contain_text(re.compile(r"[1-9]\d* reading\(s\) wait in the buffer"))
    await expect(page.locator("[data-field=uplink-since]")).to_contain_text(re.compile(r"\d\d:\d\d:\d\d"))
    await assert_fits(page)
    await page.screenshot(path=shot("broker-down-phone.png"), full_page=True)
    await asyncio.to_thread(mosquitto.start)
    await expect(page.locator("[data-field=uplink-state]")).to_have_text("connected", timeout=30_000)
    await expect(alert).to_have_count(0)


@pytest.mark.slow  # a kill -9, then up to one 10 s poll of /quality before it notices: about 15 s
async def test_a_dead_gateway_leaves_a_page_that_says_it_is_stale(browser: Browser, gateway: GatewayProcess) -> None:
    """kill -9 the gateway: the page must not keep showing green as if all were well."""
    expect = playwright_api.expect
    pages = {}
    for path in ("/", "/devices/meter-1", "/quality"):
        pages[path] = await browser.page(path, width=390, height=844)
        await expect(pages[path].locator("#main h1, #main .cards").first).to_be_visible()
        await expect(pages[path].locator("#stale")).to_have_count(0)
    gateway.proc.popen.kill()
    await asyncio.to_thread(gateway.proc.popen.wait, 10)
    for path, page in pages.items():
        stale = page.locator("#stale")
        await expect(stale).to_contain_text("No contact with the gateway", timeout=20_000)
        await expect(stale).to_contain_text(re.compile(r"from \d\d:\d\d:\d\d"))
        assert await page.evaluate("() => document.body.classList.contains('stale')"), path
        # no green "online"/"connected" badge keeps its colour under the stale banner
        assert await page.evaluate("() => getComputedStyle(document.getElementById('main')).filter") != "none"
        await assert_fits(page)
    await pages["/"].screenshot(path=shot("stale-phone.png"), full_page=True)


async def test_overview_lists_devices_with_a_problem_first(tmp_path: Path, fieldgate_proc: Callable[..., Proc]
                                                           ) -> None:
    """With dozens of devices, the broken one must not be a screen down: problems come first."""
    expect = playwright_api.expect
    text = process_yaml(tmp_path / "gw")
    head, devices = text.split("devices:\n")
    meter, air = devices.splitlines(keepends=True)
    gp = await asyncio.to_thread(start_gateway_process, fieldgate_proc, tmp_path / "gw",
                                 head + "devices:\n" + air + meter, stdout=True)  # the meter listed last
    async for b in _browser(tmp_path, gp.url):
        page = await b.page("/", width=390, height=844)
        rows = page.locator("#main table.devices tbody tr")
        await expect(rows.first).to_have_attribute("data-device", "air-1")  # all fine: the configured order
        gp.control.write_text("timeout")
        await expect(rows.first).to_have_attribute("data-device", "meter-1", timeout=20_000)
        await expect(rows.first.locator(".state")).to_have_text("offline")
        gp.control.write_text("none")
        await expect(rows.first).to_have_attribute("data-device", "air-1", timeout=20_000)
    assert "Traceback" not in gp.lines()
