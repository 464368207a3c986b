"""End to end in headless Chromium: a running gateway with simulated devices, seen through its status page.

Uses Debian's ``chromium`` driven by Playwright (``playwright`` from PyPI, never ``playwright install``).
Screenshots go to ``test-artifacts/web/``.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fieldgate.config import WebConfig
from fieldgate.web import start_web
from fieldgate.web.logring import LogRing

from .conftest import ARTIFACTS, PASSWORD, Running
from .test_api import BROKEN_PROFILE, _cli_validate

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed "
                                "(apt-get install chromium); `make test` installs it")
playwright_api = pytest.importorskip("playwright.async_api", reason="pip install playwright (no browser download)")

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class Browser:
    """One Chromium with an empty profile; collects page errors (a JS error fails the test)."""

    def __init__(self, context: Any, base: str) -> None:
        self.context = context
        self.base = base.rstrip("/")
        self.errors: list[str] = []

    def _console(self, msg: Any) -> None:
        # HTTP answers such as the 401 of a wrong password are logged by Chromium too; they are not JS errors
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            self.errors.append(f"console: {msg.text}")

    async def page(self, path: str = "/", **viewport: int) -> Any:
        page = await self.context.new_page()
        if viewport:
            await page.set_viewport_size(viewport)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._console)
        await page.goto(self.base + path)
        return page


async def _browser(tmp_path: Path, url: str, locale: str = "en-GB") -> AsyncIterator[Browser]:
    async with playwright_api.async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=ARGS,
            viewport={"width": 1280, "height": 900}, locale=locale, timezone_id="Europe/Berlin")
        context.set_default_timeout(15_000)
        b = Browser(context, url)
        try:
            yield b
        finally:
            await context.close()
        assert b.errors == []


@pytest.fixture
async def browser(running: Running, tmp_path: Path, ring: LogRing) -> AsyncIterator[Browser]:
    """Chromium looking at the status page of ``running`` (loopback, no password)."""
    server = await start_web(running.gw, running.out, WebConfig(listen="127.0.0.1:0"), interval=0.2,
                             log_ring=ring)
    try:
        async for b in _browser(tmp_path, server.url):
            yield b
    finally:
        await server.close()


def shot(name: str) -> str:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return str(ARTIFACTS / name)


async def test_overview_and_devices_pages_show_the_gateway(browser: Browser, running: Running) -> None:
    expect = playwright_api.expect
    page = await browser.page("/")
    await expect(page.locator("[data-field=gateway]")).to_have_text("gw-web")
    await expect(page.locator("tr[data-device=meter-1] .state")).to_have_text("online")
    await expect(page.locator("tr[data-device=air-1] .state")).to_have_text("online")
    await expect(page.locator("#live")).to_have_text("live")
    # timestamps: local time on the page, UTC on hover
    stamp = page.locator("tr[data-device=meter-1] time")
    assert (await stamp.get_attribute("title")).startswith("UTC 20")
    await page.screenshot(path=shot("overview.png"), full_page=True)
    page = await browser.page("/devices")
    await expect(page.locator("tr[data-device=meter-1] .values li").first).to_contain_text("voltage")
    await page.screenshot(path=shot("devices.png"), full_page=True)
    phone = await browser.page("/devices", width=390, height=844)
    await expect(phone.locator("tr[data-device=meter-1] .state")).to_have_text("online")
    await phone.screenshot(path=shot("devices-phone.png"), full_page=True)


async def test_device_page_updates_live_and_shows_a_broken_device(browser: Browser, running: Running) -> None:
    expect = playwright_api.expect
    page = await browser.page("/devices/meter-1")
    energy = page.locator("tr[data-metric=energy] .value")
    await expect(energy).not_to_have_text("\u2013")
    first = await energy.text_content()
    await page.evaluate("window.__notReloaded = true")
    await page.wait_for_function(
        "first => document.querySelector('tr[data-metric=energy] .value').textContent !== first", arg=first)
    assert await page.evaluate("window.__notReloaded") is True  # updated in place, no page reload
    await expect(page.locator("#device-state")).to_have_text("online")
    await expect(page.locator("#driver-status")).to_contain_text("fault_rate")  # the driver's own report
    assert "null" not in await page.locator("#main").inner_text()  # no absent value rendered as text
    await page.screenshot(path=shot("device-live.png"), full_page=True)

    running.control.write_text("timeout")  # break the simulated meter
    await expect(page.locator("#device-state")).to_have_text("offline")
    await expect(page.locator("#device-error")).to_contain_text("simulated timeout")
    await expect(page.locator("#device-events li").first).to_contain_text("went offline: simulated timeout")
    assert "null" not in await page.locator("#device-events").inner_text()
    await page.screenshot(path=shot("device-offline.png"), full_page=True)
    assert await page.evaluate("window.__notReloaded") is True

    events = await browser.page("/events")
    await expect(events.locator("#events")).to_contain_text("meter-1 went offline")
    assert "=" not in await events.locator("#events").inner_text()  # sentences, not key=value lines
    await events.select_option("#filter-kind", "device_state")
    await expect(events.locator("#events li").first).to_have_attribute("data-kind", "device_state")
    await expect(events.locator("#log")).to_contain_text("simulated timeout")
    await events.screenshot(path=shot("events.png"), full_page=True)

    running.control.write_text("none")  # heal it
    await expect(page.locator("#device-state")).to_have_text("online")


async def test_profile_check_page_shows_the_cli_errors(browser: Browser, tmp_path: Path) -> None:
    expect = playwright_api.expect
    (tmp_path / "bad-meter.yaml").write_text(BROKEN_PROFILE)
    cli = await asyncio.to_thread(_cli_validate, tmp_path, "bad-meter.yaml")
    page = await browser.page("/check")
    await page.fill("#profile-text", BROKEN_PROFILE)
    await page.fill("#profile-name", "bad-meter.yaml")
    await page.click("#check")
    await expect(page.locator("#diagnostics li")).to_have_text(cli[:-1])
    await expect(page.locator("#check-summary")).to_contain_text(cli[-1])
    await page.screenshot(path=shot("profile-check.png"), full_page=True)
    # uploading a file works the same way
    await page.set_input_files("#profile-file", str(tmp_path / "bad-meter.yaml"))
    await expect(page.locator("#profile-name")).to_have_value("bad-meter.yaml")
    await page.fill("#profile-text", "schema_version: 1\ndriver: sim\n")
    await page.click("#check")
    await expect(page.locator("#diagnostics li").first).to_contain_text("bad-meter.yaml:")


async def test_login_page_guards_the_status_page(running: Running, tmp_path: Path) -> None:
    expect = playwright_api.expect
    secret = tmp_path / "web.password"
    secret.write_text(PASSWORD + "\n")
    cfg = WebConfig(listen="127.0.0.1:0", password={"file": secret})  # type: ignore[arg-type]
    server = await start_web(running.gw, running.out, cfg, interval=0.2, log_ring=LogRing())
    try:
        async for b in _browser(tmp_path, server.url):
            page = await b.page("/devices")
            await expect(page).to_have_url(server.url + "login?next=/devices")
            await page.fill("#password", "not it")
            await page.click("#login")
            await expect(page.locator("#login-msg")).to_have_text("Wrong password.")
            await page.screenshot(path=shot("login.png"))
            await page.fill("#password", PASSWORD)
            await page.click("#login")
            await expect(page).to_have_url(server.url + "devices")
            await expect(page.locator("tr[data-device=meter-1] .state")).to_have_text("online")
            cookies = {c["name"]: c for c in await b.context.cookies()}
            assert cookies["fg_session"]["httpOnly"] and cookies["fg_session"]["sameSite"] == "Strict"
            await page.click("#logout")
            await expect(page).to_have_url(server.url + "login")
            # ?next= leads only to a page of this gateway: "/\evil" and "/<tab>/evil" are "//evil" to a browser
            for evil in ("/%5Cevil.example/", "/%09/evil.example/"):  # (an absolute URL fails the same check)
                page = await b.page(f"/login?next={evil}")
                await page.fill("#password", PASSWORD)
                await page.click("#login")
                # a redirect off the gateway fails here (no such page), and the URL says where it went
                await expect(page.locator("#logout")).to_be_visible()
                assert page.url.startswith(server.url), (evil, page.url)
                await page.click("#logout")
                await expect(page).to_have_url(server.url + "login")
                await page.close()
    finally:
        await server.close()


def test_artifacts_folder_is_ignored_by_git() -> None:
    gitignore = (Path(__file__).parents[2] / ".gitignore").read_text()
    assert "/test-artifacts/" in gitignore and shutil.which("git") is not None


# Layout shift (the Web Vitals CLS sum) seen by the page from its first paint, collected from the start.
CLS_INIT = """window.__cls = 0; new PerformanceObserver((list) => {
  for (const e of list.getEntries()) if (!e.hadRecentInput) window.__cls += e.value;
}).observe({ type: "layout-shift", buffered: true });"""


@pytest.mark.slow  # eight page loads, each watched over five live redraws: about 20 s on a busy machine
async def test_pages_do_not_jump_while_loading_or_on_live_updates(browser: Browser, running: Running) -> None:
    """Content that moves under a thumb makes an operator tap the wrong thing (CLS < 0.1 is "good")."""
    await browser.context.add_init_script(CLS_INIT)
    for path in ("/", "/devices", "/devices/meter-1", "/devices/meter-1?metric=voltage"):
        for width, height in [(1280, 800), (390, 844)]:
            page = await browser.page(path, width=width, height=height)
            await page.wait_for_function("() => (window.__renders || 0) >= 2", timeout=30_000)
            if path.startswith("/devices/"):
                await page.wait_for_function("() => window.__commandsReady === true", timeout=30_000)
            loading = await page.evaluate("() => window.__cls")
            await page.evaluate("() => { window.__cls = 0; window.__r0 = window.__renders; }")
            await page.wait_for_function("() => window.__renders - window.__r0 >= 5", timeout=30_000)
            updates = await page.evaluate("() => window.__cls")
            assert loading < 0.1 and updates < 0.01, (path, width, loading, updates)
            await page.close()


async def test_devices_can_be_filtered_and_the_filter_survives_live_updates(browser: Browser, running: Running
                                                                            ) -> None:
    expect = playwright_api.expect
    for width, height in [(1280, 800), (390, 844)]:
        page = await browser.page("/devices", width=width, height=height)
        await expect(page.locator("tr[data-device]")).to_have_count(2)
        await page.fill("#device-filter", "air")
        await expect(page.locator("tr[data-device]")).to_have_count(1)
        await expect(page.locator("tr[data-device=air-1]")).to_be_visible()
        await page.evaluate("() => { window.__r0 = window.__renders; }")
        await page.wait_for_function("() => window.__renders - window.__r0 >= 3", timeout=30_000)
        await expect(page.locator("tr[data-device]")).to_have_count(1)
        assert await page.input_value("#device-filter") == "air"
        await expect(page.locator("#device-count")).to_contain_text("1 of 2")
        # the problems-only switch: both are online, so nothing is shown, and it says so
        await page.fill("#device-filter", "")
        await page.check("#device-problems")
        await expect(page.locator("tr[data-device]")).to_have_count(0)
        await expect(page.locator("#device-count")).to_contain_text("0 of 2")
        running.control.write_text("timeout")
        await expect(page.locator("tr[data-device=meter-1]")).to_be_visible(timeout=20_000)
        running.control.write_text("none")
        await expect(page.locator("tr[data-device]")).to_have_count(0, timeout=20_000)
        await page.close()


# Text whose colour is too close to its background (WCAG 2 AA: 4.5:1 for body text), as
# "text (ratio)". The background is the nearest ancestor's that is painted.
LOW_CONTRAST_JS = """() => {
  const rgb = (s) => (s.match(/[\\d.]+/g) || []).map(Number);
  const lin = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
  const lum = ([r, g, b]) => 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  const bgOf = (el) => { for (; el; el = el.parentElement) { const c = rgb(getComputedStyle(el).backgroundColor);
    if (c.length === 3 || c[3] > 0) return c.slice(0, 3); } return [255, 255, 255]; };
  const out = [];
  for (const el of document.querySelectorAll("body *")) {
    if (![...el.childNodes].some((n) => n.nodeType === 3 && n.data.trim())) continue;
    if (!el.getClientRects().length || getComputedStyle(el).visibility === "hidden") continue;
    const r = ratio(rgb(getComputedStyle(el).color).slice(0, 3), bgOf(el));
    const what = `${el.tagName.toLowerCase()}.${el.className} "${el.textContent.trim().slice(0, 20)}"`;
    if (r < 4.5) out.push(`${what} (${r.toFixed(2)})`);
  }
  const u = (window.__charts || {}).buffer || Object.values(window.__charts || {})[0];
  if (u) {  // the axis labels are drawn on the canvas in the axis' stroke colour
    const stroke = u.axes[0].stroke(u, 0), probe = document.createElement("span");
    probe.style.color = stroke; document.body.append(probe);
    const r = ratio(rgb(getComputedStyle(probe).color), bgOf(u.root)); probe.remove();
    if (r < 4.5) out.push(`chart axis ${stroke} (${r.toFixed(2)})`);
  }
  return out;
}"""


async def test_text_contrast_in_light_and_dark_mode(browser: Browser, running: Running) -> None:
    expect = playwright_api.expect
    for scheme in ("light", "dark"):
        for path in ("/", "/devices", "/devices/meter-1?metric=voltage", "/quality", "/events"):
            page = await browser.page(path, width=1280, height=800)
            await page.emulate_media(color_scheme=scheme)
            await expect(page.locator("#main h1, #main .cards").first).to_be_visible()
            if path == "/devices/meter-1?metric=voltage":  # (no uplink here: the overview has no chart)
                await expect(page.locator("#main .chart canvas").first).to_be_visible()
            low = await page.evaluate(LOW_CONTRAST_JS)
            assert low == [], (scheme, path, low)
            if path == "/":
                await page.screenshot(path=shot(f"overview-{scheme}.png"), full_page=True)
            await page.close()


async def test_times_are_24_hour_in_a_12_hour_locale(running: Running, tmp_path: Path, ring: LogRing) -> None:
    """en-US formats times as "2:05:09 PM"; the page, its timeline and its charts say 14:05:09 everywhere."""
    expect = playwright_api.expect
    server = await start_web(running.gw, running.out, WebConfig(listen="127.0.0.1:0"), interval=0.2, log_ring=ring)
    try:
        async for b in _browser(tmp_path, server.url, locale="en-US"):
            page = await b.page("/devices/meter-1?metric=voltage")
            await expect(page.locator("#state-timeline .seg").first).to_have_attribute("title", re.compile(r"."))
            await page.wait_for_function(
                "() => (window.__charts['metric:voltage'] || {data: [[]]}).data[0].length >= 3", timeout=30_000)
            texts = await page.evaluate("""() => [...document.querySelectorAll('#state-timeline .seg')]
              .map(s => s.title)
              .concat([...document.querySelectorAll('time')].map(t => t.textContent))
              .concat(window.__charts['metric:voltage'].axes[0]._values)""")
            assert texts and not [t for t in texts if re.search(r"\b(AM|PM|am|pm)\b|\d[ap]m", t)], texts
            assert all(re.search(r"\b\d\d:\d\d", t) for t in texts), texts
    finally:
        await server.close()
