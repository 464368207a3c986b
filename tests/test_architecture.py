"""The folders are the architecture: who may import whom, read from the source with ``ast``.

No module is imported here: every ``import`` and ``from ... import`` statement (module level
and inside functions) of gateway/, drivers/ and hw-sim/ is parsed and resolved to the installed
module names (``fieldgate``, ``fieldgate.drivers``, ``fieldgate_hwsim``). The rules:

- core (gateway/) reaches drivers and simulators only through entry points: it imports no
  ``fieldgate.drivers.*`` or ``fieldgate_hwsim.*`` module, and names none in a string;
- a driver imports only the seam (``SEAM``), its own folder and libraries: not the buffer, the
  uplink, the configuration, another driver or a simulator;
- core imports no device protocol library (bleak, dbus_fast, pymodbus, pyserial, aiocoap);
- the status page (gateway/web/) does not import the buffer;
- no two fieldgate modules import each other, directly or round a longer circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO

#: The core modules a driver may import: the driver seam and the pieces drivers share. One list.
SEAM = frozenset({
    "fieldgate.secret",      # Secret, for bind keys and PSKs in profiles
    "fieldgate.codecs",      # checksums, binary fields and frames (serial and CoAP)
    "fieldgate.backoff",     # the one full-jitter backoff
    "fieldgate.ratelimit",   # the one token bucket
    "fieldgate.listen",      # the one listen-address type
    "fieldgate.driver",      # the protocols, DeviceContext, hooks
    "fieldgate.schema",      # RawReading, PointError, Quality
    "fieldgate.errors",      # the error tree
    "fieldgate.units",       # Duration types for profile and connection models
    "fieldgate.profile",     # BaseProfile, BasePoint, Model
    "fieldgate.validation",  # did_you_mean for profile validators
    "fieldgate.checks",      # Finding and host checks for doctor() hooks
    "fieldgate.tasks",       # cancel_and_wait: stop a child task without swallowing our own cancel
    "fieldgate.turns",       # BusTurns: the one lock of a shared line (FIFO, a write next)
})

#: Where each installed package's source lives.
ROOTS = {"fieldgate.drivers": REPO / "drivers", "fieldgate_hwsim": REPO / "hw-sim", "fieldgate": REPO / "gateway"}


@dataclass(frozen=True, slots=True)
class Import:
    """One import statement's target, resolved to a module name."""

    source: str  # the importing module
    target: str  # the imported module (or the package an imported name lives in)
    line: int
    top_level: bool  # at module level (not inside a function or an ``if TYPE_CHECKING`` block)

    def __str__(self) -> str:
        return f"{self.source}:{self.line} imports {self.target}"


def _module_name(path: Path) -> str:
    for package, root in ROOTS.items():
        if path.is_relative_to(root):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join([package, *parts])
    raise AssertionError(f"{path} is in no package")


def _sources() -> Iterator[Path]:
    for root in ROOTS.values():
        for path in sorted(root.rglob("*.py")):
            if "tests" not in path.relative_to(root).parts and not path.name.startswith("test_"):
                yield path


MODULES = {_module_name(p): p for p in _sources()}


def _known(name: str) -> str:
    """``fieldgate.web.start_web`` (a name from a package) → the module ``fieldgate.web``."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]

    def visit(node: ast.AST, top: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(module, alias.name, child.lineno, top)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[:len(base) - (child.level - 1)]
                    prefix = ".".join(base + ([child.module] if child.module else []))
                else:
                    prefix = child.module or ""
                for alias in child.names:
                    full = f"{prefix}.{alias.name}"
                    # `from . import doctor` imports a module; `from .app import Gateway` a name of one
                    yield Import(module, full if _known(full) == full else prefix, child.lineno, top)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) or (
                    isinstance(child, ast.If) and _is_type_checking(child)):
                yield from visit(child, False)
            else:
                yield from visit(child, top)

    yield from visit(tree, True)


IMPORTS = [imp for name, path in MODULES.items() for imp in _imports(name, path)]


def _strings(path: Path) -> Iterator[tuple[int, str]]:
    """String constants that are code, not docstrings (those may name anything)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    docstrings: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def _is_core(module: str) -> bool:
    return module.startswith("fieldgate") and not module.startswith(("fieldgate.drivers", "fieldgate_hwsim"))


