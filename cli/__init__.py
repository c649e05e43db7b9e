"""The `adapters` command line. Commands live one per module and are imported only when run, so
`adapters --help` and the registry commands start without loading torch."""

from __future__ import annotations

import importlib
from typing import Any

import click

# command name -> "module:attribute" under adapters.cli
COMMANDS: dict[str, str] = {
    "push": "push:push",
    "pull": "pull:pull",
    "ls": "ls:ls",
    "show": "show:show",
    "check": "check:check",
    "sync": "sync:sync",
    "export": "export:export",
    "alias": "alias:alias",
    "yank": "yank:yank",
    "rm": "lifecycle:rm",
    "retain": "lifecycle:retain",
    "gc": "lifecycle:gc",
    "recompress": "recompress:recompress",
    "label": "label:label",
    "db": "db:db",
    "compress": "compress:compress",
    "reconstruct": "reconstruct:reconstruct",
    "inspect": "inspect:inspect",
    "calibrate": "calibrate:calibrate",
    "ci": "ci:ci",
    "token": "token:token",
    "serve": "serve:serve",
    "worker": "worker:worker",
    "maintenance": "maintenance:maintenance",
    "workers": "workers:workers",
    "jobs": "jobs:jobs",
    "webhook": "webhook:webhook",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(f"adapters.cli.{module_name}"), attr)

    def invoke(self, ctx: click.Context) -> Any:
        """Expected failures become one line on stderr and exit status 1."""
        from adapters.compress.errors import CompressError
        from adapters.registry.errors import RegistryError

        try:
            return super().invoke(ctx)
        except (RegistryError, CompressError) as exc:
            raise click.ClickException(" ".join(str(exc).split())) from exc


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="adapters", prog_name="adapters")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Keep, compress and serve LoRA adapters.

    With no configuration the registry is embedded: a SQLite database and a blob folder under
    ADAPTERS_HOME (~/.adapters). Set ADAPTERS_DATABASE_URL and ADAPTERS_STORAGE_URL to use
    PostgreSQL and S3, or ADAPTERS_URL (and ADAPTERS_TOKEN) to use a registry server.

    \b
    Examples:
      adapters push ./my-lora --name acme/support-en --task support
      adapters pull acme/support-en@prod -o ./support-en
      adapters ls --task support
    """
    from pydantic import ValidationError

    from adapters.cli.context import AppContext
    from adapters.registry.settings import get_settings

    try:
        settings = get_settings()
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise click.ClickException(f"invalid ADAPTERS_* settings: {errors}") from None
    app = AppContext(settings)
    ctx.obj = app
    ctx.call_on_close(app.close)
