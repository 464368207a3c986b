"""A small, safe arithmetic language for derived points: ``power_l1 + power_l2 + power_l3``.

Profiles compute a point from others of the same reading: the sum of the
phases, a difference of two counters, a ratio. The text is parsed with
Python's own parser (``ast``, mode ``eval``) and then only a whitelist of
node types is accepted: numbers, names, ``+ - * /``, unary ``+ -``,
parentheses, and the functions ``abs``, ``min``, ``max``, ``sqrt``. No
attribute access, subscripts, calls of anything else, comprehensions,
conditionals or powers (``**`` makes a tiny expression arbitrarily costly),
and the tree is evaluated by this module, never by ``eval``. A well-kept
library (simpleeval, asteval) would bring a much larger language than a
profile needs, and one more dependency to a Raspberry Pi install; what is
needed is forty lines of whitelist.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass

#: Longest expression text a profile may hold.
MAX_LENGTH = 500
#: Most nodes one expression may have (bounds the work per reading).
MAX_NODES = 200

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable[..., float]] = {"abs": abs, "min": min, "max": max, "sqrt": math.sqrt}
_ARITY = {"abs": (1, 1), "sqrt": (1, 1), "min": (2, 64), "max": (2, 64)}


class ExpressionError(ValueError):
    """An expression that cannot be accepted; the message says why and where."""


@dataclass(frozen=True, slots=True)
class Expression:
    """A checked expression: the names it reads, and its tree."""

    text: str
    names: frozenset[str]
    _tree: ast.expr

    def evaluate(self, env: Mapping[str, float]) -> float:
        """The value for ``env`` (every name in ``names`` must be there).

        Raises:
            ArithmeticError: division by zero, overflow; ValueError: sqrt of a negative number.
        """
        return _eval(self._tree, env)


def parse(text: str, known: set[str] | frozenset[str] | None = None) -> Expression:
    """Check ``text`` and return it compiled; ``known``: the names it may read (None: any).

    Raises:
        ExpressionError: too long, not an expression, a construct outside the language, or an unknown name.
    """
    from .validation import did_you_mean

    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"the expression is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"not an expression: {exc.msg} at column {exc.offset or 0}") from None
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_NODES:
        raise ExpressionError(f"the expression has more than {MAX_NODES} parts")
    names: set[str] = set()
    functions: set[int] = set()  # ids of the Name nodes that name a called function
    for node in nodes:
        if isinstance(node, ast.Expression | ast.Load | ast.operator | ast.unaryop):
            continue  # an operator is judged with its BinOp / UnaryOp
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            continue
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) \
                and not isinstance(node.value, bool):
            continue
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            func = node.func.id
            if func not in _FUNCTIONS:
                raise ExpressionError(f"unknown function {func!r} ({', '.join(_FUNCTIONS)})")
            if node.keywords:
                raise ExpressionError(f"{func}() takes no keyword arguments")
            lo, hi = _ARITY[func]
            if not lo <= len(node.args) <= hi:
                raise ExpressionError(f"{func}() takes {lo} argument{'s' if lo > 1 else ''}"
                                      + (" or more" if hi > lo else ""))
            functions.add(id(node.func))
            continue
        if isinstance(node, ast.Name):
            if id(node) not in functions:
                names.add(node.id)
            continue
        raise ExpressionError(f"{ast.unparse(node)!r} is not allowed: use numbers, point names, + - * /, "
                              f"parentheses and {', '.join(_FUNCTIONS)}")
    if known is not None:
        for name in sorted(names):
            if name not in known:
                raise ExpressionError(f"unknown name {name!r}{did_you_mean(name, known)}")
    return Expression(text, frozenset(names), tree.body)


def _eval(node: ast.expr, env: Mapping[str, float]) -> float:
    if isinstance(node, ast.Constant):
        assert isinstance(node.value, int | float)  # parse() admitted only numbers
        return float(node.value)
    if isinstance(node, ast.Name):
        return float(env[node.id])
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_eval(node.left, env), _eval(node.right, env))
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_eval(node.operand, env))
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)  # parse() admitted nothing else
    return float(_FUNCTIONS[node.func.id](*(_eval(a, env) for a in node.args)))
