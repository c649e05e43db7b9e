"""What every command shares: the settings, the `--json` switch, a lazily opened registry, progress
bars on stderr, and output helpers. Nothing heavy is imported until a command needs it."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from adapters.registry.client_protocol import Registry
    from adapters.registry.progress import Advance, Reporter
    from adapters.registry.schemas import VersionView
    from adapters.registry.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class AppContext:
    settings: Settings
    json: bool = False
    _registry: Registry | None = field(default=None, repr=False)

    @property
    def registry(self) -> Registry:
        """The registry the settings name, opened on first use: the API at ADAPTERS_URL (with
        ADAPTERS_TOKEN), else the database and blob store directly."""
        if self._registry is None:
            if self.settings.remote:
                from adapters.registry.remote import RemoteRegistry

                self._registry = RemoteRegistry.from_settings(self.settings)
            else:
                from adapters.registry.client import LocalRegistry

                local = LocalRegistry.from_settings(self.settings, user=self.user)
                local.notify = self.warn  # e.g. that it resumed an abandoned compression
                self._registry = local
        return self._registry

    def require_local(self, what: str) -> None:
        """Refuse commands that work on the database directly when a remote registry is configured."""
        if self.settings.remote:
            raise click.ClickException(
                f"{what} works on the database directly, not through ADAPTERS_URL: unset ADAPTERS_URL "
                "and set ADAPTERS_DATABASE_URL (and ADAPTERS_STORAGE_URL) instead"
            )

    def start_service(self) -> None:
        """Before a long-running service starts: refuse placeholder secrets, then set up logging."""
        from adapters.registry import logs

        placeholders = self.settings.placeholder_secrets()
        if placeholders:
            raise click.ClickException(
                f"refusing to start with placeholder secrets in {', '.join(placeholders)}: set real ones"
            )
        logs.configure(self.settings.log_format, self.settings.log_level)

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    @property
    def user(self) -> str | None:
        try:
            return getpass.getuser()
        except (KeyError, OSError):
            return None

    def reporter(self) -> Reporter:
        """Progress bars on stderr when it is a terminal and the output is not JSON."""
        from adapters.registry.progress import SilentReporter

        if self.json or not sys.stderr.isatty():
            return SilentReporter()
        return RichReporter()

    def emit(self, data: Any, human: Callable[[], None]) -> None:
        """Print one JSON document (`--json`) or the human form."""
        if self.json:
            payload = data.to_json() if hasattr(data, "to_json") else data
            click.echo(json.dumps(payload, indent=2, sort_keys=True))
        else:
            human()

    def warn(self, message: str) -> None:
        click.echo(f"warning: {message}", err=True)

    @contextmanager
    def status_display(self) -> Iterator[Callable[[VersionView], None]]:
        """Show a version's status transitions on stderr while waiting for it: a live line on a
        terminal, one line per change otherwise; nothing with --json."""
        if self.json:
            yield lambda _view: None
            return
        if not sys.stderr.isatty():
            yield lambda view: click.echo(f"{view.ref}: {_status_text(view)}", err=True)
            return
        from rich.console import Console

        console = Console(stderr=True)
        with console.status("waiting") as status:

            def show(view: VersionView) -> None:
                status.update(f"{view.ref}: {_status_text(view)}")
                console.log(f"{view.ref}: {_status_text(view)}")

            yield show


def _status_text(view: VersionView) -> str:
    text = view.status
    if view.status in ("pending", "compressing") and view.attempts:
        text += f" (attempt {view.attempts + (view.status == 'pending')})"
    if view.status == "pending" and view.waiting is not None:
        text += f", waiting for a worker with {view.waiting.base_model}"
    if view.error:
        text += f": {view.error}"
    return text


pass_app = click.make_pass_decorator(AppContext)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    app = ctx.find_object(AppContext)
    if value and app is not None:
        app.json = True


def json_option(f: F) -> F:
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_json,
        help="Print one JSON document to stdout instead of text.",
    )(f)


class RichReporter:
    """Transfers and compression as rich progress bars on stderr."""

    @contextmanager
    def task(self, description: str, total: int | None = None, *, unit: str = "") -> Iterator[Advance]:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description:<22}"), BarColumn()]
        if unit == "bytes":
            columns += [DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
        elif total is not None:
            columns += [MofNCompleteColumn(), TextColumn(unit)]
        with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
            task_id = progress.add_task(description, total=total)
            yield lambda n: progress.advance(task_id, n)
            progress.update(task_id, completed=total if total is not None else 1, total=total or 1)


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError  # pragma: no cover


def short_digest(digest: str | None) -> str:
    return f"sha256:{digest[:12]}" if digest else "-"


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Plain aligned columns (greppable, no colour)."""
    cells = [[str(h) for h in headers]] + [
        ["-" if c is None or c == "" else str(c) for c in row] for row in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
