"""The unit texts have one source: the packaged systemd files, which ``fieldgate install`` renders."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from fieldgate import install
from fieldgate.install import PROVISION_UNIT, SERVICE_UNIT, render_units


def test_install_holds_no_copy_of_the_unit_texts() -> None:
    source = inspect.getsource(install)
    assert "[Service]" not in source and "ProtectSystem=strict" not in source


def test_render_changes_only_the_executable_and_groups() -> None:
    default = render_units()
    custom = render_units(Path("/srv/fg/bin/fieldgate"), ("dialout",))
    for name in (SERVICE_UNIT, PROVISION_UNIT):
        changed = [(a, b) for a, b in zip(default[name].splitlines(), custom[name].splitlines(), strict=True)
                   if a != b]
        assert changed, name
        for old, new in changed:
            assert old.startswith(("ExecStart=/opt/fieldgate/bin/fieldgate ", "SupplementaryGroups=")), old
            assert new.startswith(("ExecStart=/srv/fg/bin/fieldgate ", "SupplementaryGroups=dialout")), new


def test_an_executable_path_with_spaces_is_refused() -> None:
    # systemd splits ExecStart= on whitespace: a path with a space would run something else
    with pytest.raises(install.InstallError, match="space"):
        render_units(Path("/opt/my gateway/bin/fieldgate"))
