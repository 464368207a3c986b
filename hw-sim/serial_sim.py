"""Simulated serial devices on a pseudo-terminal, for tests, the demo and field-tech practice.

Each shipped serial profile has a simulator that writes what the real device
writes (SDS011 and PMS5003 binary frames, NMEA GGA/RMC sentences) or answers
what it answers (Vaisala HMP155 ``SEND``). The gateway opens the pty's slave
path exactly like a real port. Faults can be switched on at any time: garbage
between frames, frames split across reads, bad checksums, silence, and the
port disappearing (a ``/dev/serial/by-id``-like symlink is removed and later
re-created pointing at a new pty, as when a USB adapter is replugged).

The frames are built here from the datasheets independently of the driver's
decoder, so a test through a simulator checks one against the other.

Library use (a thread; safe to call from asyncio code)::

    with SerialSim("plantower/pms5003", interval=0.2, link=tmp / "pms") as sim:
        port = sim.path          # give this to the driver's connection.port
        sim.faults.garbage = 0.3 # change faults on the fly
        sim.vanish(); sim.reappear()

Command line::

    python -m fieldgate_hwsim.serial_sim --profile plantower/pms5003 [--link /tmp/pms] [--garbage 0.2]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import select
import struct
import sys
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from fieldgate.codecs.checksums import nmea, sum8, sum16


@dataclass(slots=True)
class Faults:
    """Faults a simulator injects; change the attributes while it runs.

    Attributes:
        garbage: probability of a burst of random bytes before a frame.
        split: write each frame in two or three pieces with a pause between.
        bad_checksum: probability that a frame's checksum is wrong.
        silent: send nothing (and answer nothing) while true.
    """

    garbage: float = 0.0
    split: bool = False
    bad_checksum: float = 0.0
    silent: bool = False


# --- frame builders, from the datasheets ------------------------------------

def sds011_frame(pm2_5: float, pm10: float, device_id: int = 0xA160, corrupt: bool = False) -> bytes:
    """Nova Fitness SDS011 data frame: AA C0, PM2.5 and PM10 (x10, little-endian), ID, sum8, AB."""
    data = struct.pack("<HH", round(pm2_5 * 10), round(pm10 * 10)) + device_id.to_bytes(2, "big")
    check = (sum8(data) + (1 if corrupt else 0)) & 0xFF
    return b"\xaa\xc0" + data + bytes([check]) + b"\xab"


def pms5003_frame(values: list[int], corrupt: bool = False) -> bytes:
    """Plantower PMS5003 active-mode frame: 42 4D, length 28, 13 big-endian words, sum16."""
    body = b"\x42\x4d" + struct.pack(">H", 28) + struct.pack(">13H", *values)
    return body + struct.pack(">H", (sum16(body) + (1 if corrupt else 0)) & 0xFFFF)


def nmea_sentence(body: str, corrupt: bool = False) -> bytes:
    """``$body*hh`` with CR LF; ``body`` excludes the ``$``."""
    check = nmea(("$" + body).encode("ascii")) ^ (0x01 if corrupt else 0)
    return f"${body}*{check:02X}\r\n".encode("ascii")


def _nmea_coord(value: float, lat: bool) -> tuple[str, str]:
    hemi = ("N" if value >= 0 else "S") if lat else ("E" if value >= 0 else "W")
    value = abs(value)
    deg = int(value)
    minutes = (value - deg) * 60
    return (f"{deg:02d}{minutes:07.4f}" if lat else f"{deg:03d}{minutes:07.4f}"), hemi


def gnss_sentences(t: float, lat: float, lon: float, corrupt: bool = False) -> bytes:
    """One second of a receiver: GGA, GSA (unmatched by the profile) and RMC."""
    hms = time.strftime("%H%M%S", time.gmtime(t)) + ".00"
    date = time.strftime("%d%m%y", time.gmtime(t))
    la, ns = _nmea_coord(lat, True)
    lo, ew = _nmea_coord(lon, False)
    gga = f"GPGGA,{hms},{la},{ns},{lo},{ew},1,09,0.9,545.4,M,46.9,M,,"
    gsa = "GPGSA,A,3,04,05,09,12,24,25,29,31,32,,,,1.8,0.9,1.5"
    rmc = f"GPRMC,{hms},A,{la},{ns},{lo},{ew},001.2,084.4,{date},003.1,W"
    return nmea_sentence(gga, corrupt) + nmea_sentence(gsa) + nmea_sentence(rmc)


class _Device:
    """What one simulated device says; ``frame`` for streams, ``answer`` for queries."""

    query: bytes | None = None

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.t0 = time.time()

    def wave(self, lo: float, hi: float, period: float = 60.0) -> float:
        phase = (time.time() - self.t0) / period
        return lo + (hi - lo) * (0.5 + 0.5 * math.sin(2 * math.pi * phase)) + self.rng.uniform(-0.02, 0.02) * (hi - lo)

    def frame(self, corrupt: bool) -> bytes:
        raise NotImplementedError

    def answer(self, request: bytes, corrupt: bool) -> bytes | None:
        return None


class _Sds011(_Device):
    def frame(self, corrupt: bool) -> bytes:
        return sds011_frame(round(self.wave(5, 35), 1), round(self.wave(8, 60), 1), corrupt=corrupt)


class _Pms5003(_Device):
    query = b"\x42\x4d\xe2\x00\x00\x01\x71"

    def frame(self, corrupt: bool) -> bytes:
        pm1, pm25, pm10 = round(self.wave(2, 20)), round(self.wave(4, 35)), round(self.wave(6, 50))
        counts = [pm25 * 120, pm25 * 35, pm25 * 6, pm10 // 4, pm10 // 12, pm10 // 30]
        return pms5003_frame([pm1, pm25, pm10, pm1, pm25, pm10, *counts, 0x9700], corrupt)

    def answer(self, request: bytes, corrupt: bool) -> bytes | None:
        return self.frame(corrupt) if self.query in request else None


class _Gnss(_Device):
    def frame(self, corrupt: bool) -> bytes:
        return gnss_sentences(time.time(), 48.1173 + self.wave(0, 1e-4), 11.5166667 + self.wave(0, 1e-4), corrupt)


class _Hmp155(_Device):
    query = b"SEND\r"

    def answer(self, request: bytes, corrupt: bool) -> bytes | None:
        if b"SEND" not in request.upper():
            return None
        rh, t = self.wave(35, 55), self.wave(18, 24)
        # echo of the command, the reading, the prompt: as a terminal in STOP mode shows it
        reading = f"RH= {rh:5.1f} %RH T= {t:5.1f} 'C\r\n".encode()
        if corrupt:
            reading = reading.replace(b"RH=", b"RH?")
        return b"SEND\r\n" + reading + b">"


DEVICES: dict[str, Callable[[random.Random], _Device]] = {
    "novafitness/sds011": _Sds011,
    "plantower/pms5003": _Pms5003,
    "nmea0183/gnss": _Gnss,
    "vaisala/hmp155": _Hmp155,
}
"""Simulators by profile library name."""


class SerialSim:
    """A simulated serial device on a pty, run by a background thread.

    Args:
        profile: a library name from ``DEVICES`` (``plantower/pms5003``).
        interval: seconds between frames of a streaming device.
        link: a symlink path to serve through (like ``/dev/serial/by-id/...``);
            required for ``vanish``/``reappear``.
        faults: initial faults; change ``self.faults`` later at will.
        seed: random seed for reproducible values and faults.
        respond: answer queries (the PMS5003 passive-mode read, HMP155 SEND);
            streaming devices also stop streaming when this is true and they
            have a query.

    Attributes:
        frames_sent: frames (or answers) written so far.
        queries: requests received so far.
    """

    def __init__(self, profile: str, *, interval: float = 1.0, link: str | Path | None = None,
                 faults: Faults | None = None, seed: int | None = None, respond: bool | None = None) -> None:
        if profile not in DEVICES:
            raise ValueError(f"no simulator for {profile!r}; known: {', '.join(DEVICES)}")
        self.profile = profile
        self.interval = interval
        self.link = Path(link) if link is not None else None
        self.faults = faults or Faults()
        self.rng = random.Random(seed)
        self.device = DEVICES[profile](self.rng)
        self.respond = respond if respond is not None else profile == "vaisala/hmp155"
        self.frames_sent = 0
        self.queries = 0
        self.generation = 0
        self._master: int | None = None
        self._slave: int | None = None
        self._slave_name = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sent = threading.Condition()
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------

    @property
    def path(self) -> str:
        """The path a driver opens: the symlink if serving through one, else the pty's slave."""
        return str(self.link) if self.link is not None else self._slave_name

    def start(self) -> str:
        """Create the pty (and symlink), start streaming; returns ``path``."""
        self._open_pty()
        self._thread = threading.Thread(target=self._loop, name=f"serial-sim[{self.profile}]", daemon=True)
        self._thread.start()
        return self.path

    def stop(self) -> None:
        """Stop the thread, close the pty, remove the symlink."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._close_pty()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def vanish(self) -> None:
        """The adapter is unplugged: close the pty (readers get an error) and remove the symlink."""
        self._close_pty()

    def reappear(self) -> str:
        """The adapter is plugged back in: a new pty (another ttyN), the same symlink; returns ``path``."""
        self._open_pty()
        return self.path

    def wait_sent(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until ``frames_sent`` reaches ``count``; false on timeout."""
        with self._sent:
            return self._sent.wait_for(lambda: self.frames_sent >= count, timeout)

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)   # no echo, no line editing: bytes pass unchanged
        tty.setraw(master)
        os.set_blocking(master, False)
        with self._lock:
            self._master, self._slave = master, slave
            self._slave_name = os.ttyname(slave)
            self.generation += 1
            if self.link is not None:
                tmp = self.link.with_name(self.link.name + ".new")
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                tmp.symlink_to(self._slave_name)
                tmp.replace(self.link)  # atomic, like udev updating a by-id link

    def _close_pty(self) -> None:
        with self._lock:
            if self.link is not None:
                with contextlib.suppress(FileNotFoundError):
                    self.link.unlink()
            for fd in (self._master, self._slave):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._master = self._slave = None

    # --- the device ---------------------------------------------------------

    def _loop(self) -> None:
        next_frame = time.monotonic()
        inbox = bytearray()
        while not self._stop.is_set():
            with self._lock:
                master = self._master
            if master is None:
                self._stop.wait(0.02)
                continue
            wait = max(0.0, next_frame - time.monotonic()) if not self.respond else 0.1
            try:
                ready, _, _ = select.select([master], [], [], wait)
            except (OSError, ValueError):  # closed by vanish() meanwhile
                continue
            if ready:
                try:
                    inbox += os.read(master, 4096)
                except OSError:  # EIO: no process has the slave open; BlockingIOError: raced
                    pass
                del inbox[:-256]
            if self.respond:
                if self.device.query is not None and self.device.query in inbox:
                    self.queries += 1
                    request = bytes(inbox)
                    inbox.clear()
                    if not self.faults.silent:
                        reply = self.device.answer(request, self._corrupt())
                        if reply:
                            self._send(reply)
                continue
            if time.monotonic() >= next_frame:
                next_frame += self.interval
                if next_frame < time.monotonic():
                    next_frame = time.monotonic() + self.interval
                if not self.faults.silent:
                    self._send(self.device.frame(self._corrupt()))

    def _corrupt(self) -> bool:
        return self.faults.bad_checksum > 0 and self.rng.random() < self.faults.bad_checksum

    def _send(self, frame: bytes) -> None:
        if self.faults.garbage > 0 and self.rng.random() < self.faults.garbage:
            self._write(self.rng.randbytes(self.rng.randint(1, 24)))
        if self.faults.split and len(frame) > 2:
            cuts = sorted(self.rng.sample(range(1, len(frame)), min(2, len(frame) - 1)))
            pieces = [frame[a:b] for a, b in zip([0, *cuts], [*cuts, len(frame)], strict=True)]
            for piece in pieces[:-1]:
                self._write(piece)
                self._stop.wait(0.01)  # let the reader see a partial frame
            self._write(pieces[-1])
        else:
            self._write(frame)
        with self._sent:
            self.frames_sent += 1
            self._sent.notify_all()

    def _write(self, data: bytes) -> None:
        with self._lock:
            master = self._master
            if master is None:
                return
            try:
                os.write(master, data)
            except OSError:
                # BlockingIOError: nobody reads and the pty buffer is full; a real
                # sensor does not wait for its listener either.
                pass


