"""Who may do what: the permission matrix of the API's roles (README shows the same table)."""

from __future__ import annotations

from enum import StrEnum
from types import MappingProxyType
from typing import Final

from ioc.vocabulary import Role


class Permission(StrEnum):
    """One kind of thing a request does."""

    PANELS_READ = "panels.read"  # sectors, KPIs, profile, sources, latest values, aggregates
    ALERTS_READ = "alerts.read"  # alerts, their history and CAP documents
    EVENTS_READ = "events.read"
    HISTORY_READ = "history.read"  # raw readings and CSV export
    RULES_READ = "rules.read"
    ALERTS_ACT = "alerts.act"  # acknowledge, resolve, comment, assign
    EVENTS_UPDATE = "events.update"  # the handling status of an event
    TELEMETRY_WRITE = "telemetry.write"
    EVENTS_WRITE = "events.write"
    SOURCES_WRITE = "sources.write"
    RULES_WRITE = "rules.write"
    RULES_BACKTEST = "rules.backtest"
    AUDIT_READ = "audit.read"


P = Permission
_READ_ALL = {P.PANELS_READ, P.ALERTS_READ, P.EVENTS_READ, P.HISTORY_READ, P.RULES_READ}

MATRIX: Final = MappingProxyType(
    {
        Role.ADMIN: frozenset(Permission),
        Role.OPERATOR: frozenset(_READ_ALL | {P.ALERTS_ACT, P.EVENTS_UPDATE}),
        Role.ANALYST: frozenset(_READ_ALL | {P.RULES_BACKTEST}),
        Role.AGENCY: frozenset(_READ_ALL | {P.TELEMETRY_WRITE, P.EVENTS_WRITE}),
        Role.VIEWER: frozenset({P.PANELS_READ, P.ALERTS_READ}),
    }
)
"""What each role may do. Agency keys do it only within their own sectors."""

SCOPED_ROLES: Final = frozenset({Role.AGENCY})
"""Roles limited to the sectors written on the key."""


def allows(role: Role, permission: Permission) -> bool:
    """Whether a role holds a permission."""
    return permission in MATRIX[role]
