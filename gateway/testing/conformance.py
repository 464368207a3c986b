"""The driver conformance suite: what every driver, built-in or third-party, must pass.

A third party runs it in one line, in any test module::

    from fieldgate.testing import conformance
    TestConformance = conformance.suite("mydriver")

The driver is found by name through the ``fieldgate.drivers`` entry points,
as the gateway finds it. The checks:

* the profile (and connection) schemas build;
* the driver's ``example.yaml`` (beside its module) validates as a gateway
  configuration and uses the driver;
* the driver's ``README.md`` has the sections a field technician looks for:
  profile reference, what it produces, troubleshooting;
* every library profile for the driver (shipped or from a ``fieldgate.profiles``
  entry point) validates, and each of its test vectors is decoded through the
  driver's ``decode_vector`` hook (``fieldgate.driver.DecodesVectors``): the
  point's value must be the vector's ``raw``, and normalized (scale, offset,
  decimals), its ``value`` and every value in ``expect``. A vector with nothing
  to decode (``point``, ``raw``, ``value``) is normalized as it stands; one that
  carries data (registers, bytes, text) for a driver without the hook is an error;
* opening and closing a device of the example leaves no task and no file
  descriptor behind (a refusal with ``DriverError`` is fine: no peer is there).

Tests are synchronous (each runs its own event loop), so the suite needs no
pytest plugin beyond pytest itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
from importlib.resources import files
from pathlib import Path
from typing import Any, ClassVar

from ..config import DeviceSpec, library_profiles, load_config, load_profile_file
from ..driver import DecodesVectors, DeviceContext, DriverClass, SharedResources, create_driver, load_driver
from ..errors import DriverError
from ..normalize import Normalizer
from ..profile import BaseProfile
from ..schema import RawReading

#: README headings (``## ...``, case-insensitive, by prefix) a driver's README must have.
README_SECTIONS = ("profile reference", "what it produces", "troubleshooting")
#: Longest an open or a close may take in the leak check (a busy 2-core machine included).
OPEN_CLOSE_TIMEOUT_S = 10.0


#: The hook's former name here; it is declared with the other optional hooks in fieldgate.driver.
VectorDecoder = DecodesVectors
#: Keys of a vector that say what it should decode to (the rest is data to decode).
_VECTOR_CLAIMS = frozenset({"point", "raw", "value", "expect", "description"})
#: The measurement time vectors are normalized at (a fixed one: vectors carry none).
_VECTOR_TS = 1.7e9


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, float) and isinstance(got, int | float) and not isinstance(got, bool):
        return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-6)
    return bool(got == want)


def vector_problems(driver: DriverClass, path: Path) -> tuple[list[str], int]:
    """What is wrong with one profile's test vectors, and how many were checked.

    Each vector is decoded through the driver's ``decode_vector`` hook (see the module
    docstring), then normalized as a reading would be, and compared with what it claims.
    """
    profile, diags = load_profile_file(path, driver)
    if profile is None:
        return [str(d) for d in diags if d.severity == "error"] or [f"{path}: does not load"], 0
    points = {p.name for p in profile.points}
    normalizer = Normalizer("conformance", "vectors", profile)
    problems: list[str] = []
    checked = 0
    for i, vector in enumerate(profile.test_vectors or []):
        where = f"{path}: test_vectors[{i}]"
        point = vector.get("point")
        if point is not None and point not in points:
            problems.append(f"{where}: names unknown point {point!r}")
            continue
        data = sorted(set(vector) - _VECTOR_CLAIMS) + (["raw"] if isinstance(vector.get("raw"), dict) else [])
        if isinstance(driver, DecodesVectors):
            try:
                raw = driver.decode_vector(profile, vector)
            except Exception as exc:  # a vector that does not decode is the finding, whatever it raises
                problems.append(f"{where}: does not decode: {exc!r}")
                continue
        elif data:
            problems.append(f"{where}: carries data to decode ({', '.join(data)}) but driver {driver.name!r} has "
                            "no decode_vector hook (fieldgate.driver.DecodesVectors)")
            continue
        elif point is not None and "raw" in vector:
            raw = {point: vector["raw"]}
        else:
            continue
        checked += 1
        claimed = vector.get("raw")
        if point is not None and "raw" in vector and not isinstance(claimed, dict) and not (
                point in raw and _same(raw[point], claimed)):
            problems.append(f"{where}: {point} decodes to raw {raw.get(point)!r}, the vector says {claimed!r}")
        expected = dict(vector.get("expect") or {})
        if point is not None and "value" in vector:
            expected[point] = vector["value"]
        if not expected:
            continue
        msg = normalizer.normalize(RawReading(dict(raw), ts=_VECTOR_TS))
        metrics = msg["metrics"] if msg is not None else {}
        for key, want in expected.items():
            got = metrics.get(key, {}).get("value") if key in metrics else None
            if key not in metrics or not _same(got, want):
                problems.append(f"{where}: {key} is {got!r}, the vector expects {want!r}")
    return problems, checked


def driver_folder(cls: DriverClass | type[Any]) -> Path:
    """The folder of the driver's package (where example.yaml and README.md live)."""
    package = cls.__module__.rpartition(".")[0] or cls.__module__
    return Path(str(files(package)))


