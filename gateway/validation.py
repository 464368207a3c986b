"""Turn pydantic validation errors into diagnostics a technician can act on.

Every error becomes ``file:line:col: key.path: message``; unknown keys and
unknown enum values get a did-you-mean from the names that would have been
accepted at that place.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from .units import ID_PATTERN, METRIC_PATTERN
from .yamlsrc import Diagnostic, Path_, SourceMap, format_path

M = TypeVar("M", bound=BaseModel)

_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'")


def did_you_mean(word: object, choices: typing.Iterable[str]) -> str:
    """`` did you mean 'x'?`` or an empty string."""
    if not isinstance(word, str):
        return ""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not matches:
        lowered = {c.lower(): c for c in choices}
        if word.lower() in lowered:
            matches = [lowered[word.lower()]]
    return f", did you mean {matches[0]!r}?" if matches else ""


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation may hold (through Optional/Union/Annotated)."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _models_in(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        out: list[type[BaseModel]] = []
        for arg in get_args(annotation):
            out.extend(_models_in(arg))
        return out
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _step(annotation: Any, part: str | int) -> list[Any]:
    """Annotations reached from ``annotation`` by one loc element."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _step(get_args(annotation)[0], part)
    if origin in (Union, types.UnionType):
        return [a for arg in get_args(annotation) for a in _step(arg, part)]
    if origin in (list, tuple, set, frozenset) and isinstance(part, int):
        args = get_args(annotation)
        return [args[0]] if args else []
    if origin is dict:
        args = get_args(annotation)
        return [args[1]] if len(args) == 2 else []
    for model in _models_in(annotation):
        field = model.model_fields.get(str(part))
        if field is None:
            for f in model.model_fields.values():
                if f.alias == part:
                    field = f
        if field is not None:
            return [field.annotation]
    return []


def allowed_keys(model: type[BaseModel], loc: Path_) -> list[str]:
    """Keys accepted by the model found at ``loc`` (for unknown-key hints)."""
    current: list[Any] = [model]
    for part in loc:
        current = [a for ann in current for a in _step(ann, part)]
    keys: list[str] = []
    for ann in current:
        for m in _models_in(ann):
            keys.extend(f.alias or name for name, f in m.model_fields.items())
    return keys


def _clean_loc(loc: tuple[Any, ...]) -> Path_:
    # pydantic inserts validator/union tags (e.g. "function-after[...]", "str") into
    # loc; keep only what is a real key or index in the document.
    # A key of the document may contain '[' too (even an escape code): only what has the shape of a
    # pydantic tag (``literal['a']``, ``function-after[...]``, ``list[int]``) or is a bare tag is dropped.
    return tuple(p for p in loc if isinstance(p, int) or not (p in _TAGS or _TAG_SHAPE.match(p)))


_TAG_SHAPE = re.compile(r"^[a-z][a-z-]*\[.*\]$", re.S)


_TAGS = {"str", "int", "float", "bool", "list", "dict", "function-after", "function-before",
         "function-plain", "function-wrap", "json-or-python", "lax-or-strict", "constrained-str",
         "tagged-union", "nullable", "is-instance"}


def errors_to_diagnostics(
    exc: ValidationError, model: type[BaseModel], smap: SourceMap, prefix: Path_ = ()
) -> list[Diagnostic]:
    """Map a pydantic ``ValidationError`` onto positions in the source file.

    Args:
        exc: the error raised when validating data loaded from ``smap``.
        model: the model that was validated (to compute did-you-mean keys).
        smap: positions of the loaded document.
        prefix: where the validated data stands inside the document.
    """
    out: list[Diagnostic] = []
    seen: set[tuple[Path_, str]] = set()
    for err in exc.errors(include_url=False):
        loc = _clean_loc(tuple(err["loc"]))
        full = (*prefix, *loc)
        kind = err["type"]
        ctx = err.get("ctx") or {}
        msg = err["msg"]
        prefer_key = False
        if kind == "extra_forbidden":
            prefer_key = True
            key = loc[-1] if loc else ""
            hint = did_you_mean(key, allowed_keys(model, loc[:-1]))
            msg = f"unknown key {key!r}{hint}"
            if not hint:
                allowed = sorted(set(allowed_keys(model, loc[:-1])))
                if allowed and len(allowed) <= 12:
                    msg += f" (allowed: {', '.join(allowed)})"
        elif kind in ("literal_error", "enum"):
            expected = _QUOTED.findall(str(ctx.get("expected", "")))
            msg = f"unknown value {err.get('input')!r}{did_you_mean(err.get('input'), expected)}"
            if expected and not msg.endswith("?"):
                msg += f" (expected one of: {', '.join(expected)})"
        elif kind == "missing":
            prefer_key = False
            msg = "required key is missing"
        elif kind == "string_pattern_mismatch":
            pattern = str(ctx.get("pattern", ""))
            if pattern == ID_PATTERN:
                msg = (f"{err.get('input')!r} is not a valid id: use letters, digits, '_', '.', '-' "
                       "(at most 64, starting with a letter or digit; no '/', '+', '#')")
            elif pattern == METRIC_PATTERN:
                msg = f"{err.get('input')!r} is not a valid metric name: use letters, digits, '_', '.', '-'"
        elif kind == "value_error":
            msg = str(ctx.get("error", msg))
        elif kind == "assertion_error":
            msg = msg.removeprefix("Assertion failed, ")
        if (full, msg) in seen:
            continue
        seen.add((full, msg))
        line, col = smap.position(full, prefer_key=prefer_key)
        if kind == "missing":
            line, col = smap.position(full[:-1], prefer_key=True)
        out.append(Diagnostic(smap.file, line, col, format_path(full), msg))
    return out


def internal_error(what: str, exc: BaseException) -> str:
    """The message for a check that raised instead of reporting (a bug, said as one, not a traceback)."""
    detail = str(exc)[:200]
    return (f"{what} failed on this value ({type(exc).__name__}{': ' + detail if detail else ''}); "
            "this is a bug in fieldgate: please report it with this file")


def validate_model(
    model: type[M], data: Any, smap: SourceMap, prefix: Path_ = (), context: dict[str, Any] | None = None
) -> tuple[M | None, list[Diagnostic]]:
    """Validate ``data`` with ``model``; return the instance or diagnostics.

    pydantic turns a validator's ``ValueError`` into an error but lets any other
    exception through; a validator that trips over a hostile value (an
    ``OverflowError`` on ``1e999GB``) is reported at the value it was checking.
    """
    try:
        return model.model_validate(data, context=context), []
    except ValidationError as exc:
        return None, errors_to_diagnostics(exc, model, smap, prefix)
    except Exception as exc:  # see the docstring: a named error instead of a traceback
        line, col = smap.position(prefix)
        return None, [Diagnostic(smap.file, line, col, format_path(prefix), internal_error(
            f"the {model.__name__} check", exc))]
