"""The `adapters` command line. Commands live one per module and are imported only when run, so
`adapters --help` and the registry commands start without loading torch."""

from __future__ import annotations

import importlib

import click

# command name -> "module:attribute" under adapters.cli
COMMANDS: dict[str, str] = {}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(f"adapters.cli.{module_name}"), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="adapters", prog_name="adapters")
def main() -> None:
    """Keep, compress and serve LoRA adapters.

    \b
    Examples:
      adapters push ./my-lora --name acme/support-en --task support
      adapters pull acme/support-en@prod -o ./support-en
      adapters compress ./my-lora -o my-lora.nola --ratio 20
    """