def _driver_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if module.startswith("fieldgate.drivers.") and len(parts) > 2 else None


def _in(target: str, *packages: str) -> bool:
    return any(target == p or target.startswith(p + ".") for p in packages)


def test_the_parser_sees_the_imports_it_judges() -> None:
    """A rule that sees no import passes on anything: the parse must find what is known to be there."""
    seen = {(i.source, i.target) for i in IMPORTS}
    assert ("fieldgate.config", "fieldgate.driver") in seen  # from .driver import ... (relative)
    assert ("fieldgate.drivers.modbus.driver", "fieldgate.drivers.modbus.bus") in seen
    assert ("fieldgate.drivers.modbus.driver", "fieldgate.driver") in seen  # absolute
    assert ("fieldgate.cli", "fieldgate.doctor") in seen  # from . import doctor (a module)
    assert len(MODULES) > 60 and len(IMPORTS) > 300


def test_core_imports_no_driver_and_no_simulator() -> None:
    """gateway/ reaches drivers, scanners and simulators only through entry points."""
    bad = [str(i) for i in IMPORTS if _is_core(i.source) and _in(i.target, "fieldgate.drivers", "fieldgate_hwsim")]
    assert not bad, "\n".join(bad)


def test_core_names_no_driver_or_simulator_module_in_a_string() -> None:
    """No import by string either (``importlib.import_module(f"fieldgate.drivers.{x}.scan")``)."""
    bad = [f"{name}:{line}: {text!r}" for name, path in MODULES.items() if _is_core(name)
           for line, text in _strings(path) if "fieldgate.drivers." in text or "fieldgate_hwsim" in text]
    assert not bad, "\n".join(bad)


def test_drivers_import_only_the_seam_from_core() -> None:
    """Not the buffer, the uplink, the web, the supervisor or configuration internals."""
    bad = [str(i) for i in IMPORTS if _driver_of(i.source) and _is_core(i.target) and _known(i.target) in MODULES
           and not _in(_known(i.target), *SEAM) and _known(i.target) != "fieldgate"]
    assert not bad, "\n".join(bad)


def test_no_driver_imports_config() -> None:
    bad = [str(i) for i in IMPORTS if _driver_of(i.source) and _known(i.target) == "fieldgate.config"]
    assert not bad, "\n".join(bad)


def _sideways() -> list[str]:
    return [str(i) for i in IMPORTS if (mine := _driver_of(i.source)) is not None
            and (theirs := _driver_of(_known(i.target))) is not None and theirs != mine]


def test_no_driver_imports_another_driver() -> None:
    bad = _sideways()
    assert not bad, "\n".join(bad)


def test_drivers_import_no_simulator() -> None:
    """Simulators come in through entry points (``backend: replay`` is one), not by import or by name."""
    bad = [str(i) for i in IMPORTS if _driver_of(i.source) and _in(i.target, "fieldgate_hwsim")]
    bad += [f"{name}:{line}: {text!r}" for name, path in MODULES.items() if _driver_of(name)
            for line, text in _strings(path) if "fieldgate_hwsim" in text]
    assert not bad, "\n".join(bad)


#: Device protocol libraries: a driver's business (core never names BlueZ, a serial port or a register).
PROTOCOL_LIBRARIES = ("bleak", "dbus_fast", "pymodbus", "serial", "serial_asyncio_fast", "aiocoap", "cbor2")


def test_core_imports_no_protocol_library() -> None:
    bad = [str(i) for i in IMPORTS if _is_core(i.source) and _in(i.target, *PROTOCOL_LIBRARIES)]
    assert not bad, "\n".join(bad)


def test_web_imports_no_buffer_internals() -> None:
    bad = [str(i) for i in IMPORTS if _in(i.source, "fieldgate.web") and _in(i.target, "fieldgate.buffer")]
    assert not bad, "\n".join(bad)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return out


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for i in IMPORTS:
        target = _known(i.target)
        # A package's __init__ that only re-exports is not a circle with its own modules' imports of it.
        if target in MODULES and target != i.source and not i.source.startswith(target + "."):
            edges.setdefault(i.source, set()).add(target)
    return edges


def test_no_import_circle() -> None:
    """Counted with the imports inside functions too: a lazy import hides a circle, it does not end it."""
    assert _cycles(_graph()) == []


def test_the_circle_finder_finds_circles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