def main(argv: list[str] | None = None) -> int:
    """Command line: serve one simulated device until Ctrl-C."""
    ap = argparse.ArgumentParser(prog="python -m fieldgate_hwsim.serial_sim", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", required=True, choices=sorted(DEVICES), help="profile library name")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between frames (streaming devices)")
    ap.add_argument("--link", help="serve through this symlink, like /dev/serial/by-id/... (needed for --vanish-every)")
    ap.add_argument("--garbage", type=float, default=0.0, help="probability of garbage before a frame")
    ap.add_argument("--split", action="store_true", help="write frames in pieces")
    ap.add_argument("--bad-checksum", type=float, default=0.0, help="probability of a wrong checksum")
    ap.add_argument("--respond", action="store_true", help="answer queries instead of streaming (PMS5003 passive)")
    ap.add_argument("--vanish-every", type=float, default=0.0,
                    help="unplug the port every N seconds for N/3 seconds (needs --link)")
    ap.add_argument("--seed", type=int)
    args = ap.parse_args(argv)
    if args.vanish_every and not args.link:
        ap.error("--vanish-every needs --link")
    faults = Faults(garbage=args.garbage, split=args.split, bad_checksum=args.bad_checksum)
    sim = SerialSim(args.profile, interval=args.interval, link=args.link, faults=faults, seed=args.seed,
                    respond=True if args.respond else None)
    print(sim.start(), flush=True)
    stop = threading.Event()
    try:
        while True:
            if args.vanish_every:
                stop.wait(args.vanish_every)
                sim.vanish()
                print("port vanished", file=sys.stderr, flush=True)
                stop.wait(args.vanish_every / 3)
                print(f"port back: {sim.reappear()} -> {sim._slave_name}", file=sys.stderr, flush=True)
            else:
                stop.wait(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
