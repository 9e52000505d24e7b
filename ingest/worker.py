"""An ingest worker process: consumer + writer + stats; and a supervisor for N of them."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Final

from alerts.engine import AlertEngine
from ingest.consumer import Consumer, ConsumerConfig
from ingest.metrics import StatsLogger
from ingest.topics import PLAIN_SUBSCRIPTION
from ingest.validation import Rules
from ingest.writer import AfterCommit, BatchHook, Writer
from ioc.catalogue import Profile
from ioc.errors import WorkerFailed
from ioc.settings import Settings

log = logging.getLogger("ioc.ingest.worker")

RESTART_BACKOFF_MAX_S: Final = 30.0
HEALTH_CHECK_S: Final = 0.5
STOP_GRACE_S: Final = 40.0


def rules_for(settings: Settings, profile: Profile) -> Rules:
    """Validation rules from the profile and the ingest settings."""
    return Rules.from_profile(
        profile,
        unknown_metrics=settings.ingest_unknown_metrics,
        future_tolerance_s=settings.ingest_future_tolerance_s,
        retention_days=settings.retention_days,
    )


def default_hooks(settings: Settings) -> list[BatchHook]:
    """What runs inside each batch transaction: the alert engine, unless disabled."""
    if not settings.alerts_enabled:
        return []
    return [AlertEngine(reopen_window_s=settings.alerts_reopen_window_s)]


def writer_for(
    settings: Settings,
    database_url: str,
    hooks: Sequence[BatchHook] | None = None,
    after_commit: Sequence[AfterCommit] = (),
) -> Writer:
    """A writer configured from the ingest settings (default hooks: the alert engine)."""
    if hooks is None:
        hooks = default_hooks(settings)
    return Writer(
        database_url,
        max_batch_rows=settings.ingest_max_batch_rows,
        queue_max_rows=settings.ingest_queue_max_rows,
        queue_max_bytes=settings.ingest_queue_max_bytes,
        strict_sources=settings.ingest_strict_sources,
        receipt_window_s=settings.ingest_session_expiry_s,
        hooks=hooks,
        after_commit=after_commit,
    )


def run_worker(
    settings: Settings,
    *,
    database_url: str,
    mqtt_url: str,
    profile: Profile,
    index: int = 0,
    stop: threading.Event | None = None,
    after_commit: Sequence[AfterCommit] = (),
) -> None:
    """Consume until `stop` is set (or SIGTERM/SIGINT when `stop` is None)."""
    stop = stop or _stop_on_signals()
    writer = writer_for(settings, database_url, after_commit=after_commit)
    consumer = Consumer(
        ConsumerConfig(
            mqtt_url=mqtt_url,
            client_id=f"{settings.ingest_client_id}-{index}",
            session_expiry_s=settings.ingest_session_expiry_s,
            max_payload_bytes=settings.ingest_max_payload_bytes,
            protocol=settings.mqtt_protocol,
            # MQTT 3.1.1 has no shared subscriptions: one worker takes everything
            subscription=(
                f"$share/{settings.ingest_share_group}/{PLAIN_SUBSCRIPTION}"
                if settings.mqtt_protocol == "5"
                else PLAIN_SUBSCRIPTION
            ),
        ),
        rules=rules_for(settings, profile),
        writer=writer,
    )
    stats = StatsLogger(settings.ingest_stats_interval_s, worker=index)
    writer.start()
    try:
        consumer.start()
    except BaseException:
        writer.stop(timeout_s=1)
        raise
    stats.start()
    log.info("ingest worker running", extra={"worker": index, "profile": profile.name})
    try:
        while not stop.wait(HEALTH_CHECK_S):
            # a worker whose threads died must not live on looking connected: exit non-zero
            # so that the supervisor (ioc ingest, systemd, docker) starts a new one
            if consumer.failed:
                raise WorkerFailed("the MQTT network thread died; exiting to be restarted")
            if not writer.alive:
                raise WorkerFailed("the database writer thread died; exiting to be restarted")
    finally:
        drained = consumer.stop()
        stats.stop()
        log.info("ingest worker stopped", extra={"worker": index, "drained": drained})


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def _handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return stop


def supervise(command: Sequence[str], workers: int, *, env: dict[str, str] | None = None) -> int:
    """Run `workers` copies of `command` (with --index i), restart any that dies, stop on signal.

    Workers share nothing but the database and the broker's shared subscription.
    """
    stop = _stop_on_signals()
    procs: dict[int, subprocess.Popen[bytes]] = {}
    failures: dict[int, int] = dict.fromkeys(range(workers), 0)
    next_start: dict[int, float] = dict.fromkeys(range(workers), 0.0)
    child_env = dict(os.environ if env is None else env)
    try:
        while not stop.is_set():
            now = time.monotonic()
            for i in range(workers):
                proc = procs.get(i)
                if proc is not None and proc.poll() is None:
                    continue
                if proc is not None:
                    failures[i] += 1
                    delay = min(RESTART_BACKOFF_MAX_S, 2.0 ** min(failures[i], 5))
                    log.error(
                        "ingest worker exited; restarting",
                        extra={"worker": i, "code": proc.returncode, "restart_in_s": delay},
                    )
                    next_start[i] = now + delay
                    del procs[i]
                    continue
                if now >= next_start[i]:
                    procs[i] = subprocess.Popen(  # noqa: S603
                        [*command, "--index", str(i)], env=child_env
                    )
            stop.wait(0.5)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


def worker_command() -> list[str]:
    """The command line that runs one worker of this installation."""
    return [sys.executable, "-m", "ioc", "ingest"]
