"""An ingest worker: consumer + writer + stats, in its own process (`python -m ingest.worker`,
started by the pool of `ioc ingest`) or in a thread of `ioc serve`/`ioc demo`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

from alerts.engine import AlertEngine
from ingest.consumer import Consumer, ConsumerConfig
from ingest.late_ranges import LateRanges
from ingest.metrics import StatsLogger
from ingest.topics import Assignment, assign
from ingest.validation import Rules
from ingest.writer import AfterCommit, BatchHook, Writer
from ioc.cagg_refresh import CaggRefresher
from ioc.catalogue import Profile, load_catalogue, load_profile
from ioc.errors import ConfigError, IocError, WorkerFailed
from ioc.logs import configure_logging
from ioc.settings import Settings, load_settings

log = logging.getLogger("ioc.ingest.worker")

HEALTH_CHECK_S: Final = 0.5
REFRESH_JOIN_S: Final = 10.0
# while the broker has not taken the subscription: log that, first after this, then less often
WAIT_LOG_FIRST_S: Final = 5.0
WAIT_LOG_MAX_S: Final = 60.0
MAX_PORT: Final = 65535


def rules_for(settings: Settings, profile: Profile) -> Rules:
    """Validation rules from the profile and the ingest settings."""
    return Rules.from_profile(
        profile,
        unknown_metrics=settings.ingest_unknown_metrics,
        future_tolerance_s=settings.ingest_future_tolerance_s,
        retention_days=settings.retention_days,
    )


def default_hooks(settings: Settings) -> list[BatchHook]:
    """What runs inside each batch transaction: late-range tracking (TimescaleDB only) and the
    alert engine, unless disabled."""
    hooks: list[BatchHook] = [LateRanges()]
    if settings.alerts_enabled:
        hooks.append(
            AlertEngine(
                reopen_window_s=settings.alerts_reopen_window_s,
                lateness_s=settings.alerts_lateness_s,
            )
        )
    return hooks


def writer_for(
    settings: Settings,
    database_url: str,
    hooks: Sequence[BatchHook] | None = None,
    after_commit: Sequence[AfterCommit] = (),
) -> Writer:
    """A writer configured from the ingest settings (default hooks: late ranges and the alert
    engine)."""
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


def client_id_for(settings: Settings, index: int) -> str:
    """The MQTT client id (and so the persistent session) of worker `index`."""
    return f"{settings.ingest_client_id}-{index}"


def assignments_for(settings: Settings, profile: Profile, workers: int) -> list[Assignment]:
    """Each worker's topic filters under IOC_INGEST_SUBSCRIPTION (ConfigError if impossible)."""
    mode = settings.ingest_subscription
    if settings.mqtt_protocol != "5" and (mode == "shared" or workers > 1):
        raise ConfigError(
            "IOC_MQTT_PROTOCOL=3.1.1 has no shared subscriptions and runs one worker: "
            "use --workers 1 and IOC_INGEST_SUBSCRIPTION=partitioned"
        )
    try:
        return assign(
            [s.id for s in profile.sectors],
            workers,
            mode=mode,
            group=settings.ingest_share_group,
            known_sectors=load_catalogue(),
        )
    except ValueError as exc:
        raise ConfigError(f"IOC_INGEST_SUBSCRIPTION={mode}: {exc}") from None


def consumer_config(
    settings: Settings, mqtt_url: str, client_id: str, assignment: Assignment
) -> ConsumerConfig:
    """How a worker (or a retirement) connects, from the ingest settings."""
    return ConsumerConfig(
        mqtt_url=mqtt_url,
        client_id=client_id,
        session_expiry_s=settings.ingest_session_expiry_s,
        max_payload_bytes=settings.ingest_max_payload_bytes,
        protocol=settings.mqtt_protocol,
        assignment=assignment,
    )


def serve_metrics(settings: Settings, index: int) -> WSGIServer | None:
    """Serve this process's Prometheus metrics (the counters of `ingest.metrics`) on port
    IOC_INGEST_METRICS_PORT + `index` of IOC_HTTP_HOST's interface, one port per worker of a
    pool; None when the setting is off, or when the port cannot be had (logged: ingest goes
    on without its metrics rather than stopping)."""
    base = settings.ingest_metrics_port
    if not base:
        return None
    host, port = settings.http_host, base + index
    if port > MAX_PORT:
        log.error(
            "ingest metrics not served: IOC_INGEST_METRICS_PORT + worker index is past 65535",
            extra={"worker": index, "port": port},
        )
        return None
    try:
        server, _ = start_http_server(port, addr=host)
    except OSError as exc:  # taken (EADDRINUSE), or no such interface
        log.error(
            "ingest metrics not served: cannot listen on the port (taken by another process?); "
            "ingest goes on without them",
            extra={"worker": index, "host": host, "port": port, "error": str(exc)},
        )
        return None
    log.info(
        "ingest metrics served",
        extra={"worker": index, "url": f"http://{host}:{server.server_port}/metrics"},
    )
    return server


