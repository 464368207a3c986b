"""Profile and connection models of the ``sim`` driver."""

from __future__ import annotations

from typing import Literal

from fieldgate.profile import BasePoint, BaseProfile, Model
from fieldgate.units import Duration, PositiveDuration
from pydantic import Field


class Waveform(Model):
    """How a simulated point moves."""

    shape: Literal["sine", "ramp", "random", "counter", "constant", "toggle", "choice"] = "sine"
    min: float = 0.0
    max: float = 100.0
    period: PositiveDuration = Field(600.0, description="seconds per cycle (sine, ramp, toggle)")
    step: float = Field(1.0, description="counter: increase per poll")
    choices: list[str] | None = Field(None, description="choice: strings to pick from")


class SimPoint(BasePoint):
    """A simulated point; its raw value is generated, then normalized like any other."""

    type: Literal["float", "int", "bool", "string"] = "float"
    sim: Waveform = Waveform()


class SimProfile(BaseProfile):
    """A profile for the ``sim`` driver."""

    driver: Literal["sim"]
    points: list[SimPoint] = Field(min_length=1)  # type: ignore[assignment]  # narrows BaseProfile.points; list is invariant to mypy, pydantic validates the narrower type


class SimConnection(Model):
    """Fault injection for tests, demos and benchmarks."""

    seed: int | None = Field(None, description="random seed for reproducible values")
    latency: Duration = Field(0.0, description="how long each poll takes")
    fail: Literal["none", "timeout", "unreachable", "protocol", "hang", "bug"] = "none"
    fail_rate: float = Field(1.0, ge=0, le=1, description="share of polls that fail when fail is set")
    bad_points: list[str] = Field(default_factory=list, description="points that always fail (decode_error)")
    control_file: str | None = Field(
        None, description="a file whose content (a fail value) overrides 'fail' at each poll"
    )
