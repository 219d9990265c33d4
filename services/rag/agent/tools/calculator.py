"""Arithmetic parsed with `ast` and evaluated node by node; never `eval`.

Numbers, + - * / // % **, unary signs, parentheses and round/abs/min/max/sqrt only.
Exponents and magnitudes are bounded so that no input can hang the process.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, Field

from .base import AgentTool, ToolContext

MAX_EXPONENT = 1000
MAX_MAGNITUDE = 1e300
Number = int | float

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable[..., Any]] = {"round": round, "abs": abs, "min": min, "max": max, "sqrt": math.sqrt}


class CalculatorError(ValueError):
    pass


def evaluate(expression: str) -> Number:
    """The value of an arithmetic expression; CalculatorError for anything else."""
    text = expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/")
    if len(text) > 500:
        raise CalculatorError("expression too long (500 characters at most)")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise CalculatorError(f"not an arithmetic expression: {expression!r}") from None
    return _check(_eval(tree.body))


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _check(_UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalculatorError(f"exponent too large (at most {MAX_EXPONENT})")
        try:
            value = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("result too large") from None
        if isinstance(value, complex):
            raise CalculatorError("the result is not a real number")
        return _check(value)
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
        and node.args
    ):
        args = [_eval(a) for a in node.args]
        try:
            return _check(_FUNCTIONS[node.func.id](*args))
        except (TypeError, ValueError) as exc:
            raise CalculatorError(f"{node.func.id}: {exc}") from None
    allowed = ", ".join(_FUNCTIONS)
    raise CalculatorError(f"only numbers, + - * / // % **, parentheses and {allowed} are allowed")


def _check(value: Any) -> Number:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise CalculatorError("the result is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("the result is not finite")
    if abs(value) > MAX_MAGNITUDE:
        raise CalculatorError("result too large")
    return value


def format_number(value: Number) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.12g}" if isinstance(value, float) else str(value)


class CalculatorArgs(BaseModel):
    expression: Annotated[str, Field(min_length=1, max_length=500, description="e.g. (1200 - 950) / 950 * 100")]


async def calculate(args: CalculatorArgs, _: ToolContext) -> str:
    return f"{args.expression.strip()} = {format_number(evaluate(args.expression))}"


TOOL = AgentTool(
    name="calculator",
    description="Evaluate arithmetic: numbers, + - * / // % ** and round, abs, min, max, sqrt.",
    args=CalculatorArgs,
    run=calculate,
)