def run_worker(
    settings: Settings,
    *,
    database_url: str,
    mqtt_url: str,
    profile: Profile,
    index: int = 0,
    workers: int = 1,
    stop: threading.Event | None = None,
    after_commit: Sequence[AfterCommit] = (),
    supervisor_pid: int | None = None,
) -> None:
    """Consume until `stop` is set (or SIGTERM/SIGINT when `stop` is None), or until the
    process `supervisor_pid` is gone. The broker being unreachable, or slow to take the
    subscription, is waited out (and logged), never a reason to exit. With
    IOC_INGEST_METRICS_PORT set, worker `index` serves its metrics on that port + `index`."""
    if not 0 <= index < workers:
        raise ConfigError(f"worker index {index} outside a pool of {workers}")
    assignment = assignments_for(settings, profile, workers)[index]
    stop = stop or stop_on_signals()
    writer = writer_for(settings, database_url, after_commit=after_commit)
    consumer = Consumer(
        consumer_config(settings, mqtt_url, client_id_for(settings, index), assignment),
        rules=rules_for(settings, profile),
        writer=writer,
    )
    stats = StatsLogger(settings.ingest_stats_interval_s, worker=index)
    started = time.monotonic()
    writer.start()
    consumer.start_background()
    stats.start()
    # late data on TimescaleDB reaches the continuous aggregates through this job; one
    # worker at a time does it (advisory lock)
    refresh_stop = threading.Event()
    refresher = threading.Thread(
        target=CaggRefresher(database_url).run,
        args=(refresh_stop,),
        name="cagg-refresh",
        daemon=True,
    )
    refresher.start()
    metrics = serve_metrics(settings, index)
    try:
        _watch(consumer, writer, stop, index=index, started=started, supervisor=supervisor_pid)
    finally:
        if metrics is not None:
            metrics.shutdown()
            metrics.server_close()
        refresh_stop.set()
        drained = consumer.stop()
        stats.stop()
        refresher.join(REFRESH_JOIN_S)
        log.info("ingest worker stopped", extra={"worker": index, "drained": drained})


def _watch(
    consumer: Consumer,
    writer: Writer,
    stop: threading.Event,
    *,
    index: int,
    started: float,
    supervisor: int | None,
) -> None:
    """Health loop: announce the subscription, wait for `stop`, raise when a thread died."""
    running = False
    wait_log_s = WAIT_LOG_FIRST_S
    next_wait_log = started + wait_log_s
    while True:
        if running:
            stopping = stop.wait(HEALTH_CHECK_S)
        else:
            if consumer.wait_subscribed(HEALTH_CHECK_S):
                running = True
                log.info(
                    "ingest worker running",
                    extra={
                        "worker": index,
                        "client_id": consumer.config.client_id,
                        "pid": os.getpid(),
                        "start_s": round(time.monotonic() - started, 3),
                    },
                )
            elif time.monotonic() >= next_wait_log:
                log.warning(
                    "ingest worker waiting for the broker to take its subscription",
                    extra={
                        "worker": index,
                        "connected": consumer.connected,
                        "waited_s": round(time.monotonic() - started),
                    },
                )
                wait_log_s = min(wait_log_s * 2, WAIT_LOG_MAX_S)
                next_wait_log = time.monotonic() + wait_log_s
            stopping = stop.is_set()
        if stopping:
            return
        # a worker whose threads died must not live on looking connected: exit non-zero
        # so that the supervisor (ioc ingest, systemd, docker) starts a new one
        if consumer.failed:
            raise WorkerFailed("the MQTT network thread died; exiting to be restarted")
        if not writer.alive:
            raise WorkerFailed("the database writer thread died; exiting to be restarted")
        if supervisor is not None and os.getppid() != supervisor:
            # its pool is gone (killed): a new pool starts workers with the same client ids,
            # which this one would keep taking over
            log.warning("ingest pool gone; worker stopping", extra={"worker": index})
            return


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (call from the main thread)."""
    stop = threading.Event()

    def _handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return stop


def worker_command(index: int, workers: int) -> list[str]:
    """The command line of one pool worker (settings come from the environment)."""
    return [
        sys.executable,
        "-m",
        "ingest.worker",
        "--index",
        str(index),
        "--workers",
        str(workers),
        "--supervisor",
        str(os.getpid()),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    """One worker of `ioc ingest`: IOC_DATABASE_URL and IOC_MQTT_URL set by the pool."""
    parser = argparse.ArgumentParser(prog="python -m ingest.worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--supervisor", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        configure_logging(settings.log_level)
        if settings.database_url is None or settings.mqtt_url is None:
            raise ConfigError("a pool worker needs IOC_DATABASE_URL and IOC_MQTT_URL")
        run_worker(
            settings,
            database_url=settings.database_url.get_secret_value(),
            mqtt_url=settings.mqtt_url.get_secret_value(),
            profile=load_profile(settings.profile),
            index=args.index,
            workers=args.workers,
            supervisor_pid=args.supervisor,
        )
    except IocError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