def readme_headings(text: str) -> list[str]:
    """The ``##`` headings of a Markdown text, lower case."""
    return [m.group(1).strip().lower() for m in re.finditer(r"^##\s+(.+)$", text, re.M)]


def missing_sections(text: str) -> list[str]:
    """Required README sections the text lacks."""
    headings = readme_headings(text)
    return [s for s in README_SECTIONS if not any(h.startswith(s) for h in headings)]


def library_profiles_of(name: str) -> list[Path]:
    """Library profiles whose ``driver:`` is ``name``."""
    out = []
    for path in library_profiles().values():
        head = path.read_text(encoding="utf-8", errors="replace")
        if re.search(rf"^driver:\s*['\"]?{re.escape(name)}['\"]?\s*(#.*)?$", head, re.M):
            out.append(path)
    return out


def _fds() -> set[str]:
    try:
        return set(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux: the check is then tasks only
        return set()


async def open_close_leaks(spec: DeviceSpec) -> tuple[list[str], set[str]]:
    """Open and close the device twice; what the second round left: (task names, file descriptors)."""
    log = logging.LoggerAdapter(logging.getLogger("fieldgate.conformance"), {"device": spec.config.id})
    leaked_tasks: list[str] = []
    leaked_fds: set[str] = set()
    for round_ in range(2):  # the first round warms lazy imports and caches that keep files open
        before_tasks = asyncio.all_tasks()
        before_fds = _fds()
        shared = SharedResources()
        ctx = DeviceContext(spec.config.id, spec.profile, spec.connection, spec.config.poll_timeout, log, shared)
        try:
            async with asyncio.timeout(OPEN_CLOSE_TIMEOUT_S):
                async with create_driver(spec.driver, ctx):
                    pass
        except DriverError:
            pass  # no peer answers in a test: refusing to open is right, leaking is not
        except TimeoutError:
            pass  # an open that waits for a peer is cancelled; what it leaves is checked below
        left = [t for t in asyncio.all_tasks() - before_tasks if t is not asyncio.current_task()]
        if left:
            _done, pending = await asyncio.wait(left, timeout=2.0)  # a task in its last turn may finish
            left = list(pending)
        if round_ == 1:
            leaked_tasks = sorted(t.get_name() for t in left)
            leaked_fds = _fds() - before_fds
        for t in left:
            t.cancel()
    return leaked_tasks, leaked_fds


def suite(name: str, example: Path | None = None, readme: Path | None = None) -> type:
    """The conformance checks for driver ``name`` as a pytest test class.

    Args:
        name: the driver's entry-point name.
        example: its example configuration (default: ``example.yaml`` beside the driver's module).
        readme: its README (default: ``README.md`` beside the driver's module).
    """
    import pytest

    def _driver() -> DriverClass:
        return load_driver(name)

    def _example() -> Path:
        return example or driver_folder(_driver()) / "example.yaml"

    class DriverConformance:
        driver_name: ClassVar[str] = name

        def test_profile_schema_builds(self) -> None:
            cls = _driver()
            assert cls.name == name, f"the entry point {name!r} loads a driver named {cls.name!r}"
            assert issubclass(cls.Profile, BaseProfile), "Profile must extend fieldgate.profile.BaseProfile"
            schema = cls.Profile.model_json_schema()
            assert schema.get("type") == "object" and schema.get("properties"), schema
            connection = getattr(cls, "Connection", None)
            if connection is not None:
                assert connection.model_json_schema().get("type") == "object"

        def test_example_validates(self) -> None:
            path = _example()
            assert path.is_file(), f"{name}: no example configuration at {path}"
            loaded = load_config(path)  # raises ConfigError with every diagnostic
            assert any(d.driver is _driver() for d in loaded.devices), f"{path} has no device of driver {name!r}"

        def test_readme_has_its_sections(self) -> None:
            path = readme or driver_folder(_driver()) / "README.md"
            assert path.is_file(), f"{name}: no README at {path}"
            missing = missing_sections(path.read_text(encoding="utf-8"))
            assert not missing, f"{path}: missing '## ' sections: {', '.join(missing)}"

        def test_library_profiles_and_vectors(self) -> None:
            cls = _driver()
            problems = [p for path in library_profiles_of(name) for p in vector_problems(cls, path)[0]]
            assert not problems, "\n".join(problems)

        def test_open_close_leaves_nothing_behind(self) -> None:
            loaded = load_config(_example())
            spec = next(d for d in loaded.devices if d.driver is _driver())
            tasks, fds = asyncio.run(open_close_leaks(spec))
            assert not tasks, f"{name}: tasks left running after close: {tasks}"
            assert not fds, f"{name}: file descriptors left open after close: {sorted(fds)}"

    DriverConformance.__name__ = DriverConformance.__qualname__ = f"TestConformance_{name}"
    DriverConformance.__test__ = True  # type: ignore[attr-defined]  # pytest reads this flag
    _ = pytest  # imported so a missing pytest fails here, with its own message
    return DriverConformance


__all__ = ["README_SECTIONS", "VectorDecoder", "missing_sections", "open_close_leaks", "suite", "vector_problems"]
