"""adapters label: set and remove key/value labels on a version."""

from __future__ import annotations

import click

from .context import AppContext, json_option, pass_app


@click.command()
@click.argument("ref")
@click.argument("pairs", nargs=-1)
@click.option("--rm", "remove", multiple=True, help="Remove this label key (repeatable).")
@json_option
@pass_app
def label(app: AppContext, ref: str, pairs: tuple[str, ...], remove: tuple[str, ...]) -> None:
    """Set labels (key=value) on the version REF names, and remove others; prints its labels after.

    \b
    Examples:
      adapters label acme/support-en:3 eval/accuracy=0.91 dataset=tickets-v3
      adapters label acme/support-en:3 --rm dataset
    """
    from adapters.registry.labels import parse_pairs

    if not pairs and not remove:
        raise click.UsageError("give key=value labels to set, or --rm KEY")
    result = app.registry.label(ref, parse_pairs(pairs), list(remove))  # type: ignore[attr-defined]

    def human() -> None:
        click.echo(result.ref)
        for key, value in result.labels.items():
            click.echo(f"  {key}={value}")

    app.emit(result, human)
