"""adapters jobs ls|retry|cancel: the compression job queue (PostgreSQL registries; admin)."""

from __future__ import annotations

import click

from .context import AppContext, echo_table, json_option, pass_app

STATES = ["todo", "doing", "succeeded", "failed", "cancelled", "aborting", "aborted"]


@click.group()
def jobs() -> None:
    """The compression job queue: list jobs, retry a failed one, cancel a waiting one. Against the
    database directly (an operator with its credentials is an admin) or through ADAPTERS_URL with an
    admin token for every namespace. Jobs exist on PostgreSQL registries; SQLite compresses inline.

    \b
    Examples:
      adapters jobs ls --status todo
      adapters jobs retry 42
      adapters jobs cancel 43
    """


def _echo(found: list) -> None:
    echo_table(
        ["JOB", "QUEUE", "STATUS", "PRIORITY", "ATTEMPTS", "VERSION", "VERSION STATUS", "NOT BEFORE"],
        [
            (
                j.id,
                j.queue,
                j.status,
                j.priority,
                j.attempts,
                j.version or "-",
                j.version_status or "-",
                f"{j.scheduled_at:%Y-%m-%d %H:%M:%S}" if j.scheduled_at else "-",
            )
            for j in found
        ],
    )


@jobs.command("ls")
@click.option("--queue", help="Only this queue (compress, or compress:<digest> for a base model).")
@click.option("--status", type=click.Choice(STATES), help="Only jobs in this state.")
@json_option
@pass_app
def ls(app: AppContext, queue: str | None, status: str | None) -> None:
    """List queue jobs, newest first (the last 100), with the version each compresses.

    \b
    Example:
      adapters jobs ls --status failed --json
    """
    found = app.registry.list_jobs(queue=queue, status=status)

    def human() -> None:
        if not found:
            click.echo("no jobs", err=True)
            return
        _echo(found)

    app.emit({"jobs": [j.to_json() for j in found]}, human)


@jobs.command()
@click.argument("job_id", type=click.IntRange(min=1))
@json_option
@pass_app
def retry(app: AppContext, job_id: int) -> None:
    """Run a failed or cancelled compression job again; its version is pending again, with its
    attempts counted from zero.

    \b
    Example:
      adapters jobs retry 42
    """
    job = app.registry.retry_job(job_id)
    app.emit({"job": job.to_json()}, lambda: _echo([job]))


@jobs.command()
@click.argument("job_id", type=click.IntRange(min=1))
@json_option
@pass_app
def cancel(app: AppContext, job_id: int) -> None:
    """Cancel a waiting compression job; its version fails, with who cancelled it. A running job is
    not cancelled: stop its worker (SIGTERM gives it back) or let it finish.

    \b
    Example:
      adapters jobs cancel 43
    """
    job = app.registry.cancel_job(job_id)
    app.emit({"job": job.to_json()}, lambda: _echo([job]))
