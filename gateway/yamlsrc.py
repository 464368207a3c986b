"""YAML loading that remembers where every value came from.

Field technicians edit configs and profiles by hand; an error has to point at
the line. PyYAML's composer gives us nodes with marks; we build plain Python
data from them ourselves so that we can (1) record the line and column of
every key and value by key path, and (2) reject duplicate keys, which PyYAML
silently lets the last one win.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

try:  # libyaml is several times faster; fall back to pure Python where absent
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader

Path_ = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One finding in a source file, printed as ``file:line:col: path: message``."""

    file: str
    line: int
    col: int
    path: str
    message: str
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        what = f"{self.path}: " if self.path else ""
        tag = "warning: " if self.severity == "warning" else ""
        return f"{where}: {what}{tag}{self.message}"


@dataclass(slots=True)
class SourceMap:
    """Where each key path of a loaded document stands in its file.

    ``values`` maps a key path to the position of its value, ``keys`` to the
    position of the key itself (better for "unknown key" errors).
    """

    file: str
    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def position(self, path: Path_, *, prefer_key: bool = False) -> tuple[int, int]:
        """Position of ``path`` or of its closest known ancestor."""
        p = tuple(path)
        while True:
            if prefer_key and p in self.keys:
                return self.keys[p]
            if p in self.values:
                return self.values[p]
            if p in self.keys:
                return self.keys[p]
            if not p:
                return (1, 1)
            p = p[:-1]

    def sub(self, prefix: Path_, file: str | None = None) -> SourceMap:
        """A view re-rooted at ``prefix`` (for documents nested in others)."""
        n = len(prefix)
        out = SourceMap(file or self.file)
        out.values = {k[n:]: v for k, v in self.values.items() if k[:n] == prefix}
        out.keys = {k[n:]: v for k, v in self.keys.items() if k[:n] == prefix}
        return out


def format_path(path: Path_) -> str:
    """``("points", 6, "type")`` → ``points[6].type``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class _Builder:
    def __init__(self, loader: yaml.SafeLoader, smap: SourceMap) -> None:
        self.loader = loader
        self.smap = smap
        self.diagnostics: list[Diagnostic] = []

    def _pos(self, node: yaml.Node) -> tuple[int, int]:
        return (node.start_mark.line + 1, node.start_mark.column + 1)

    def build(self, node: yaml.Node, path: Path_) -> Any:
        self.smap.values[path] = self._pos(node)
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)  # resolves "<<" merge keys
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.loader.construct_object(key_node, deep=True)
                if not isinstance(key, str | int | float | bool) and key is not None:
                    line, col = self._pos(key_node)
                    self.diagnostics.append(
                        Diagnostic(self.smap.file, line, col, format_path(path), "keys must be plain scalars")
                    )
                    continue
                key = str(key) if not isinstance(key, str) else key
                if key in out:
                    line, col = self._pos(key_node)
                    first = self.smap.keys.get((*path, key), (0, 0))
                    self.diagnostics.append(
                        Diagnostic(
                            self.smap.file, line, col, format_path((*path, key)),
                            f"duplicate key (first defined on line {first[0]}); remove one of them",
                        )
                    )
                    continue
                self.smap.keys[(*path, key)] = self._pos(key_node)
                out[key] = self.build(value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.loader.construct_object(node, deep=True)


def load_yaml(text: str, file: str) -> tuple[Any, SourceMap, list[Diagnostic]]:
    """Parse one YAML document, keeping positions and reporting duplicate keys.

    Returns:
        ``(data, source_map, diagnostics)``; on a syntax error ``data`` is
        ``None`` and the diagnostic points at the offending character.
    """
    smap = SourceMap(file)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, smap, []
        builder = _Builder(loader, smap)
        data = builder.build(node, ())
        return data, smap, builder.diagnostics
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        return None, smap, [Diagnostic(file, line, col, "", f"YAML syntax error: {problem}")]
    except yaml.YAMLError as exc:
        return None, smap, [Diagnostic(file, 1, 1, "", f"YAML error: {exc}")]
    finally:
        loader.dispose()


def load_yaml_file(path: Path) -> tuple[Any, SourceMap, list[Diagnostic]]:
    """Read and parse ``path``; an unreadable file is a diagnostic, not a traceback."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, SourceMap(str(path)), [Diagnostic(str(path), 1, 1, "", "file not found")]
    except (OSError, UnicodeDecodeError) as exc:
        return None, SourceMap(str(path)), [Diagnostic(str(path), 1, 1, "", f"cannot read file: {exc}")]
    return load_yaml(text, str(path))
