"""adapters worker: compress pending versions from the queue."""

from __future__ import annotations

import click

from .context import AppContext, pass_app


@click.command()
@click.option("--once", is_flag=True, help="Exit when the queue is empty instead of waiting for jobs.")
@click.option(
    "--max-jobs", type=click.IntRange(min=1), help="Exit after this many compression or re-compression jobs."
)
@pass_app
def worker(app: AppContext, once: bool, max_jobs: int | None) -> None:
    """Take compression jobs from the job queue in PostgreSQL, compress (on CUDA when present, or
    ADAPTERS_DEVICE), store the artifacts and record the outcome. Run as many as you like, on as many
    machines: each job goes to one worker at a time. A worker announces its device and the base models
    under ADAPTERS_MODELS_DIR (see `adapters workers`); a job that wants one of them goes to a live
    worker that holds it, or to any worker after ADAPTERS_WORKER_CAPABILITY_WAIT_SECONDS when none does.
    SIGTERM lets the current job finish (for up to ADAPTERS_WORKER_GRACE_SECONDS) or gives it back,
    then exits.

    \b
    Example:
      ADAPTERS_DATABASE_URL=postgresql://registry@db/registry adapters worker
    """
    from adapters.registry.worker import Worker

    app.require_local("adapters worker")
    settings = app.settings
    app.start_service()
    Worker(settings).run(once=once, max_jobs=max_jobs)
