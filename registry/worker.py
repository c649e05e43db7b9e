"""A compression worker: claim a job, run its codec on this machine's device while the lease is renewed,
record the outcome, repeat. While it runs, the worker announces its device and the base models its
machine holds (workers.Presence), and claims by them: jobs that want a base model it lacks are left to
a live worker that holds it (see workers.py).

Shutdown: the first SIGTERM (or SIGINT) stops claiming; the current job gets `worker_grace_seconds`
to finish, after which (or at a second signal) it is interrupted and given back to the queue
untouched, for another worker. A worker that is killed outright gives nothing back: its lease
expires and another worker claims the job again (see queue.py).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

from prometheus_client import CollectorRegistry, start_http_server

from . import queue, service
from .client import LocalRegistry, import_codec_modules
from .codecs import CodecEnvironment
from .errors import DatabaseUnavailable
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


class Worker:
    def __init__(self, settings: Settings, *, registry: LocalRegistry | None = None, name: str | None = None):
        self.settings = settings
        self.registry = registry or LocalRegistry.from_settings(settings, user="worker")
        self.id = name or queue.worker_id()
        self.stopping = threading.Event()
        self.metrics = CollectorRegistry()
        self.metrics.register(RegistryCollector(self.registry.db, live_seconds=settings.worker_live_seconds))
        self.jobs = JobMetrics(self.metrics)
        self._current: queue.Job | None = None
        self._signals = 0

    # ------------------------------------------------------------------------------------ signals

    def _interrupt(self, signum: int, _frame: FrameType | None) -> None:
        if self._current is not None:
            raise queue.Interrupted

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        self.stopping.set()
        if self._current is None:
            return
        grace = self.settings.worker_grace_seconds
        if self._signals > 1 or grace <= 0:
            log.warning("signal %d: giving %s back", signum, self._current.ref)
            raise queue.Interrupted
        log.warning("signal %d: finishing %s (at most %g s more)", signum, self._current.ref, grace)
        signal.signal(signal.SIGALRM, self._interrupt)
        signal.setitimer(signal.ITIMER_REAL, grace)

    def _install_signals(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)

    # --------------------------------------------------------------------------------------- loop

    def run(self, *, once: bool = False, max_jobs: int | None = None) -> int:
        """Work until stopped (or, with `once`, until the queue is empty); returns the jobs run."""
        settings = self.settings
        import_codec_modules(settings.codec_modules)
        self.registry._ready()
        device = resolve_device(settings.device)
        if settings.worker_metrics_port:
            start_http_server(settings.worker_metrics_port, registry=self.metrics)
        self._install_signals()
        environment = self.registry.environment or CodecEnvironment()
        with Presence(
            self.registry.db,
            self.id,
            device=device,
            models=environment.available_models,
            live_seconds=settings.worker_live_seconds,
        ) as presence:
            log.info(
                "worker started", extra={"worker": self.id, "device": device, "models": list(presence.models)}
            )
            done = self._loop(presence, device, once=once, max_jobs=max_jobs)
        log.info("worker stopped", extra={"worker": self.id, "jobs": done})
        return done

    def _loop(self, presence: Presence, device: str, *, once: bool, max_jobs: int | None) -> int:
        settings = self.settings
        done = 0
        next_sweep = 0.0
        while not self.stopping.is_set():
            if time.monotonic() >= next_sweep:
                self._sweep()
                next_sweep = time.monotonic() + settings.maintenance_interval_seconds
            try:
                job = queue.claim_next(
                    self.registry.db,
                    self.id,
                    lease_seconds=settings.worker_lease_seconds,
                    max_attempts=settings.worker_max_attempts,
                    capabilities=Capabilities(  # the models announced last: a beat may have found new ones
                        presence.models,
                        live_seconds=settings.worker_live_seconds,
                        wait_seconds=settings.worker_capability_wait_seconds,
                    ),
                )
            except DatabaseUnavailable as exc:  # an outage or a restart: wait it out
                log.warning("cannot claim jobs: %s", exc, extra={"worker": self.id})
                self.stopping.wait(settings.worker_poll_seconds)
                continue
            if job is None:
                if once:
                    break
                self.stopping.wait(settings.worker_poll_seconds)
                continue
            self._run(job, device)
            done += 1
            if max_jobs is not None and done >= max_jobs:
                break
        return done

    def _sweep(self) -> None:
        """Leftovers of interrupted work (temporary folders, partial blobs, incomplete uploads)."""
        try:
            log_sweep(log, self.registry.sweep())
        except Exception:  # the blob store may be down for a while; try again next time
            log.exception("sweeping leftovers failed")

    def _run(self, job: queue.Job, device: str) -> None:
        settings = self.settings
        codec = str(job.requested.get("codec"))
        log.info(
            "job claimed",
            extra={"worker": self.id, "version": job.ref, "attempt": job.attempts, "codec": codec},
        )
        started = time.perf_counter()
        self._current = job
        try:
            result = service.run_job(
                self.registry.db,
                self.registry.storage,
                job,
                device=device,
                environment=self.registry.environment,
                lease_seconds=settings.worker_lease_seconds,
                max_attempts=settings.worker_max_attempts,
                backoff_seconds=settings.worker_backoff_seconds,
                tmp_dir=self.registry.temp_dir(),
            )
        except queue.Interrupted:
            result = "released"
        finally:
            self._current = None
            signal.setitimer(signal.ITIMER_REAL, 0)
        seconds = time.perf_counter() - started
        self.jobs.observe(codec, result, seconds)
        log.info(
            "job %s",
            result,
            extra={"worker": self.id, "version": job.ref, "result": result, "seconds": round(seconds, 3)},
        )
