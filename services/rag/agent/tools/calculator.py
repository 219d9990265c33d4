"""Arithmetic parsed with `ast` and evaluated node by node; never `eval`.

Numbers, + - * / // % **, unary signs, parentheses and round/abs/min/max/sqrt only.
Every argument is bounded before it is used (magnitudes, exponents, the size of a power's
result, `round`'s digits), so that no input can make one step slow; the agent also runs
the evaluation in a worker thread under its tool time limit.
"""

from __future__ import annotations

import ast
import asyncio
import math
import operator
import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, Field

from .base import AgentTool, ToolContext

MAX_EXPONENT = 1000
MAX_MAGNITUDE = 1e300
MAX_DIGITS = 20  # round(x, n): |n| at most this (round(1, -10**8) would build 10**(10**8))
MAX_ARGS = 50
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
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
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
        if len(node.args) > MAX_ARGS:
            raise CalculatorError(f"{node.func.id}: at most {MAX_ARGS} arguments")
        args = [_eval(a) for a in node.args]
        if node.func.id == "round" and len(args) == 2:
            digits = args[1]
            if not isinstance(digits, int) or abs(digits) > MAX_DIGITS:
                raise CalculatorError(f"round: the digits must be a whole number from -{MAX_DIGITS} to {MAX_DIGITS}")
        try:
            return _check(_FUNCTIONS[node.func.id](*args))
        except (TypeError, ValueError) as exc:
            raise CalculatorError(f"{node.func.id}: {exc}") from None
    allowed = ", ".join(_FUNCTIONS)
    raise CalculatorError(f"only numbers, + - * / // % **, parentheses and {allowed} are allowed")


def _check_power(base: Number, exponent: Number) -> None:
    """Refuse a power whose result would be too large before computing it (an int power is exact, so
    (10**300)**1000 would build a million-digit number first)."""
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponent too large (at most {MAX_EXPONENT})")
    if abs(base) > 1 and exponent > 0 and exponent * math.log10(abs(base)) > math.log10(MAX_MAGNITUDE):
        raise CalculatorError("result too large")


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


# Questions whose answer is a number computed from others (a difference, a sum, a ratio, a share), in
# English and French: the agent computes those with the calculator (`graph.call_model`).
# A false positive costs one calculator step the model may turn away from (it writes its own action).
_COMPARATIVE = (
    "more|less|fewer|longer|shorter|older|younger|heavier|lighter|higher|lower|bigger|larger|smaller|faster|"
    "slower|cheaper|farther|further|taller|wider|earlier|later"
)
_COMPUTE = re.compile(
    rf"\bhow (?:many|much) (?:[\w-]+ ){{0,3}}?(?:{_COMPARATIVE})\b|\btimes (?:as|{_COMPARATIVE})\b"
    r"|\b(?:difference|gap|combined|in total|total|altogether|together|sum of|add up|ratio|average|percentage|"
    r"per ?cent)\b"
    r"|\bcombien\b.*\bde (?:plus|moins)\b|\bcombien de fois\b.*\b(?:plus|moins)\b|\b(?:de plus|de moins) que\b"
    r"|\bdiff[ée]rence\b|\b[ée]cart\b"
    r"|\bau total\b|\ben tout\b|\btotale?\b|\bsomme\b|\bfois (?:plus|moins)\b|\bmoyenne\b|\bpourcentage\b",
    re.IGNORECASE,
)


def asks_to_compute(question: str) -> bool:
    """Whether `question` asks for a number to be computed from others ("How many more hours…", "the total
    of…", "Combien de … de plus…"), rather than for a stated fact."""
    return _COMPUTE.search(question) is not None


class CalculatorArgs(BaseModel):
    expression: Annotated[str, Field(min_length=1, max_length=500, description="e.g. (1200 - 950) / 950 * 100")]


async def calculate(args: CalculatorArgs, _: ToolContext) -> str:
    value = await asyncio.to_thread(evaluate, args.expression)  # CPU work: off the event loop
    return f"{args.expression.strip()} = {format_number(value)}"


TOOL = AgentTool(
    name="calculator",
    description="Evaluate arithmetic: numbers, + - * / // % ** and round, abs, min, max, sqrt.",
    args=CalculatorArgs,
    run=calculate,
)
