"""NMEA 0183 fields beyond the position (issue 20): geoid separation, DGPS age and station, magnetic
variation, mode and navigational status, and the fix time from RMC as the reading's timestamp."""

from __future__ import annotations

import asyncio
import calendar
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from fieldgate.drivers.serial.nmea import fix_timestamp
from fieldgate.normalize import Normalizer
from fieldgate.testing import RecordingSink as Sink
from fieldgate_hwsim.serial_sim import nmea_sentence

from .conftest import REPO, load_serial_profile
from .test_profiles import decode_vector
from .test_pty import context_driver

GNSS = REPO / "profiles/nmea0183/gnss.yaml"

# Published sentences (their checksums are the documents' own):
#: Trimble's GGA example: DGPS fix, geoid separation -25.669 m, correction 2.0 s old from station 0031.
GGA_DGPS = "$GPGGA,172814.0,3723.46587704,N,12202.26957864,W,2,6,1.2,18.893,M,-25.669,M,2.0,0031*4F\r\n"
#: NMEA's classic RMC example: 1994-03-23 12:35:19 UTC, magnetic variation 3.1 degrees west.
RMC_1994 = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n"
#: u-blox's RMC example (NMEA 2.3, mode A = autonomous): 2002-12-09 08:35:59 UTC, no variation given.
RMC_UBLOX = "$GPRMC,083559.00,A,4717.11437,N,00833.91522,E,0.004,77.52,091202,,,A*57\r\n"


def metrics(text: str) -> dict[str, Any]:
    [msg] = decode_vector(load_serial_profile(GNSS), {"text": text})
    return {k: m["value"] for k, m in msg["metrics"].items()}


def test_gga_geoid_separation_and_dgps() -> None:
    got = metrics(GGA_DGPS)
    assert got["fix_quality"] == 2
    assert got["geoid_separation"] == pytest.approx(-25.669)
    assert got["dgps_age"] == pytest.approx(2.0)
    assert got["dgps_station"] == 31
    assert got["altitude"] == pytest.approx(18.9)


def test_gga_without_dgps_publishes_no_dgps_values() -> None:
    got = metrics("$GPGGA,092750.000,5321.6802,N,00630.3372,W,1,8,1.03,61.7,M,55.2,M,,*76\r\n")
    assert got["geoid_separation"] == pytest.approx(55.2)
    assert "dgps_age" not in got and "dgps_station" not in got  # empty: no correction in use


def test_rmc_magnetic_variation_is_signed_east_positive() -> None:
    got = metrics(RMC_1994)
    assert got["magnetic_variation"] == pytest.approx(-3.1)  # 3.1 W
    assert got["utc_date"] == "230394"
    east = metrics(nmea_sentence("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,012.5,E").decode())
    assert east["magnetic_variation"] == pytest.approx(12.5)


def test_rmc_mode_and_navigational_status() -> None:
    assert metrics(RMC_UBLOX)["mode"] == "A"
    assert "magnetic_variation" not in metrics(RMC_UBLOX)
    # NMEA 4.1 adds the navigational status after the mode (S safe, C caution, U unsafe, V not valid)
    v41 = nmea_sentence("GNRMC,083559.00,A,4717.11437,N,00833.91522,E,0.004,77.52,091202,,,D,S").decode()
    got = metrics(v41)
    assert (got["mode"], got["nav_status"]) == ("D", "S")


@pytest.mark.parametrize(("date", "hms", "expected"), [
    ("091202", "083559.00", calendar.timegm((2002, 12, 9, 8, 35, 59))),
    ("311299", "235959.5", calendar.timegm((1999, 12, 31, 23, 59, 59)) + 0.5),
    ("010170", "000000", calendar.timegm((2070, 1, 1, 0, 0, 0))),
    ("300226", "120000", None),   # 30 February
    ("", "120000", None), ("091202", "", None), ("0912", "083559", None), ("091202", "25x", None),
])
def test_fix_timestamp(date: str, hms: str, expected: float | None) -> None:
    assert fix_timestamp(date, hms) == expected


async def test_the_rmc_fix_time_is_the_readings_time(validate_reading: Callable[[dict[str, Any]], None]) -> None:
    """Real driver on a pty: a valid RMC reading is stamped with its fix time, a GGA (no date) and an
    RMC without a valid fix with the receive time."""
    master, slave = os.openpty()
    try:
        async with context_driver("nmea0183/gnss", port=os.ttyname(slave)) as drv:
            sink = Sink()
            task = asyncio.create_task(drv.run(sink))
            before = time.time()
            os.write(master, RMC_UBLOX.encode() + GGA_DGPS.encode()
                     + nmea_sentence("GPRMC,083600.00,V,4717.11437,N,00833.91522,E,0.004,77.52,091202,,,N")
                     + RMC_1994.encode())
            await sink.wait(lambda s: len(s.readings) >= 4)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    finally:
        os.close(master)
        os.close(slave)
    rmc, gga, invalid, rollover = sink.readings[:4]
    assert rmc.ts == calendar.timegm((2002, 12, 9, 8, 35, 59))
    assert gga.ts >= before and invalid.ts >= before
    # a receiver that says 1994 (GPS week rollover): receive time, and every value marked uncertain
    assert rollover.ts >= before and rollover.quality is not None
    assert set(rollover.quality.values()) == {("uncertain", "implausible_time")}
    norm = Normalizer("gw-test", "gnss", drv.profile, {"driver": "serial"})
    msg = norm.normalize(rmc)
    assert msg is not None and msg["ts"] == "2002-12-09T08:35:59.000Z"
    validate_reading({"seq": 1, **msg})
