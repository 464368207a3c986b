"""Read planning: merged requests within size, gap and unreadable limits."""

from __future__ import annotations

import pytest
from fieldgate.drivers.modbus.plan import Item, plan_reads, split

from tests.modbus.conftest import profile


def spans(blocks: list) -> list[tuple[int, int]]:
    return [(b.start, b.count) for b in blocks]


def items(addresses: list[int], table: str = "holding", width: int = 1) -> list[Item]:
    return [Item(f"p{a}", table, a, width) for a in addresses]


@pytest.mark.parametrize(("addresses", "width", "max_regs", "gap", "holes", "expected"), [
    # Telegraf's worked example: no gap allowed.
    ([1, 2, 3, 5, 6, 10, 11, 12, 14], 1, 125, 0, [], [(1, 3), (5, 2), (10, 3), (14, 1)]),
    # The same with gaps of one register allowed.
    ([1, 2, 3, 5, 6, 10, 11, 12, 14], 1, 125, 1, [], [(1, 6), (10, 5)]),
    # Everything fits a generous gap.
    ([1, 2, 3, 5, 6, 10, 11, 12, 14], 1, 125, 10, [], [(1, 14)]),
    # float32 pairs (Eastron layout) merge; the block stops at the size limit.
    ([0, 2, 4, 6], 2, 4, 0, [], [(0, 4), (4, 4)]),
    # Registers 0..59 then 60..: 125 is the spec maximum.
    (list(range(0, 130, 2)), 2, 125, 0, [], [(0, 124), (124, 6)]),
    # An unreadable hole splits what the gap would have merged.
    ([0, 10], 1, 125, 20, [("holding", 5, 5)], [(0, 1), (10, 1)]),
    # A hole in another table does not matter.
    ([0, 10], 1, 125, 20, [("input", 5, 5)], [(0, 11)]),
    # Addresses at the top of the range are kept (no silent drop of high addresses).
    ([65533, 65534, 65535], 1, 125, 0, [], [(65533, 3)]),
])
def test_plan_table(
    addresses: list[int], width: int, max_regs: int, gap: int, holes: list,
                    expected: list[tuple[int, int]]) -> None:
    assert spans(plan_reads(items(addresses, width=width), max_regs, gap, holes)) == expected


def test_overlapping_items_share_a_register() -> None:
    bits = [Item(f"b{i}", "input", 0, 1) for i in range(3)] + [Item("co2", "input", 3, 1)]
    blocks = plan_reads(bits, 125, 4)
    assert spans(blocks) == [(0, 4)]
    assert {i.key for i in blocks[0].items} == {"b0", "b1", "b2", "co2"}


def test_tables_are_planned_separately_in_fixed_order() -> None:
    mixed = [Item("c", "coil", 0), Item("i", "input", 0), Item("h", "holding", 0), Item("d", "discrete", 0)]
    assert [b.table for b in plan_reads(mixed, 125, 0)] == ["holding", "input", "coil", "discrete"]


def test_bit_tables_use_bit_counts() -> None:
    coils = [Item(f"c{a}", "coil", a) for a in (0, 100, 1999, 2100)]
    assert spans(plan_reads(coils, 125, 10)) == [(0, 101), (1999, 102)]


def test_split_reads_each_item_alone() -> None:
    block = plan_reads(items([0, 2, 4], width=2), 125, 10)[0]
    assert spans(split(block)) == [(0, 2), (2, 2), (4, 2)]


def test_planning_is_deterministic_and_order_free() -> None:
    a = plan_reads(items([5, 1, 3]), 125, 1)
    b = plan_reads(items([1, 3, 5]), 125, 1)
    assert spans(a) == spans(b) == [(1, 5)]


@pytest.mark.parametrize(("name", "requests"), [
    # input 0..0x25, 0x46..0x5F, 0x102..0x109, 0x156..0x159; holding 0x12..0x1D (limit: 60 registers)
    ("eastron/sdm120", 5),
    # input 0..0x39, 0x3C..0x57, 0x64..0x6B, 0xC8..0xCF, 0xE0..0x10D, 0x14E..0x16B; holding 0x02..0x1D
    ("eastron/sdm630", 7),
    ("generic-rs485/xy-md02", 3),
    ("senseair/s8", 2),
    ("carlo-gavazzi/em111", 1),
    ("solaredge/se-inverter", 1),  # strings, model 103 and scale factors in 108 registers
])
def test_shipped_profiles_merge(name: str, requests: int) -> None:
    p = profile(name)
    blocks = plan_reads([Item(x.name, x.table, x.address, x.width) for x in p.points], p.max_registers, p.max_gap,
                        [(r.table, r.start, r.end) for r in p.unreadable])
    assert len(blocks) == requests
    assert all(b.count <= p.max_registers for b in blocks)
    assert len(blocks) < len(p.points)
