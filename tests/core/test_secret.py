"""`Secret` lives in its own core module, so driver profiles need not import the config loader."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fieldgate import config
from fieldgate.secret import Secret


def test_config_re_exports_the_same_class() -> None:
    assert config.Secret is Secret


@pytest.mark.parametrize("module", ["fieldgate.drivers.ble.profile", "fieldgate.drivers.coap.profile"])
def test_driver_profile_does_not_import_config(module: str) -> None:
    # config imports load_driver, which imports driver profiles: a profile that
    # imports config closes a runtime cycle. A fresh interpreter shows it.
    code = f"import sys, {module}; print('fieldgate.config' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_secret_rules_hold(tmp_path, monkeypatch) -> None:
    with pytest.raises(ValueError, match="not written inline"):
        Secret.model_validate("hunter2")
    with pytest.raises(ValueError, match="exactly one"):
        Secret.model_validate({})
    monkeypatch.setenv("FG_TEST_SECRET", "s3")
    assert Secret.model_validate({"env": "FG_TEST_SECRET"}).reveal() == "s3"
    assert "s3" not in repr(Secret.model_validate({"env": "FG_TEST_SECRET"}))
