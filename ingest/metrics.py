"""Ingest counters and histograms, kept in the process for /metrics and logged periodically."""

from __future__ import annotations

import logging
import threading
from typing import Final

from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger("ioc.ingest.stats")

MESSAGES: Final = Counter("ioc_ingest_messages", "MQTT or HTTP messages taken in", ["kind"])
ACCEPTED: Final = Counter("ioc_ingest_readings_accepted", "Readings that passed validation")
STORED: Final = Counter("ioc_ingest_readings_stored", "Reading rows newly written")
DUPLICATES: Final = Counter(
    "ioc_ingest_readings_duplicate", "Readings already stored (a redelivery), written once"
)
REJECTS: Final = Counter("ioc_ingest_rejects", "Readings or messages refused", ["reason"])
EVENTS: Final = Counter("ioc_ingest_events_stored", "Agency events newly stored")
BATCH_ROWS: Final = Histogram(
    "ioc_ingest_batch_rows",
    "Readings per committed batch",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000),
)
COMMIT_SECONDS: Final = Histogram(
    "ioc_ingest_batch_commit_seconds",
    "Time to write and commit one batch",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
)
LAG_SECONDS: Final = Histogram(
    "ioc_ingest_lag_seconds",
    "Reading time (publish) to commit, per message",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
QUEUE_ROWS: Final = Gauge("ioc_ingest_queue_rows", "Readings waiting to be written")
QUEUE_BYTES: Final = Gauge("ioc_ingest_queue_bytes", "Payload bytes waiting to be written")
DB_RETRIES: Final = Counter("ioc_ingest_db_retries", "Batch writes retried after a database error")
REDELIVERIES: Final = Counter(
    "ioc_ingest_redeliveries",
    "Messages timed by their receipt, or with rejects, recognised as delivered before",
)


def _total(counter: Counter) -> float:
    return sum(
        sample.value
        for metric in counter.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


def _gauge(gauge: Gauge) -> float:
    return next(iter(gauge.collect())).samples[0].value


def snapshot() -> dict[str, float]:
    """Current totals, flat, for logs and tests."""
    out = {
        "messages": _total(MESSAGES),
        "accepted": _total(ACCEPTED),
        "stored": _total(STORED),
        "duplicates": _total(DUPLICATES),
        "rejected": _total(REJECTS),
        "events": _total(EVENTS),
        "db_retries": _total(DB_RETRIES),
        "redeliveries": _total(REDELIVERIES),
        "queue_rows": _gauge(QUEUE_ROWS),
        "queue_bytes": _gauge(QUEUE_BYTES),
    }
    for metric in REJECTS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out[f"rejected.{sample.labels['reason']}"] = sample.value
    return out


class StatsLogger:
    """Logs the totals and the rates since the last line every `interval_s` seconds."""

    def __init__(self, interval_s: float, *, worker: int = 0) -> None:
        self.interval_s = interval_s
        self.worker = worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest-stats", daemon=True)

    def start(self) -> None:
        """Start logging in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop and log one last line."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        before = snapshot()
        while True:
            stopping = self._stop.wait(self.interval_s)
            now = snapshot()
            extra = {"worker": self.worker, **{k: int(v) for k, v in now.items()}}
            extra["stored_per_s"] = int((now["stored"] - before["stored"]) / self.interval_s)
            log.info("ingest stats", extra=extra)
            before = now
            if stopping:
                return
