"""The words every layer shares, defined once: alert severities and their order, the sides of a
threshold and its operator symbols, and the root of the MQTT topics. The catalogue, the models,
ingest, the alert engine and the API import them from here."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Final, Literal, get_args


class Severity(StrEnum):
    """Alert severity, lowest first."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return SEVERITY_RANK[self.value]


# the same names as a type, for values kept as plain strings (a test checks they agree)
SeverityName = Literal["info", "warning", "critical"]
SEVERITIES: Final[tuple[str, ...]] = tuple(s.value for s in Severity)
SEVERITY_RANK: Final[Mapping[str, int]] = MappingProxyType(
    {name: rank for rank, name in enumerate(SEVERITIES)}
)


class Direction(StrEnum):
    """Which side of a threshold value is abnormal."""

    ABOVE = "above"
    BELOW = "below"


DirectionName = Literal["above", "below"]

# operator symbol: (direction, inclusive)
OPERATORS: Final[Mapping[str, tuple[DirectionName, bool]]] = MappingProxyType(
    {">": ("above", False), ">=": ("above", True), "<": ("below", False), "<=": ("below", True)}
)


def operator_symbol(direction: str, inclusive: bool) -> str:
    """`>`, `>=`, `<` or `<=` for a threshold's direction and inclusiveness."""
    return (">" if direction == Direction.ABOVE else "<") + ("=" if inclusive else "")


def breaches(value: float, direction: str, limit: float, inclusive: bool) -> bool:
    """Whether a value is on the abnormal side of a threshold."""
    if direction == Direction.ABOVE:
        return value >= limit if inclusive else value > limit
    return value <= limit if inclusive else value < limit


# telemetry on `ioc/v1/{sector}/{source}/{kind}`, alert events on `ioc/v1/alerts/...`
TOPIC_ROOT: Final = "ioc/v1"


RuleKind = Literal["threshold", "silence", "event", "deviation"]
"""What an alert rule watches: a threshold, a source's silence, agency events, deviations."""
RULE_KINDS: Final[tuple[str, ...]] = get_args(RuleKind)


class Role(StrEnum):
    """What an API key may do (the permission matrix is in `api/permissions.py` and README)."""

    ADMIN = "admin"
    OPERATOR = "operator"
    ANALYST = "analyst"
    AGENCY = "agency"
    VIEWER = "viewer"


ROLES: Final[tuple[str, ...]] = tuple(r.value for r in Role)


class AlertStatus(StrEnum):
    """Where an alert is in its lifecycle."""

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


ALERT_STATUSES: Final[tuple[str, ...]] = tuple(s.value for s in AlertStatus)


class EventStatus(StrEnum):
    """How far an agency event has been handled."""

    NEW = "new"
    IN_PROGRESS = "in_progress"
    RESOLVED = "resolved"


EVENT_STATUSES: Final[tuple[str, ...]] = tuple(s.value for s in EventStatus)


class SourceStatus(StrEnum):
    """Whether a source is reporting."""

    ONLINE = "online"
    OFFLINE = "offline"
    UNKNOWN = "unknown"


SOURCE_STATUSES: Final[tuple[str, ...]] = tuple(s.value for s in SourceStatus)
