"""Logging set-up: one line per record, with the record's structured `extra` as key=value."""

from __future__ import annotations

import logging

import orjson

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class KeyValueFormatter(logging.Formatter):
    """`time level logger message key=value ...`, values JSON-encoded when not plain."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record."""
        base = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if not extras:
            return base
        pairs = " ".join(f"{k}={_value(v)}" for k, v in extras.items())
        return f"{base} {pairs}"


def _value(value: object) -> str:
    if isinstance(value, str) and value and " " not in value and "=" not in value:
        return value
    return orjson.dumps(value, default=str).decode()


def configure_logging(level: str = "INFO") -> None:
    """Send ioc's logs to stderr in key=value form."""
    handler = logging.StreamHandler()
    handler.setFormatter(KeyValueFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Alembic narrates every step at INFO; ioc reports the outcome itself.
    for chatty in ("alembic", "amqtt", "transitions"):  # routine steps logged at INFO
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
