"""One exception tree for the whole project; translated to HTTP only in `api`."""

from __future__ import annotations


class IocError(Exception):
    """Base of every error ioc raises on purpose."""


class ConfigError(IocError):
    """A setting, a profile file or the environment is wrong; the message says which."""


class ProfileError(ConfigError):
    """A province profile or the sector catalogue failed validation."""


class DatabaseError(IocError):
    """The database could not be reached, started or migrated."""


class BrokerError(IocError):
    """The MQTT broker could not be reached or started."""


class QueryError(IocError):
    """A time-series question is malformed (unknown bucket, bad range, unknown function)."""


class NotFound(IocError):
    """The thing asked for does not exist (or is outside the caller's sectors)."""


class Conflict(IocError):
    """The change does not apply to the thing's current state."""


class InvalidInput(IocError):
    """A request, a rule or a key definition is wrong; the message says what."""


class IngestError(IocError):
    """Ingest could not take input: the reason is a short code, the detail says what."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DecodeError(IngestError):
    """A message could not be decoded as a whole (bad topic, malformed payload, too large)."""


class WorkerFailed(IocError):
    """A thread of an ingest worker died: the process exits non-zero to be restarted."""
