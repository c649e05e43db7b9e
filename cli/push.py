"""adapters push: validate a PEFT adapter directory and store it as the next version."""

from __future__ import annotations

import json
from pathlib import Path

import click

from adapters.registry import folder_files
from adapters.registry.schemas import PushResult

from .context import AppContext, json_option, pass_app, short_digest
from .fidelity import fidelity_lines


def _params(values: tuple[str, ...]) -> dict[str, object]:
    params: dict[str, object] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--param")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


@click.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", "-n", required=True, help="Where it goes: namespace/name, e.g. acme/support-en.")
@click.option("--task", "-t", help="What the adapter does (required for a new adapter), e.g. support.")
@click.option("--base-model", help="The base model (default: base_model_name_or_path from the config).")
@click.option("--description", help="A line about the adapter.")
@click.option("--tag", "tags", multiple=True, help="A tag for lookups (repeatable).")
@click.option(
    "--alias", "-a", "aliases", multiple=True, help="Point this alias at the new version (repeatable)."
)
@click.option(
    "--codec",
    help="nola: the smallest size that passes the fidelity gate (the source when none does); raw: "
    "lossless. Default: the registry's (nola, unless ADAPTERS_DEFAULT_CODEC says otherwise).",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="A codec parameter (repeatable), e.g. ratio=16 (the largest ratio tried) or min_agreement=0.995.",
)
@click.option(
    "--on-gate-fail",
    type=click.Choice(["raw", "reject"]),
    default="raw",
    show_default=True,
    help="When compression misses its fidelity gate: keep the lossless source, or reject the version.",
)
@click.option("--label", "labels", multiple=True, help="A key=value label on the version (repeatable).")
@click.option(
    "--base-model-revision",
    help="The base model's revision it was trained on (default: `revision` from the config, if any).",
)
@click.option(
    "--adapter",
    "adapter_name",
    metavar="ADAPTER",
    help="Of a folder saved with several named adapters: push only this one, as NAME (`default` is "
    "the one at the root, the others are the subfolders PEFT wrote).",
)
@click.option("--wait", is_flag=True, help="Follow the version until it is ready, rejected or failed.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
@json_option
@pass_app
def push(
    app: AppContext,
    directory: Path,
    name: str,
    task: str | None,
    base_model: str | None,
    description: str | None,
    tags: tuple[str, ...],
    aliases: tuple[str, ...],
    codec: str | None,
    params: tuple[str, ...],
    on_gate_fail: str,
    labels: tuple[str, ...],
    base_model_revision: str | None,
    adapter_name: str | None,
    wait: bool,
    timeout: float | None,
) -> None:
    """Push the PEFT LoRA adapter in DIRECTORY as the next version of NAME, compressed to the
    smallest size that passes the fidelity gate.

    The directory must hold adapter_config.json and adapter_model.safetensors (or a .bin that
    torch.load(weights_only=True) accepts); README.md, tokenizer files, chat templates and
    new_embeddings.safetensors beside them are stored too, losslessly (pickles such as
    training_args.bin and other files are skipped, with a warning). A folder PEFT saved with several
    named adapters (`default` at the root, the others in subfolders) pushes each: the root one as
    NAME, the others as NAME-<adapter>; --adapter pushes just one, as NAME. Pushing content the
    adapter already holds returns the existing version. Where workers compress (a server, or
    PostgreSQL with ADAPTERS_COMPRESSION=queue) the version is pending when the push returns;
    --wait follows it until it settles and fails if it
    ends rejected or failed.

    \b
    Example:
      adapters push ./my-lora --name acme/support-en --task support --alias prod --wait
      adapters push ./my-lora -n acme/support-en --label dataset=tickets-v3 --label run=2026-12-01
      adapters push ./multi --name acme/support --task support --adapter other
    """
    from adapters.registry.labels import parse_pairs

    label_pairs = parse_pairs(labels)
    plan = folder_files.push_plan(directory, name, adapter_name)
    results = [
        _push_one(
            app,
            path,
            target,
            task,
            base_model,
            description,
            tags,
            aliases,
            codec,
            params,
            on_gate_fail,
            label_pairs,
            base_model_revision,
            wait,
            timeout,
        )
        for path, target in plan
    ]
    if len(results) == 1:
        app.emit(results[0], lambda: _print(results[0]))
    else:
        app.emit([r.to_json() for r in results], lambda: [_print(r) for r in results])
    for result in results:
        version = result.version
        if version.status in ("failed", "rejected"):
            raise click.ClickException(f"{version.ref} is {version.status}: {version.error}")


def _push_one(
    app: AppContext,
    directory: Path,
    name: str,
    task: str | None,
    base_model: str | None,
    description: str | None,
    tags: tuple[str, ...],
    aliases: tuple[str, ...],
    codec: str | None,
    params: tuple[str, ...],
    on_gate_fail: str,
    labels: dict[str, str],
    base_model_revision: str | None,
    wait: bool,
    timeout: float | None,
) -> PushResult:
    if directory.is_dir():
        for line in folder_files.scan(directory).skipped:
            app.warn(line)
    result = app.registry.push(
        directory,
        name,
        task=task,
        base_model=base_model,
        description=description,
        tags=tags,
        aliases=aliases,
        codec=codec,
        params=_params(params),
        on_gate_fail=on_gate_fail,  # type: ignore[arg-type]
        created_by=app.user,
        reporter=app.reporter(),
        labels=labels,
        base_model_revision=base_model_revision,
    )
    version = result.version
    if wait and version.status in ("pending", "compressing"):
        with app.status_display() as on_change:
            version = app.registry.wait(version.ref, timeout=timeout, on_change=on_change)
        result = result.model_copy(update={"version": version})
    return result


def _print(result: PushResult) -> None:
    version = result.version
    if result.created or result.resumed:
        verb = "resumed" if result.resumed else "pushed"
        click.echo(
            f"{verb} {version.ref}: {version.status}, codec {version.codec or '-'}, "
            f"{short_digest(version.content_digest)}"
        )
        for label, line in fidelity_lines(version.fidelity or {}):
            click.echo(f"  {label:<10} {line}")
        if version.files:
            click.echo(f"  {'files':<10} {', '.join(f['name'] for f in version.files)} (stored as they are)")
    else:
        click.echo(f"{version.ref} already holds this content ({version.status}); nothing new stored")
    if version.aliases:
        click.echo(f"aliases: {', '.join(version.aliases)}")
