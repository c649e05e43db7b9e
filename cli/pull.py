"""adapters pull: write a version back out as a PEFT directory."""

from __future__ import annotations

from pathlib import Path

import click

from .context import AppContext, json_option, pass_app


@click.command()
@click.argument("ref")
@click.option(
    "--output", "-o", required=True, type=click.Path(path_type=Path), help="The PEFT directory to write."
)
@click.option("--force", is_flag=True, help="Overwrite the adapter files in a folder that is not empty.")
@click.option(
    "--offline",
    is_flag=True,
    help="Read only the download cache: the version REF named at its last online pull (no server).",
)
@json_option
@pass_app
def pull(app: AppContext, ref: str, output: Path, force: bool, offline: bool) -> None:
    """Pull the version REF names into a PEFT directory that PEFT loads as is.

    REF is ns/name (the latest ready version), ns/name:N, ns/name@alias or ns/name@sha256:<hex>.
    The directory gets adapter_config.json, adapter_model.safetensors and the files the version was
    pushed with (README.md, tokenizer files, new_embeddings.safetensors).
    The artifact is checked against its sha256 before anything is written. From a registry API
    (ADAPTERS_URL), files go through the download cache ($XDG_CACHE_HOME/adapters): content
    already there is not downloaded again, and a cut transfer continues where it stopped.

    \b
    Example:
      adapters pull acme/support-en@prod -o ./support-en
      adapters pull acme/support-en@prod -o ./support-en --offline
    """
    if offline:
        from adapters.registry.client_cache import ClientCache

        settings = app.settings
        assert settings.client_cache_dir is not None
        cache = ClientCache(settings.client_cache_dir, settings.client_cache_max_bytes)
        result = cache.pull(ref, output, force=force)
    else:
        result = app.registry.pull(ref, output, force=force, reporter=app.reporter())
    if result.version.yanked:
        app.warn(f"{result.version.ref} is yanked: {result.version.yank_reason or 'no reason given'}")
    app.emit(
        result,
        lambda: click.echo(f"pulled {result.version.ref} into {result.path} ({', '.join(result.files)})"),
    )
