"""Read planning (pure): merge points into as few Modbus requests as possible.

Points of one table are sorted by address and merged greedily into blocks
that stay within the device's request size, span at most ``max_gap`` unused
addresses, and never touch an unreadable range. Telegraf's worked example is
the first table test: addresses 1,2,3,5,6,10,11,12,14 with no gap allowed
give blocks (1,3) (5,2) (10,3) (14,1).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: Spec limits per request: 125 registers (FC3/FC4), 2000 bits (FC1/FC2).
MAX_REGISTERS = 125
MAX_BITS = 2000
BIT_TABLES = ("coil", "discrete")


@dataclass(frozen=True, slots=True)
class Item:
    """One thing to read: ``width`` addresses from ``address`` in ``table``."""

    key: str
    table: str
    address: int
    width: int = 1

    @property
    def end(self) -> int:
        """First address after the item."""
        return self.address + self.width


@dataclass(frozen=True, slots=True)
class Block:
    """One request: ``count`` addresses from ``start`` in ``table``, serving ``items``."""

    table: str
    start: int
    count: int
    items: tuple[Item, ...]

    @property
    def end(self) -> int:
        """First address after the block."""
        return self.start + self.count


def plan_reads(
    items: Iterable[Item],
    max_registers: int = MAX_REGISTERS,
    max_gap: int = 0,
    unreadable: Sequence[tuple[str, int, int]] = (),
) -> list[Block]:
    """Merge items into blocks.

    Args:
        items: what to read; items may overlap (bits of one register).
        max_registers: most registers per request (bit tables: 16 times that, at most 2000 bits).
        max_gap: most unused addresses a block may span between two items
            (bit tables: 16 times that).
        unreadable: ``(table, first, last)`` ranges (inclusive) no block may touch.

    Returns:
        Blocks ordered by table (holding, input, coil, discrete) then address.
    """
    by_table: dict[str, list[Item]] = {}
    for it in items:
        by_table.setdefault(it.table, []).append(it)
    order = {"holding": 0, "input": 1, "coil": 2, "discrete": 3}
    out: list[Block] = []
    for table in sorted(by_table, key=lambda t: order.get(t, 9)):
        bits = table in BIT_TABLES
        limit = min(MAX_BITS, max_registers * 16) if bits else min(MAX_REGISTERS, max_registers)
        gap = max_gap * 16 if bits and max_gap > 0 else max_gap
        holes = sorted((a, b) for t, a, b in unreadable if t == table)
        group = sorted(by_table[table], key=lambda i: (i.address, i.width))
        start, end, members = group[0].address, group[0].end, [group[0]]
        for it in group[1:]:
            new_end = max(end, it.end)
            fits = (
                it.address - end <= gap
                and new_end - start <= limit
                and not _touches(holes, end, it.address)
            )
            if fits:
                end = new_end
                members.append(it)
            else:
                out.append(Block(table, start, end - start, tuple(members)))
                start, end, members = it.address, it.end, [it]
        out.append(Block(table, start, end - start, tuple(members)))
    return out


def _touches(holes: list[tuple[int, int]], gap_start: int, gap_end: int) -> bool:
    """Whether addresses ``gap_start .. gap_end-1`` (the span a merge would add) hit a hole."""
    return any(a < gap_end and b >= gap_start for a, b in holes)


def split(block: Block) -> list[Block]:
    """A block as one request per item (overlapping items, such as bits of one register, stay together).

    Used after a device rejected the merged read (exception 02): some devices
    refuse reads that span addresses they do not implement.
    """
    return plan_reads(block.items, MAX_REGISTERS, max_gap=-1)
