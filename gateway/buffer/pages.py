"""Rows read straight from the pages of a damaged SQLite file (the salvage's second pass).

SQL over a damaged file stops at the first page it cannot follow: a file cut
in half, or an interior page overwritten, hides every intact leaf below it,
and a forward and a backward scan recover at best the two ends. This module
reads the file as the SQLite file format describes it (sqlite.org/fileformat2),
page by page, and decodes every table-leaf cell it finds, whatever points to
it or not. The caller keeps only rows that look like the buffer's readings.

Pages on the freelist hold rows deleted earlier (acknowledged readings); they
are skipped when the freelist can still be read, so that a salvage does not
bring back readings that were already delivered.

Python's ``sqlite3`` offers neither ``.recover`` nor the recovery extension,
hence this reader. It is pure (bytes in, tuples out) and never raises on
garbage: a page or cell that does not parse is passed over.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator

_HEADER = b"SQLite format 3\x00"
_TABLE_LEAF = 13
_MAX_OVERFLOW_PAGES = 64  # a reading is a few hundred bytes: a longer chain is damage, not data


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """SQLite's big-endian varint at ``pos``: (value, next position). Raises IndexError past the end."""
    value = 0
    for i in range(8):
        byte = buf[pos + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos + i + 1
    return (value << 8) | buf[pos + 8], pos + 9


def _decode_record(payload: bytes) -> list[object] | None:
    """A record's values (NULL, int, float, text, blob); ``None`` if it does not parse."""
    try:
        header_len, pos = _varint(payload, 0)
        if header_len > len(payload) or header_len < 1:
            return None
        types: list[int] = []
        while pos < header_len:
            t, pos = _varint(payload, pos)
            types.append(t)
        data = header_len
        values: list[object] = []
        for t in types:
            if t == 0:
                values.append(None)
            elif 1 <= t <= 6:
                n = (1, 2, 3, 4, 6, 8)[t - 1]
                values.append(int.from_bytes(payload[data:data + n], "big", signed=True))
                data += n
            elif t == 7:
                values.append(struct.unpack(">d", payload[data:data + 8])[0])
                data += 8
            elif t in (8, 9):
                values.append(t - 8)
            elif t >= 12:
                n = (t - 12) // 2
                chunk = payload[data:data + n]
                if len(chunk) != n:
                    return None
                values.append(chunk.decode("utf-8") if t % 2 else chunk)
                data += n
            else:
                return None
        return values
    except (IndexError, UnicodeDecodeError, struct.error):
        return None


class PageFile:
    """A SQLite database file read as raw pages.

    Args:
        data: the whole file, read or mapped (a damaged one may be short or have garbage anywhere).
    """

    def __init__(self, data: bytes | mmap.mmap) -> None:
        self.data = data
        self.page_size = 4096
        self.usable = 4096
        self.ok = data[:16] == _HEADER
        if self.ok:
            size = int.from_bytes(data[16:18], "big")
            size = 65536 if size == 1 else size
            if size < 512 or size & (size - 1):
                size = 4096  # a damaged header: SQLite's default is the best guess
            self.page_size = size
            self.usable = size - data[20]
        self.pages = len(data) // self.page_size

    def page(self, n: int) -> bytes:
        """Page ``n`` (1-based), shorter or empty when the file ends early."""
        return self.data[(n - 1) * self.page_size:n * self.page_size]

    def freelist(self) -> set[int]:
        """Pages on the freelist, as far as its trunk pages can be read (empty if the header is gone)."""
        if not self.ok:
            return set()
        free: set[int] = set()
        trunk = int.from_bytes(self.data[32:36], "big")
        seen: set[int] = set()
        while 0 < trunk <= self.pages and trunk not in seen:
            seen.add(trunk)
            free.add(trunk)
            page = self.page(trunk)
            count = int.from_bytes(page[4:8], "big")
            if count > (self.usable - 8) // 4:
                break
            for i in range(count):
                free.add(int.from_bytes(page[8 + 4 * i:12 + 4 * i], "big"))
            trunk = int.from_bytes(page[0:4], "big")
        return free

    def _payload(self, page: bytes, pos: int, size: int) -> bytes | None:
        """A cell's payload of ``size`` bytes starting at ``pos``, following overflow pages."""
        u = self.usable
        x = u - 35
        if size <= x:
            local = size
        else:
            m = ((u - 12) * 32 // 255) - 23
            k = m + (size - m) % (u - 4)
            local = k if k <= x else m
        out = bytearray(page[pos:pos + local])
        if len(out) != local:
            return None
        if local == size:
            return bytes(out)
        nxt = int.from_bytes(page[pos + local:pos + local + 4], "big")
        hops = 0
        while len(out) < size:
            hops += 1
            if not 0 < nxt <= self.pages or hops > _MAX_OVERFLOW_PAGES:
                return None
            over = self.page(nxt)
            nxt = int.from_bytes(over[0:4], "big")
            out += over[4:u][:size - len(out)]
        return bytes(out)

    def table_rows(self) -> Iterator[tuple[int, list[object]]]:
        """(rowid, values) of every cell of every table-leaf page not on the freelist, in file order."""
        free = self.freelist()
        for n in range(1, self.pages + 1):
            if n in free:
                continue
            page = self.page(n)
            head = 100 if n == 1 else 0
            if len(page) < head + 8 or page[head] != _TABLE_LEAF:
                continue
            cells = int.from_bytes(page[head + 3:head + 5], "big")
            if cells * 2 > len(page) - head - 8:
                continue
            for i in range(cells):
                at = head + 8 + 2 * i
                pos = int.from_bytes(page[at:at + 2], "big")
                if not head + 8 <= pos < len(page):
                    continue
                try:
                    size, pos = _varint(page, pos)
                    rowid, pos = _varint(page, pos)
                except IndexError:
                    continue
                if size > len(page) * _MAX_OVERFLOW_PAGES:
                    continue
                payload = self._payload(page, pos, size)
                if payload is None:
                    continue
                values = _decode_record(payload)
                if values is not None:
                    yield rowid, values
