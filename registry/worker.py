"""A compression worker: a Procrastinate worker on the queues this machine can serve (jobs.py), whose
`compress` task runs the codec on this machine's device and records the outcome on the version row.

The library does the queueing: it hands each job to one worker (LISTEN/NOTIFY wakes idle workers at
once; they also poll every `worker_poll_seconds`), heartbeats every third of `worker_lease_seconds`,
and schedules retries by the decisions of `RetryPolicy`. Each worker also runs the maintenance the
library leaves to its users: every half lease, jobs of workers that stopped heartbeating for a lease
(killed, frozen, their machine gone) are retried (`get_stalled_jobs`, `retry_job`), and the next
run counts the attempt, or fails the version when its attempts are spent, and pending versions
without a job get one; at every poll, jobs that waited long enough for a base model nobody holds
move to the data-free queue; every maintenance interval, leftovers of interrupted work are swept,
succeeded jobs older than a week deleted, and the event outbox and delivery log pruned
(event_pruning.py).

Shutdown: the first SIGTERM (or SIGINT) stops fetching jobs; the current job gets
`worker_grace_seconds` to finish, after which (or at a second signal) it is interrupted and given
back: the version pending again with this attempt not counted, the job waiting again at once, for
another worker. A worker killed outright gives nothing back: it stops heartbeating, and another
worker's maintenance retries its job.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import signal
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from . import events, jobs, processing, queue, recompress, webhooks
from .client import LocalRegistry
from .codecs import CodecEnvironment, import_codec_modules
from .event_pruning import prune_events
from .metrics import JobMetrics, RegistryCollector
from .settings import Settings
from .sweep import log_sweep
from .workers import Capabilities, Presence

log = logging.getLogger("adapters.worker")


def resolve_device(name: str | None) -> str:
    """The device to compress on: the setting, or CUDA when this machine has it."""
    if name and name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class RetryLater(Exception):
    """A run failed in a way another run may cure; the version is pending again."""

    def __init__(self, message: str, wait_seconds: float) -> None:
        super().__init__(message)
        self.wait_seconds = wait_seconds


class GivenBack(Exception):
    """The run was interrupted (shutdown) and its version given back untouched."""


class CompressionFailed(Exception):
    """The version failed for good (the job is marked failed too, for `adapters jobs ls`)."""


def retry_policy() -> Any:
    from procrastinate.retry import BaseRetryStrategy, RetryDecision

    class RetryPolicy(BaseRetryStrategy):
        """Given-back jobs wait again at once; transient failures after the backoff the run chose
        (from the version's attempts, which given-back runs do not count); nothing else retries."""

        def get_retry_decision(self, *, exception: BaseException, job: Any) -> Any:
            if isinstance(exception, GivenBack):
                return RetryDecision(retry_in={"seconds": 0})
            if isinstance(exception, RetryLater):
                return RetryDecision(retry_in={"seconds": exception.wait_seconds})
            return None

    return RetryPolicy()


class Worker:
    def __init__(self, settings: Settings, *, registry: LocalRegistry | None = None, name: str | None = None):
        self.settings = settings
        self.registry = registry or LocalRegistry.from_settings(settings, user="worker")
        self.id = name or queue.worker_id()
        self.stopping = threading.Event()
        self.metrics = CollectorRegistry()
        self.metrics.register(RegistryCollector(self.registry.db, live_seconds=settings.worker_live_seconds))
        self.jobs = JobMetrics(self.metrics)
        self._lock = threading.Lock()
        self._current: tuple[queue.Job, int] | None = None  # the job running, and its thread
        self._signals = 0
        self._done = 0
        self._max_jobs: int | None = None
        self._procrastinate: Any = None
        self._presence: Presence | None = None
        self._device = "cpu"
        self._next_sweep = self._next_recovery = 0.0

    # --------------------------------------------------------------------------------------- run

    def run(self, *, once: bool = False, max_jobs: int | None = None) -> int:
        """Work until stopped (or, with `once`, until no job is due); returns the compression and
        re-compression jobs run (event deliveries are not counted)."""
        settings = self.settings
        jobs.require_queue(self.registry.db)
        import_codec_modules(settings.codec_modules)
        self.registry._ready()
        self._device = resolve_device(settings.device)
        if settings.worker_metrics_port:
            start_http_server(settings.worker_metrics_port, registry=self.metrics)
        environment = self.registry.environment or CodecEnvironment()
        self._max_jobs = max_jobs
        with Presence(
            self.registry.db,
            self.id,
            device=self._device,
            # An events-only worker holds no model: jobs waiting for one must not wait for it.
            models=environment.available_models if settings.worker_compress else tuple,
            live_seconds=settings.worker_live_seconds,
        ) as presence:
            self._presence = presence
            queues = jobs.queues_for(presence.models) if settings.worker_compress else []
            log.info(
                "worker started",
                extra={"worker": self.id, "device": self._device, "models": list(presence.models)}
                | {"queues": queues},
            )
            asyncio.run(self._serve(queues, once=once))
        log.info("worker stopped", extra={"worker": self.id, "jobs": self._done})
        return self._done

    async def _serve(self, queues: list[str], *, once: bool) -> None:
        from procrastinate import worker as procrastinate_worker

        settings = self.settings
        app = jobs.make_app(self.registry.db, asynchronous=True)
        app.task(name=jobs.COMPRESS_TASK, pass_context=True, retry=retry_policy())(self._compress)
        webhooks.register(
            app,
            self.registry.db,
            max_attempts=settings.webhook_max_attempts,
            backoff_base=settings.webhook_backoff_seconds,
        )  # deliveries of events.py, on the `events` queue
        recompress.register(
            app,
            self.registry,
            device=self._device,
            max_attempts=settings.worker_max_attempts,
            on_run=self._count_job,
        )  # re-encodings of recompress.py, on the compression queues
        if settings.worker_deliver_events or not settings.worker_compress:
            queues = [*queues, events.EVENTS_QUEUE]
        lease = settings.worker_lease_seconds
        async with app.open_async():
            self._procrastinate = procrastinate_worker.Worker(
                app,
                queues=queues,
                name=self.id,
                concurrency=1,
                wait=not once,
                fetch_job_polling_interval=settings.worker_poll_seconds,
                listen_notify=True,
                install_signal_handlers=False,  # ours: a grace period, then the job is given back
                update_heartbeat_interval=lease / 3,
                stalled_worker_timeout=lease,
            )
            self._install_signals()
            await self._maintain(app)  # before the first fetch: stalled jobs, versions without one
            side = [asyncio.create_task(self._maintenance_loop(app)), asyncio.create_task(self._watch_stop())]
            try:
                await self._procrastinate.run()
            finally:
                for task in side:
                    task.cancel()

    # ------------------------------------------------------------------------------ maintenance

    async def _watch_stop(self) -> None:
        """`stopping` set from another thread (a worker run in a thread, or `stop`) stops the queue."""
        while not self.stopping.is_set():
            await asyncio.sleep(0.1)
        self._procrastinate.stop()

    def stop(self) -> None:
        self.stopping.set()

    async def _maintenance_loop(self, app: Any) -> None:
        # Moving jobs off a model's queue is due the moment their wait ends: checked at every poll.
        # Stalled jobs and versions without one are older news: every half lease.
        tick = min(self.settings.worker_poll_seconds, self.settings.worker_lease_seconds / 2)
        while True:
            await asyncio.sleep(tick)
            await self._maintain(app)

    async def _maintain(self, app: Any) -> None:
        settings = self.settings
        db = self.registry.db
        try:
            await asyncio.to_thread(
                jobs.move_waiting,
                db,
                wait_seconds=settings.worker_capability_wait_seconds,
                live_seconds=settings.worker_live_seconds,
            )
            if time.monotonic() >= self._next_recovery:
                self._next_recovery = time.monotonic() + settings.worker_lease_seconds / 2
                for task in (jobs.COMPRESS_TASK, jobs.RECOMPRESS_TASK):
                    await jobs.retry_stalled(
                        app, seconds_since_heartbeat=settings.worker_lease_seconds, task_name=task
                    )
                await asyncio.to_thread(jobs.reconcile, db, older_than=settings.worker_lease_seconds)
        except Exception:  # the database may be down for a while; the next round tries again
            log.exception("queue maintenance failed")
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + settings.maintenance_interval_seconds
            await asyncio.to_thread(self._sweep)
            try:  # succeeded jobs are history the version rows keep; failed ones stay for operators
                await app.job_manager.delete_old_jobs(nb_hours=jobs.KEEP_SUCCEEDED_HOURS)
            except Exception:  # as above
                log.exception("deleting old jobs failed")
            try:  # delivered events and old delivery-log rows (never an event still being retried)
                await asyncio.to_thread(
                    prune_events,
                    db,
                    event_retention_seconds=settings.webhook_event_retention_seconds,
                    delivery_retention_seconds=settings.webhook_delivery_retention_seconds,
                )
            except Exception:  # as above
                log.exception("pruning events failed")

    def _sweep(self) -> None:
        """Leftovers of interrupted work (temporary folders, partial blobs, incomplete uploads)."""
        try:
            log_sweep(log, self.registry.sweep())
        except Exception:  # the blob store may be down for a while; try again next time
            log.exception("sweeping leftovers failed")

    # ---------------------------------------------------------------------------------- signals

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        self.stopping.set()
        self._procrastinate.stop()
        current = self._current
        if current is None:
            return
        grace = self.settings.worker_grace_seconds
        if self._signals > 1 or grace <= 0:
            log.warning("signal %d: giving %s back", signum, current[0].ref)
            self._interrupt()
            return
        log.warning("signal %d: finishing %s (at most %g s more)", signum, current[0].ref, grace)
        asyncio.get_running_loop().call_later(grace, self._interrupt)

    def _interrupt(self) -> None:
        """Raise `queue.Interrupted` in the thread running the codec (the asynchronous counterpart
        of a signal handler's exception: delivered at its next Python instruction)."""
        with self._lock:
            if self._current is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self._current[1]), ctypes.py_object(queue.Interrupted)
                )

    # -------------------------------------------------------------------------------------- task

    def _compress(self, context: Any, version_id: int) -> str:
        settings = self.settings
        assert self._presence is not None
        capabilities = Capabilities(
            self._presence.models,
            live_seconds=settings.worker_live_seconds,
            wait_seconds=settings.worker_capability_wait_seconds,
        )
        try:
            job = queue.claim_for_run(
                self.registry.db,
                version_id,
                self.id,
                lease_seconds=settings.worker_lease_seconds,
                max_attempts=settings.worker_max_attempts,
                capabilities=capabilities,
            )
        except queue.GaveUp as exc:
            raise CompressionFailed(str(exc)) from None
        if job is None:
            log.info("job skipped: version %d is settled", version_id, extra={"worker": self.id})
            return "skipped"
        codec = str(job.requested.get("codec"))
        log.info(
            "job claimed",
            extra={
                "worker": self.id,
                "version": job.ref,
                "attempt": job.attempts,
                "codec": codec,
                "job": context.job.id,
                "queue": context.job.queue,
            },
        )
        started = time.perf_counter()
        result = self._run(job)
        seconds = time.perf_counter() - started
        self.jobs.observe(codec, result, seconds)
        log.info(
            "job %s",
            result,
            extra={"worker": self.id, "version": job.ref, "result": result, "seconds": round(seconds, 3)},
        )
        self._count_job()
        if result == "released":
            raise GivenBack(job.ref)
        if result == "retry":
            wait = queue.backoff(job.attempts, settings.worker_backoff_seconds).total_seconds()
            raise RetryLater(f"{job.ref}: attempt {job.attempts} failed", wait)
        if result == "failed":
            raise CompressionFailed(job.ref)
        return result

    def _count_job(self) -> None:
        """One more compression or re-compression run; after `max_jobs` of them, fetch no more."""
        self._done += 1
        if self._max_jobs is not None and self._done >= self._max_jobs:
            self._procrastinate.stop()

    def _run(self, job: queue.Job) -> str:
        settings = self.settings
        result: str | None = None
        try:
            try:
                with self._lock:
                    self._current = (job, threading.get_ident())
                if self.stopping.is_set() and (self._signals > 1 or settings.worker_grace_seconds <= 0):
                    raise queue.Interrupted  # stopped between the fetch and here
                result = processing.run_job(
                    self.registry.db,
                    self.registry.storage,
                    job,
                    device=self._device,
                    environment=self.registry.environment,
                    lease_seconds=settings.worker_lease_seconds,
                    max_attempts=settings.worker_max_attempts,
                    backoff_seconds=settings.worker_backoff_seconds,
                    tmp_dir=self.registry.temp_dir(),
                )
            finally:
                with self._lock:
                    self._current = None
        except queue.Interrupted:
            if result is None:  # else it came after the outcome was recorded: too late to matter
                queue.release(self.registry.db, job)
                result = "released"
        return result
