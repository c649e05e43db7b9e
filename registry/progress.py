"""How long-running registry work reports progress, without knowing who displays it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

# Called with how much more of a task is done (bytes, modules, ...).
Advance = Callable[[int], None]


class Reporter(Protocol):
    def task(
        self, description: str, total: int | None = None, *, unit: str = ""
    ) -> AbstractContextManager[Advance]:
        """A unit of work counted in `unit` ("bytes", "modules" or nothing): the context yields a
        function to call as it advances."""
        ...


class SilentReporter:
    """Reports nothing (the default; also what tests and `--json` use)."""

    @contextmanager
    def task(self, description: str, total: int | None = None, *, unit: str = "") -> Iterator[Advance]:
        yield lambda _n: None
