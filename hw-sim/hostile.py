"""Hostile network peers for the fault campaign: a Modbus TCP server that misbehaves.

The simulators beside this module (``modbus_sim``, ``coap_sim``) are well-behaved devices with
faults a real device has (silence, exception codes through pymodbus, a slow answer). A site
also meets peers that break the protocol itself: a gateway of the wrong make on port 502, a
half-dead converter that sends noise, a device that dribbles one byte a second, a packet
crafted to crash the parser. pymodbus's server cannot be made to send a wrong transaction id
or a bad length, so this peer speaks the protocol from raw bytes. (Hostile CoAP datagrams are
``fieldgate_hwsim.coap_hostile``'s: one generator for the tests and the campaign.)

``HostileModbus`` answers Modbus TCP (MBAP framing, Modbus Application Protocol v1.1b3 and
Messaging on TCP/IP Implementation Guide v1.0b) according to its ``mode``:

========== ===========================================================================
mode       answer
========== ===========================================================================
ok         a correct answer (all registers zero): the control case
junk       random bytes of random length
slowloris  a correct answer, one byte every ``drip`` seconds
wrong-unit a correct answer from another unit id
wrong-tid  a correct answer with another transaction id
bad-length a correct answer whose MBAP length field disagrees with the PDU
wrong-fc   a correct answer for another function code
exception  exception response ``fc | 0x80`` with ``code`` (default 02, illegal data address)
========== ===========================================================================

CLI::

    python -m fieldgate_hwsim.hostile modbus --mode junk --listen 127.0.0.1:0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import struct
import sys

MODBUS_MODES = ("ok", "junk", "slowloris", "wrong-unit", "wrong-tid", "bad-length", "wrong-fc", "exception")
_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id (0), length (unit id + PDU), unit id
_READS = {1, 2, 3, 4}  # read coils, discrete inputs, holding registers, input registers


def _read_answer(fc: int, pdu: bytes) -> bytes:
    """A correct answer PDU (all zero values) for a read request PDU, else an echo (writes)."""
    if fc in _READS and len(pdu) >= 5:
        count = struct.unpack(">H", pdu[3:5])[0]
        size = (count + 7) // 8 if fc in (1, 2) else 2 * count
        size = min(size, 250)  # a PDU is at most 253 bytes
        return bytes([fc, size]) + bytes(size)
    return pdu[:5]  # write single / multiple: the answer repeats function, address and value/count


class HostileModbus:
    """A Modbus TCP server that answers every request according to ``mode`` (see the module docstring).

    Args:
        mode: one of :data:`MODBUS_MODES`.
        host: listen address.
        port: listen port (0: a free one; see :attr:`port` after :meth:`start`).
        seed: for the junk bytes.
        code: the exception code of mode ``exception``.
        drip: seconds between bytes in mode ``slowloris``.
    """

    def __init__(self, mode: str, host: str = "127.0.0.1", port: int = 0, *, seed: int = 0, code: int = 2,
                 drip: float = 0.4) -> None:
        if mode not in MODBUS_MODES:
            raise ValueError(f"unknown mode {mode!r}: one of {', '.join(MODBUS_MODES)}")
        self.mode, self.host, self.port, self.code, self.drip = mode, host, port, code, drip
        self.rng = random.Random(seed)
        self.requests = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = False

    async def start(self) -> int:
        """Listen; returns the bound port."""
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Close the listener and every connection, and wait for the connection handlers to end.

        The handlers are not cancelled: asyncio's stream server logs a cancelled handler as an
        exception in a callback. Aborting the connections ends them (the next read or write fails).
        """
        self._closing = True
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> HostileModbus:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def answer(self, tid: int, unit: int, pdu: bytes) -> bytes:
        """The bytes sent back for one request (for modes that answer at once)."""
        fc = pdu[0] if pdu else 0
        body = _read_answer(fc, pdu)
        if self.mode == "junk":
            return self.rng.randbytes(self.rng.randint(1, 40))
        if self.mode == "exception":
            body = bytes([fc | 0x80, self.code])
        elif self.mode == "wrong-unit":
            unit = (unit % 247) + 1
        elif self.mode == "wrong-tid":
            tid = (tid + 1) & 0xFFFF
        elif self.mode == "wrong-fc":
            other = 4 if fc == 3 else 3
            body = bytes([other]) + body[1:]
        length = len(body) + 1
        if self.mode == "bad-length":
            length += 7  # claims bytes that never come
        return _MBAP.pack(tid, 0, length, unit) + body

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            while not self._closing:
                head = await reader.readexactly(_MBAP.size)
                tid, _pid, length, unit = _MBAP.unpack(head)
                pdu = await reader.readexactly(max(0, length - 1))
                self.requests += 1
                data = self.answer(tid, unit, pdu) if self.mode != "slowloris" else self._ok(tid, unit, pdu)
                if self.mode == "slowloris":
                    for i in range(len(data)):
                        if self._closing:
                            break
                        writer.write(data[i:i + 1])
                        await writer.drain()
                        await asyncio.sleep(self.drip)  # the fault itself: a peer that dribbles bytes
                else:
                    writer.write(data)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    def _ok(tid: int, unit: int, pdu: bytes) -> bytes:
        body = _read_answer(pdu[0] if pdu else 0, pdu)
        return _MBAP.pack(tid, 0, len(body) + 1, unit) + body


# -- CoAP ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """CLI: serve a hostile Modbus TCP peer (hostile CoAP: ``python -m fieldgate_hwsim.coap_hostile``)."""
    ap = argparse.ArgumentParser(prog="python -m fieldgate_hwsim.hostile", description="Hostile network peers.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("modbus", help="a Modbus TCP server that misbehaves")
    m.add_argument("--mode", choices=MODBUS_MODES, required=True)
    m.add_argument("--listen", default="127.0.0.1:0", help="host:port (port 0: a free one, printed)")
    m.add_argument("--code", type=lambda s: int(s, 0), default=2, help="exception code (mode exception)")
    m.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    async def go() -> None:
        host, _, port = args.listen.rpartition(":")
        async with HostileModbus(args.mode, host or "127.0.0.1", int(port), seed=args.seed,
                                 code=args.code) as srv:
            print(f"hostile modbus ({args.mode}) on {srv.host}:{srv.port}", flush=True)
            await asyncio.Event().wait()

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
