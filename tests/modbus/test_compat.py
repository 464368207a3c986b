"""Canary for drivers/modbus/compat.py: fails when the pymodbus behaviour the bus relies on moves."""

from __future__ import annotations

import asyncio

from fieldgate.drivers.modbus import compat
from pymodbus.client import AsyncModbusTcpClient

ANSWER_HEAD = bytes.fromhex("0001 0000 0007 01 03 04")
ANSWER_TAIL = bytes.fromhex("4366 0000")


def test_installed_pymodbus_is_in_the_tested_range() -> None:
    assert compat.TESTED[0] <= compat.version()[:2] < compat.TESTED[1], (
        "pymodbus moved: re-check compat.py's assumptions, then widen TESTED")


async def test_the_receive_hook_sees_the_whole_buffer_and_decides_what_is_parsed() -> None:
    first_seen = asyncio.Event()
    served = asyncio.Event()
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readexactly(12)  # the read request
            writer.write(ANSWER_HEAD)
            await writer.drain()
            await first_seen.wait()
            writer.write(ANSWER_TAIL)
            await writer.drain()
            await reader.read()  # until the client closes
        finally:
            writer.close()
            await writer.wait_closed()
            served.set()

    def hook(sending: bool, data: bytes) -> bytes:
        if sending:
            return data
        seen.append(data)
        first_seen.set()
        return data if data.endswith(ANSWER_TAIL) else b""  # hide the head: the framer must not see it

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0, reconnect_delay=0,
                                  trace_packet=hook)
    try:
        assert await client.connect()
        compat.set_answer_timeout(client, 5.0)
        assert client.ctx.comm_params.timeout_connect == 5.0
        assert client.ctx.max_buffer_size == 264  # pymodbus's own: one largest frame
        compat.widen_receive_buffer(client)
        resp = await client.read_holding_registers(0, count=2, device_id=1)
        assert resp.registers == [0x4366, 0]
        # The second call got head and tail together: the buffer since the request, not the new bytes only.
        assert seen[0] == ANSWER_HEAD and seen[-1] == ANSWER_HEAD + ANSWER_TAIL
    finally:
        client.close()
        await asyncio.wait_for(served.wait(), 10)  # the handler is done with its writer before the loop ends
        server.close()
        await server.wait_closed()


def test_decoded_answers_are_not_formatted_as_text_unless_pymodbus_logs_debug() -> None:
    """pymodbus 3.16 formats every decoded answer with ``str(pdu)`` for a debug line, logged or not
    (pdu/decoders.py): 35 us for 100 registers, a third of its own cost per request (issue 16). Once
    the bus set up pymodbus, that text is built only when pymodbus's logger is enabled for DEBUG."""
    import logging

    from pymodbus.pdu.decoders import DecodePDU
    from pymodbus.pdu.register_message import ReadHoldingRegistersResponse

    compat.lazy_pdu_text()
    answer = ReadHoldingRegistersResponse(registers=list(range(100)))
    assert "99" not in str(answer)  # the canary: this text is what pymodbus's decoder builds per answer
    assert "str(pdu)" in __import__("inspect").getsource(DecodePDU.decode), "pymodbus stopped formatting; drop it"
    pm = logging.getLogger("pymodbus.logging")
    before = pm.level
    pm.setLevel(logging.DEBUG)
    try:
        assert "99" in str(answer)  # with pymodbus debugging on, the whole text as before
    finally:
        pm.setLevel(before)
