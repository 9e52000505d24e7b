"""The transition log: one INFO line per alert event, in commit order, wherever the alerts
service runs (`ioc alerts`, `ioc serve --with-workers`, `ioc demo`).

It is a notifier channel like MQTT and the webhooks (`alerts.notify.Dispatcher`: a cursor in
`notify_cursor`, events by `seq`, one process at a time per channel), with two differences: it
logs every kind of event, the operators' notes included, and it records no `alert_delivery`
rows (a log line cannot fail to be written in a way worth retrying). A line reads:

    ... INFO ioc.alerts.transitions alert opened alert=6 severity=warning status=open
        sector=security source=mk-security-003 value=2.0 by=system event=11
        title="Crowd alerts 2 count above warning 1 count at mk-security-003"

(one line; wrapped here). `value` is the reading that caused the event when there was one,
else the alert's latest; `title` is the English title (the Vietnamese one when it has none).
"""

from __future__ import annotations

import logging
from typing import Any, Final

from alerts.notify import Outcome

CHANNEL: Final = "log"
LOGGER: Final = "ioc.alerts.transitions"

# what an event's detail may add to its line, as (detail key, log key): an escalation's level,
# why the engine or the sweeper resolved, reopened or withdrew it, an operator's note or
# comment, the assignee
_DETAIL_FIELDS: Final = (
    ("level", "level"),
    ("reason", "reason"),
    ("note", "note"),
    ("text", "note"),
    ("to", "to"),
)


def describe(doc: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The log message and its key=value fields for one event document
    (`alerts.notify.event_document`)."""
    alert = doc["alert"]
    detail = doc.get("detail") or {}
    value = detail.get("value", alert["last_value"])
    fields: dict[str, Any] = {
        "alert": alert["id"],
        "severity": alert["severity"],
        "status": alert["status"],
        "sector": alert["sector"],
    }
    if alert["source_id"] is not None:
        fields["source"] = alert["source_id"]
    if value is not None:
        fields["value"] = value
    for key, name in _DETAIL_FIELDS:
        if detail.get(key) is not None:
            fields[name] = detail[key]
    fields["by"] = doc["actor"]
    fields["event"] = doc["id"]
    fields["title"] = alert["title_en"] or alert["title"]
    return f"alert {doc['kind']}", fields


class TransitionLog:
    """A channel that logs each alert event on one line (see the module's docstring)."""

    name = CHANNEL

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger(LOGGER)

    def wants(self, doc: dict[str, Any]) -> bool:
        return True

    def deliver(self, doc: dict[str, Any], body: bytes) -> Outcome:
        message, fields = describe(doc)
        self._log.info(message, extra=fields)
        return Outcome(True)

    def close(self) -> None:
        return None
