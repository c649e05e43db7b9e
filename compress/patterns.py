"""`rank_pattern` / `alpha_pattern`: PEFT's matching rule, run in linear time.

PEFT (`peft.utils.other.get_pattern_key`) gives a module the value of the first key, in the config's
order, for which `re.match(rf"(.*\\.)?({key})$", module)` succeeds, and failing that the value stored
under the module's own name. The keys come from an uploaded config, and so do the module names: with
Python's backtracking engine a key like `(a+)+b` takes time exponential in the name's length (27
characters froze a server for 27 s). Here the same template is matched with RE2, whose time is linear
in the input, and a key is accepted only where RE2 and Python's `re` read it alike:

- it compiles with Python's `re` (else PEFT itself fails on it) and with RE2 (which has no
  backreferences, lookaround, atomic groups or possessive repeats);
- it is printable ASCII and holds no `{,n}` repeat (a repeat to Python, text to RE2), no escaped
  digit (a backreference to Python, an octal escape to RE2), no `\\B` (which Python never matches
  in an empty name) and no POSIX class `[[:alpha:]]` (a class to RE2, a nested set to Python);
- the module names it is matched against are printable ASCII too, where `\\d`, `\\w`, `\\s`, `\\b`,
  `$` and case folding mean the same in both engines.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Mapping
from typing import Any

import re2

from .errors import InvalidAdapter
from .limits import MAX_PATTERN_LENGTH

TEMPLATE = r"(.*\.)?({key})$"  # peft.utils.other.get_pattern_key
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # refusals are reported as InvalidAdapter, not on stderr
    options.never_capture = True  # only whether it matches counts
    return options


def _escapes(key: str) -> set[str]:
    """The characters that follow a backslash in `key`."""
    found, i = set(), 0
    while i < len(key):
        if key[i] == "\\":
            found.add(key[i + 1 : i + 2])
            i += 2
        else:
            i += 1
    return found


@functools.lru_cache(maxsize=8192)
def compile_key(key: str) -> Any:
    """The RE2 program for one key in PEFT's template; raises InvalidAdapter (with `key` quoted) for a
    key that cannot be matched as PEFT would."""
    shown = key if len(key) <= 80 else key[:77] + "..."
    if len(key) > MAX_PATTERN_LENGTH:
        raise InvalidAdapter(f"pattern {shown!r} is longer than {MAX_PATTERN_LENGTH} characters")
    if not _PRINTABLE_ASCII.fullmatch(key):
        raise InvalidAdapter(f"pattern {shown!r} holds characters other than printable ASCII")
    if "{," in key:
        raise InvalidAdapter(f"pattern {shown!r}: write a repeat {{,n}} as {{0,n}}")
    escapes = _escapes(key)
    if any(c.isdigit() for c in escapes):
        raise InvalidAdapter(f"pattern {shown!r}: backreferences and octal escapes are not supported")
    if "B" in escapes:
        raise InvalidAdapter(f"pattern {shown!r}: \\B is not supported (the engines disagree on empty names)")
    template = TEMPLATE.format(key=key)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "Possible nested set": [[:alpha:]] and the like
            re.compile(template)
    except (re.error, Warning, RecursionError, OverflowError) as exc:
        reason = exc.msg if isinstance(exc, re.error) else str(exc)  # without a position in the template
        raise InvalidAdapter(f"pattern {shown!r} is not a valid regular expression ({reason})") from None
    try:
        return re2.compile(template, _re2_options())
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise InvalidAdapter(
            f"pattern {shown!r} uses a feature that cannot be matched in linear time ({reason}); "
            "backreferences, lookaround, atomic groups, possessive repeats and \\Z are not supported"
        ) from None


class PatternTable:
    """One `rank_pattern` or `alpha_pattern`, its keys checked and compiled in order.

    Matching uses RE2's FilteredRE2: the literal parts of every key are found in one pass over the
    module name, and only keys whose literals all occur there are run; `^(?:...)` around PEFT's
    template makes RE2's search anchor at the start as `re.match` does. Of the keys that match,
    PEFT takes the first."""

    def __init__(self, field: str, table: Mapping[str, Any]) -> None:
        self.field = field
        self.table = dict(table)
        self.keys = list(self.table)
        self._filter = None
        if not self.keys:
            return
        self._filter = re2.Filter()
        for key in self.keys:
            try:
                compile_key(key)
            except InvalidAdapter as exc:
                raise InvalidAdapter(f"config field {field}: {exc}") from None
            self._filter.Add(f"^(?:{TEMPLATE.format(key=key)})", _re2_options())
        self._filter.Compile()

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, module: str) -> Any | None:
        """The value PEFT gives `module`, or None where no key applies."""
        if self._filter is None:
            return None
        if not _PRINTABLE_ASCII.fullmatch(module):
            raise InvalidAdapter(
                f"module {module!r}: {self.field} can only be applied to names in printable ASCII"
            )
        matched = self._filter.Match(module)
        if matched:
            return self.table[self.keys[min(matched)]]
        return self.table.get(module)


def exact_names(names: list[str]) -> str:
    """A key that, in PEFT's template, matches exactly these module names and nothing else, in time
    linear in the name: `^` pins it to the start and the alternatives are plain text."""
    return "^(?:" + "|".join(re.escape(name) for name in names) + ")"
