"""adapters export: a version's plain PEFT files under an S3 prefix (LoRAX `s3`, KServe)."""

from __future__ import annotations

import click

from .context import AppContext, json_option, pass_app


@click.command()
@click.argument("ref")
@click.argument("url")
@click.option("--endpoint-url", help="The S3 endpoint (default: AWS_ENDPOINT_URL, else AWS).")
@click.option("--served-base-model", help="Write this as base_model_name_or_path.")
@json_option
@pass_app
def export(
    app: AppContext, ref: str, url: str, endpoint_url: str | None, served_base_model: str | None
) -> None:
    """Write the PEFT files of the version REF names to URL (s3://bucket/prefix): the prefix then
    holds adapter_config.json, adapter_model.safetensors and the version's other files (model card,
    tokenizer), as LoRAX's s3 source and KServe read them. Credentials come from the usual AWS environment.

    \b
    Example:
      adapters export acme/support-en@prod s3://loras/acme/support-en --endpoint-url http://minio:9000
    """
    from adapters.registry.export import export as run_export

    result = run_export(
        app.registry,
        ref,
        url,
        endpoint_url=endpoint_url,
        served_base_model=served_base_model,
        reporter=app.reporter(),
    )

    def human() -> None:
        files = ", ".join(f["key"] for f in result["files"])
        click.echo(f"exported {result['ref']} to {result['url']} ({files})")

    app.emit(result, human)
