"""Strict JSON for what uploads carry (adapter configs, safetensors headers, upload metadata).

Python's `json` takes more than JSON and more than the rest of the system can hold: `NaN` and
`Infinity` (which PostgreSQL's jsonb refuses), numbers that overflow to infinity, integers of
thousands of digits (which Python refuses to convert, with a ValueError of its own), nesting deep
enough to raise RecursionError, and strings holding NUL or unpaired surrogates (which jsonb and
UTF-8 refuse). `loads` refuses all of them with a ValueError that says what was wrong.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .limits import MAX_JSON_DEPTH, MAX_JSON_INT_DIGITS


class JSONRefused(ValueError):
    """Text that is not JSON, or JSON beyond what the system stores (the message says which)."""


def _constant(name: str) -> Any:
    raise JSONRefused(f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONRefused(f"the number {text[:32]} is out of range")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise JSONRefused(f"an integer has more than {MAX_JSON_INT_DIGITS} digits")
    return int(text)


def _check_string(value: str) -> None:
    if "\x00" in value:
        raise JSONRefused("a string holds a NUL character (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise JSONRefused("a string holds an unpaired surrogate (\\ud800-\\udfff)") from None


def check_tree(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise JSONRefused if parsed JSON nests deeper than `max_depth` or holds a string jsonb refuses."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_string(item)
            continue
        if not isinstance(item, (dict, list)):
            continue
        if depth > max_depth:
            raise JSONRefused(f"nested more than {max_depth} levels deep")
        if isinstance(item, dict):
            for key, child in item.items():
                _check_string(key)
                stack.append((child, depth + 1))
        else:
            stack.extend((child, depth + 1) for child in item)


def loads(text: str | bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON strictly (see the module docstring); raises JSONRefused."""
    try:
        value = json.loads(text, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except JSONRefused:
        raise
    except RecursionError:
        raise JSONRefused(f"nested more than {max_depth} levels deep") from None
    except UnicodeDecodeError:
        raise JSONRefused("not UTF-8 text") from None
    except ValueError as exc:  # json.JSONDecodeError, or a number Python cannot convert
        raise JSONRefused(f"not valid JSON ({exc})") from None
    check_tree(value, max_depth)
    return value
