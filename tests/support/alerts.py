"""Alert test helpers: a writer with its own alert engine, and feeding it item by item."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from alerts.engine import AlertEngine
from ingest.items import Item
from ingest.writer import Writer


@contextmanager
def engine_writer(db_url: str, **engine_args: float) -> Iterator[Writer]:
    """A writer with its own alert engine, as one ingest worker has."""
    writer = Writer(db_url, hooks=[AlertEngine(**engine_args)])
    writer.start()
    try:
        yield writer
    finally:
        writer.stop()


def feed(writer: Writer, *items: Item) -> None:
    """Submit items one after another, each committed before the next."""
    for item in items:
        done = threading.Event()
        item.done = lambda _item, done=done: done.set()
        assert writer.submit(item, timeout_s=30)
        assert done.wait(30), writer.last_error
