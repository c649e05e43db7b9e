"""adapters recompress: re-encode ready versions from their lossless sources with the current codec."""

from __future__ import annotations

import click

from .context import AppContext, json_option, pass_app


@click.command()
@click.argument("ref", required=False)
@click.option("--namespace", "-n", help="Every ready, unyanked version in this namespace (instead of REF).")
@click.option("--codec", help="Codec to re-encode with (default: ADAPTERS_DEFAULT_CODEC, nola).")
@click.option("--dry-run", is_flag=True, help="Only list what would be recompressed; change nothing.")
@json_option
@pass_app
def recompress(
    app: AppContext, ref: str | None, namespace: str | None, codec: str | None, dry_run: bool
) -> None:
    """Re-encode versions from their lossless sources with the current codec and its default fidelity
    gate, e.g. after the codec improved. REF is one version (ns/name:N, ns/name@alias) or, as a bare
    ns/name, every ready and unyanked version of the adapter; --namespace takes a whole namespace.

    Each version keeps its identity (namespace, name, number, content digest, aliases, labels) and a
    pull gives the same adapter; its stored artifact, codec, ratio and fidelity record change, and the
    record notes the re-encoding (a `version.recompressed` event goes to webhooks). A run that misses
    the gate keeps the stored artifact. The old artifact blob is released to `adapters gc` only once
    the new one is recorded. Where the registry compresses inline (embedded) it runs now; with workers
    it queues one `recompress` job per version (`adapters jobs ls`). An admin's act.

    \b
    Examples:
      adapters recompress acme/support-en:3
      adapters recompress acme/support-en --dry-run
      adapters recompress --namespace acme --json
    """
    if (ref is None) == (namespace is None):
        raise click.ClickException("give a REF (ns/name:N or ns/name) or --namespace NS, not both")
    report = app.registry.recompress(ref, namespace=namespace, codec=codec, dry_run=dry_run)  # type: ignore[attr-defined]

    def human() -> None:
        for item in report.versions:
            line = f"{item.ref}: {item.action} ({item.codec}, ratio {item.ratio}"
            if item.new_codec is not None:
                line += f" -> {item.new_codec}, ratio {item.new_ratio}"
            line += ")"
            if item.job is not None:
                line += f" job {item.job}"
            if item.detail:
                line += f": {item.detail}"
            click.echo(line)
        counts: dict[str, int] = {}
        for item in report.versions:
            counts[item.action] = counts.get(item.action, 0) + 1
        summary = ", ".join(f"{n} {action}" for action, n in counts.items()) or "nothing to do"
        click.echo(f"{len(report.versions)} versions, codec {report.codec}: {summary}")

    app.emit(report, human)
