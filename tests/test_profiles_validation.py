"""Profile validation reports every problem at once (issue 20: a reversed range used to hide the rest)."""

from __future__ import annotations

from pathlib import Path

from fieldgate.config import load_profile_file

STAGED = """schema_version: 1
driver: modbus
vendor: x
model: y
points:
  - {name: a, table: input, address: 0, type: float32, range: [10, 0]}
  - {name: b, table: input, address: 1, type: float32, unit: v}
  - {name: c, table: input, address: 4, type: float23}
"""


def test_a_reversed_range_does_not_hide_the_other_problems(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(STAGED)
    profile, diags = load_profile_file(path)
    text = [str(d) for d in diags]
    assert profile is None
    assert any(t.startswith(f"{path}:6:") and "points[0].range: range minimum 10.0 is above its maximum 0.0" in t
               for t in text), text
    assert any(":8:" in t and "did you mean 'float32'" in t for t in text), text  # a schema error, same pass
    assert any(":7:" in t and "did you mean 'V'?" in t for t in text), text         # and the unit warning


def test_semantic_problems_come_with_a_reversed_range(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(STAGED.replace("  - {name: c, table: input, address: 4, type: float23}\n", ""))
    _, diags = load_profile_file(path)
    text = [str(d) for d in diags]
    assert any("range minimum 10.0 is above its maximum 0.0" in t for t in text), text
    assert any("'b' (input 0x0001..0x0002) overlaps 'a'" in t for t in text), text   # the overlap check
    assert any("did you mean 'V'?" in t for t in text), text                        # the unit warning
