"""The Commands panel in headless Chromium on a phone-sized screen: the write form, its confirmation step, the result.

A gateway with a CoAP valve controller (hw-sim's aiocoap simulator counts the writes that reach it)
and its status page taking commands (``web.commands``). Screenshots go to ``test-artifacts/web/``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fieldgate.config import WebConfig
from fieldgate.web import start_web
from fieldgate.web.logring import LogRing

from .conftest import Valve
from .test_browser import CHROMIUM, _browser, playwright_api, shot

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
PHONE = {"width": 390, "height": 844}


@contextlib.asynccontextmanager
async def browsing(valve: Valve, tmp_path: Path, *, commands: bool) -> AsyncIterator[Any]:
    """Chromium on the valve gateway's status page (``web.commands`` as given)."""
    server = await start_web(valve.gw, valve.out, WebConfig(listen="127.0.0.1:0"), interval=0.2,
                             log_ring=LogRing(), commands=commands)
    try:
        async for b in _browser(tmp_path, server.url):
            yield b
    finally:
        await server.close()


async def test_operator_write_with_a_confirmation_step_on_a_phone(valve: Valve, tmp_path: Path) -> None:
    expect = playwright_api.expect
    async with browsing(valve, tmp_path, commands=True) as b:
        page = await b.page("/devices/valve-1", **PHONE)
        row = page.locator(".cmd-point[data-point=setpoint]")
        await expect(row).to_contain_text("allowed 0 to 100 %")
        await expect(page.locator(".cmd-point[data-point=level]")).to_have_count(0)  # read-only: no form
        # the current value is shown before anything is typed (the simulator's, scaled by 0.1)
        await expect(row.locator(".cmd-label")).not_to_contain_text("now \u2013")
        old = (await row.locator(".cmd-label .muted").text_content() or "").split("now ", 1)[1].split(" ·")[0]

        # out of range: said at once, no confirmation offered, nothing sent
        await page.fill("#cmd-value-setpoint", "250")
        await page.click("#cmd-set-setpoint")
        await expect(page.locator("#cmd-result")).to_contain_text("outside the allowed 0 to 100 %")
        await expect(page.locator("#cmd-confirm-box")).to_have_count(0)

        # the confirmation step: old -> new and the range, and nothing is written until confirmed
        await page.fill("#cmd-value-setpoint", "42.5")
        await page.click("#cmd-set-setpoint")
        box = page.locator("#cmd-confirm-box")
        await expect(box).to_be_visible()
        await expect(page.locator("#cmd-change")).to_have_text(f"{old} → 42.5 %")
        await expect(page.locator("#cmd-range")).to_contain_text("allowed 0 to 100 %")
        await page.screenshot(path=shot("commands-confirm-phone.png"), full_page=True)
        assert valve.sensor.writes == []
        await page.click("#cmd-cancel")
        await expect(box).to_have_count(0)
        assert valve.sensor.writes == []

        await page.click("#cmd-set-setpoint")
        await page.click("#cmd-confirm")
        await expect(page.locator("#cmd-result")).to_have_text("setpoint: ok, read back 42.5 %")
        assert len(valve.sensor.writes) == 1 and valve.sensor.writes[0][0] == "PUT"
        recent = page.locator("#cmd-recent tbody tr").first
        await expect(recent).to_have_attribute("data-status", "ok")
        await expect(recent).to_contain_text("setpoint = 42.5")
        await expect(recent).to_contain_text("local-api")
        # a switch is set with on/off, confirmed the same way
        relay = page.locator(".cmd-point[data-point=relay]")
        await expect(relay).to_contain_text("allowed on or off")
        now_on = "now on" in (await relay.text_content() or "")
        new, was = ("off", "on") if now_on else ("on", "off")
        await page.select_option("#cmd-value-relay", "false" if now_on else "true")
        await page.click("#cmd-set-relay")
        await expect(page.locator("#cmd-change")).to_have_text(f"{was} → {new}")
        await page.click("#cmd-confirm")
        await expect(page.locator("#cmd-result")).to_have_text(f"relay: ok, read back {new}")
        assert len(valve.sensor.writes) == 2
        # the panel is outside the live view: a second of live redraws keeps it (and the typed value)
        await page.fill("#cmd-value-setpoint", "17")
        renders = await page.evaluate("window.__renders || 0")
        await page.wait_for_function("n => (window.__renders || 0) >= n + 3", arg=renders)
        await expect(page.locator("#cmd-value-setpoint")).to_have_value("17")
        await page.screenshot(path=shot("commands-result-phone.png"), full_page=True)
        # the page is no wider than the phone
        assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


async def test_the_panel_says_why_writing_is_off(valve: Valve, tmp_path: Path) -> None:
    expect = playwright_api.expect
    async with browsing(valve, tmp_path, commands=False) as b:
        page = await b.page("/devices/valve-1", **PHONE)
        await expect(page.locator("#cmd-off")).to_contain_text("Writing from this page is off")
        await expect(page.locator("#cmd-off")).to_contain_text("web.commands")
        await expect(page.locator("#cmd-form")).to_be_hidden()
        await expect(page.locator("#cmd-none")).to_have_text("No commands yet.")
    assert valve.sensor.writes == []
