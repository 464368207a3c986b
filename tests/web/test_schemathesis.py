"""Property-based API tests: schemathesis generates requests from the OpenAPI document and checks the answers.

The server runs with a gateway and simulated devices in a thread of its own (schemathesis's client is
synchronous). The streams are left out (they never end by design; ``test_api`` covers them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis")
from fieldgate.web.openapi import openapi_spec  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from .conftest import ThreadedGateway  # noqa: E402

schema = schemathesis.openapi.from_dict(openapi_spec()).exclude(path_regex=r"/stream$")


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a status page on a running gateway (loopback, no password)."""
    folder: Path = tmp_path_factory.mktemp("schemathesis")
    with ThreadedGateway(folder) as server:
        yield server.url


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case: schemathesis.Case, live_url: str) -> None:
    token = "schemathesis-csrf-token"
    if case.headers and "X-CSRF-Token" in case.headers:
        case.headers["X-CSRF-Token"] = token  # a browser echoes its cookie; anything else is a 403 (tested apart)
    case.call_and_validate(base_url=live_url, cookies={"fg_csrf": token})
