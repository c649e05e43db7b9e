"""adapters show: an adapter, one of its versions in detail, and all its versions."""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING

import click

from adapters.registry.compat import facts_lines

from .context import AppContext, echo_table, human_size, json_option, pass_app, short_digest
from .fidelity import fidelity_lines

if TYPE_CHECKING:
    from adapters.registry.schemas import VersionView

SHOWN_PARAMS = ("ratio", "fit", "basis", "bits", "bits_per_coefficient", "seed")


def placement_lines(v: VersionView, now: dt.datetime | None = None) -> list[str]:
    """Where a version is compressed or waits to be: its worker and device, or the base model it
    waits for."""
    lines = []
    if v.worker:
        lines.append(f"worker      {v.worker}{f' on {v.device}' if v.device else ''}")
    w = v.waiting
    if v.status == "pending" and w is not None:
        if w.live_workers:
            held = "1 live worker holds" if w.live_workers == 1 else f"{w.live_workers} live workers hold"
            lines.append(f"waiting     for a worker with {w.base_model} ({held} it)")
        elif w.without_model_from is not None:
            now = now or dt.datetime.now(dt.timezone.utc)
            when = (
                "now" if w.without_model_from <= now else f"from {w.without_model_from:%Y-%m-%d %H:%M:%S} UTC"
            )
            lines.append(
                f"waiting     for a worker with {w.base_model}: no live worker holds it, so {when} any "
                "worker may compress it without the model"
            )
    return lines


@click.command()
@click.argument("ref")
@json_option
@pass_app
def show(app: AppContext, ref: str) -> None:
    """Show the adapter REF belongs to and the version it names (for ns/name: the latest).

    \b
    Example:
      adapters show acme/support-en:3
    """
    result = app.registry.show(ref)

    def human() -> None:
        a, v = result.adapter, result.version
        click.echo(f"adapter     {a.name}")
        click.echo(f"task        {a.task}")
        click.echo(f"base model  {a.base_model or '-'}")
        if a.description:
            click.echo(f"description {a.description}")
        click.echo(f"tags        {', '.join(a.tags) or '-'}")
        click.echo(f"aliases     {', '.join(f'{k} -> {n}' for k, n in a.aliases.items()) or '-'}")
        if a.keep_versions is not None:
            click.echo(f"retention   the newest {a.keep_versions} versions, and aliased ones, after pushes")
        if v is not None:
            click.echo("")
            yanked = f" (yanked: {v.yank_reason or 'no reason given'})" if v.yanked else ""
            click.echo(f"version     {v.ref}{yanked}")
            click.echo(f"status      {v.status}{': ' + v.error if v.error else ''}")
            for line in placement_lines(v):
                click.echo(line)
            shown = {k: v.codec_params[k] for k in SHOWN_PARAMS if k in (v.codec_params or {})}
            params = json.dumps(shown) if shown else ""
            click.echo(f"codec       {v.codec or '-'} {params}".rstrip())
            click.echo(f"source      {short_digest(v.source_digest)}  {human_size(v.source_size)}")
            click.echo(f"artifact    {short_digest(v.artifact_digest)}  {human_size(v.artifact_size)}")
            if v.files:  # README, tokenizer, ...: stored as pushed
                names = ", ".join(f["name"] for f in v.files)
                size = human_size(sum(f["size"] for f in v.files))
                click.echo(f"files       {names}  {size}")
                click.echo(f"content     {short_digest(v.content_digest)}")
            for label, line in fidelity_lines(v.fidelity or {}):
                click.echo(f"{label:<11} {line}")
            config = v.peft_config
            targets = config.get("target_modules")
            targets = ",".join(sorted(targets)) if isinstance(targets, list) else targets
            click.echo(
                f"lora        r={config.get('r')} alpha={config.get('lora_alpha')} "
                f"rslora={bool(config.get('use_rslora'))} targets={targets}"
            )
            for label, line in facts_lines(v.compat):
                click.echo(f"{label:<11} {line}")
            if v.base_model_revision:
                click.echo(f"base rev    {v.base_model_revision}")
            if v.labels:
                click.echo(f"labels      {', '.join(f'{k}={x}' for k, x in v.labels.items())}")
            click.echo(f"created     {v.created_at:%Y-%m-%d %H:%M:%S} by {v.created_by or '-'}")
        click.echo("")
        echo_table(
            ["VERSION", "STATUS", "CODEC", "SIZE", "SOURCE", "ALIASES", "CREATED"],
            [
                (
                    f"{x.number}{' (yanked)' if x.yanked else ''}",
                    x.status,
                    x.codec,
                    human_size(x.artifact_size or x.source_size),
                    short_digest(x.source_digest),
                    ",".join(x.aliases),
                    f"{x.created_at:%Y-%m-%d %H:%M}",
                )
                for x in result.versions
            ],
        )

    app.emit(result, human)
