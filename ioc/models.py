"""ORM models of the ioc schema (DESIGN section 3); migrations create the same tables."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    SmallInteger,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from ioc.db import Base
from ioc.vocabulary import (
    ALERT_STATUSES,
    EVENT_STATUSES,
    ROLES,
    RULE_KINDS,
    SEVERITIES,
    SOURCE_STATUSES,
)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class Sector(Base):
    """A sector of the operations center, synced from the active profile."""

    __tablename__ = "sector"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    name_vi: Mapped[str] = mapped_column(Text)
    name_en: Mapped[str] = mapped_column(Text)
    display_order: Mapped[int] = mapped_column(Integer)
    colour: Mapped[str] = mapped_column(Text)
    metrics: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default=text("'[]'"))
    kpis: Mapped[list[str]] = mapped_column(JSONB, server_default=text("'[]'"))
    active: Mapped[bool] = mapped_column(server_default=text("true"))
    profile: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = _now()


class Source(Base):
    """A device, camera or feed of another system that reports readings or events."""

    __tablename__ = "source"
    __table_args__ = (
        CheckConstraint(_in("status", SOURCE_STATUSES), name="status"),
        Index(None, "sector_id"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    sector_id: Mapped[str] = mapped_column(ForeignKey("sector.id"))
    name: Mapped[str | None] = mapped_column(Text)
    kind: Mapped[str | None] = mapped_column(Text)
    district: Mapped[str | None] = mapped_column(Text)
    latitude: Mapped[float | None] = mapped_column(Double)
    longitude: Mapped[float | None] = mapped_column(Double)
    interval_s: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(Text, server_default=text("'unknown'"))
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # receipt time of the last message with readings (silence ignores status pings)
    last_reading_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'"))
    created_at: Mapped[datetime] = _now()


class Series(Base):
    """One metric of one source; readings carry its small integer id."""

    __tablename__ = "series"
    __table_args__ = (UniqueConstraint("source_id", "metric"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source_id: Mapped[str] = mapped_column(ForeignKey("source.id", ondelete="CASCADE"))
    metric: Mapped[str] = mapped_column(Text)
    catalogued: Mapped[bool] = mapped_column(server_default=text("true"))
    created_at: Mapped[datetime] = _now()


class Reading(Base):
    """A value of a series at a time (a hypertable under TimescaleDB).

    No foreign key to `series`: it would cost a lookup per row on the hot ingest path, and
    series rows are created before their readings and never deleted while readings exist.
    """

    __tablename__ = "reading"
    __table_args__ = (PrimaryKeyConstraint("series_id", "ts"),)

    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    series_id: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Double)


class Event(Base):
    """A report from a sector agency (incident, citizen report, outage)."""

    __tablename__ = "event"
    __table_args__ = (
        CheckConstraint(_in("severity", SEVERITIES), name="severity"),
        CheckConstraint(_in("status", EVENT_STATUSES), name="status"),
        Index(None, "sector_id", "occurred_at"),
        Index(
            "uq_event_sector_id_external_ref",
            "sector_id",
            "external_ref",
            unique=True,
            postgresql_where=text("external_ref IS NOT NULL"),
        ),
        Index(
            "uq_event_sector_id_dedup_key",
            "sector_id",
            "dedup_key",
            unique=True,
            postgresql_where=text("dedup_key IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    sector_id: Mapped[str] = mapped_column(ForeignKey("sector.id"))
    source_id: Mapped[str | None] = mapped_column(ForeignKey("source.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(Text)
    severity: Mapped[str] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    district: Mapped[str | None] = mapped_column(Text)
    latitude: Mapped[float | None] = mapped_column(Double)
    longitude: Mapped[float | None] = mapped_column(Double)
    location: Mapped[str | None] = mapped_column(Text)
    external_ref: Mapped[str | None] = mapped_column(Text)
    # digest of source and payload: a redelivered event without external_ref is stored once
    dedup_key: Mapped[str | None] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = _now()
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'"))
    status: Mapped[str] = mapped_column(Text, server_default=text("'new'"))
    updated_at: Mapped[datetime] = _now()


class AlertRule(Base):
    """A rule that opens alerts: a threshold, a silence, or a kind of agency event."""

    __tablename__ = "alert_rule"
    __table_args__ = (
        CheckConstraint(_in("kind", RULE_KINDS), name="kind"),
        CheckConstraint(_in("severity", SEVERITIES), name="severity"),
        CheckConstraint("direction IS NULL OR direction IN ('above', 'below')", name="direction"),
        UniqueConstraint("name"),
        UniqueConstraint("seed_key"),
        Index(None, "sector_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    sector_id: Mapped[str] = mapped_column(ForeignKey("sector.id"))
    metric: Mapped[str | None] = mapped_column(Text)
    severity: Mapped[str] = mapped_column(Text)
    direction: Mapped[str | None] = mapped_column(Text)
    threshold: Mapped[float | None] = mapped_column(Double)
    inclusive: Mapped[bool] = mapped_column(server_default=text("false"))
    for_s: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    clear_at: Mapped[float | None] = mapped_column(Double)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'"))
    origin: Mapped[str] = mapped_column(Text, server_default=text("'user'"))
    enabled: Mapped[bool] = mapped_column(server_default=text("true"))
    district: Mapped[str | None] = mapped_column(Text)  # scope: one district of the sector
    source_id: Mapped[str | None] = mapped_column(Text)  # scope: one source
    manual_resolve: Mapped[bool] = mapped_column(server_default=text("false"))
    seed_key: Mapped[str | None] = mapped_column(Text)  # set on rules seeded from the profile
    seed_digest: Mapped[str | None] = mapped_column(Text)  # definition as seeded
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class AlertState(Base):
    """Evaluation state of a rule for one source, kept so a restart keeps a running timer."""

    __tablename__ = "alert_state"
    __table_args__ = (PrimaryKeyConstraint("rule_id", "source_id"),)

    rule_id: Mapped[int] = mapped_column(ForeignKey("alert_rule.id", ondelete="CASCADE"))
    source_id: Mapped[str] = mapped_column(ForeignKey("source.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(Text, server_default=text("'normal'"))
    pending_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_value: Mapped[float | None] = mapped_column(Double)
    last_ts: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    alert_id: Mapped[int | None] = mapped_column(BigInteger)
    stat_mean: Mapped[float | None] = mapped_column(Double)  # deviation rules
    stat_var: Mapped[float | None] = mapped_column(Double)
    stat_samples: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    updated_at: Mapped[datetime] = _now()


class Alert(Base):
    """An alert an operator acts on; at most one active alert per cause."""

    __tablename__ = "alert"
    __table_args__ = (
        CheckConstraint(_in("status", ALERT_STATUSES), name="status"),
        CheckConstraint(_in("severity", SEVERITIES), name="severity"),
        Index(
            "uq_alert_cause_key_active",
            "cause_key",
            unique=True,
            postgresql_where=text("status <> 'resolved'"),
        ),
        Index(None, "sector_id", "opened_at"),
        Index(None, "cause_key", "resolved_at"),
        Index("ix_alert_cause_key_condition", "cause_key", "condition_started_at"),
        Index(
            "ix_alert_open_transitioned",
            "transitioned_at",
            postgresql_where=text("status = 'open'"),
        ),
        Index("ix_alert_opened_at_id", "opened_at", "id"),  # the API's list, newest first
        Index(
            "ix_alert_active_status_severity",
            "status",
            "severity",
            postgresql_where=text("status <> 'resolved'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    cause_key: Mapped[str] = mapped_column(Text)
    rule_id: Mapped[int | None] = mapped_column(ForeignKey("alert_rule.id", ondelete="SET NULL"))
    sector_id: Mapped[str] = mapped_column(ForeignKey("sector.id"))
    source_id: Mapped[str | None] = mapped_column(ForeignKey("source.id", ondelete="SET NULL"))
    event_id: Mapped[int | None] = mapped_column(ForeignKey("event.id", ondelete="SET NULL"))
    severity: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default=text("'open'"))
    title: Mapped[str] = mapped_column(Text)
    last_value: Mapped[float | None] = mapped_column(Double)
    escalation_level: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))
    opened_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    acknowledged_by: Mapped[str | None] = mapped_column(Text)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rule_kind: Mapped[str | None] = mapped_column(Text)
    metric: Mapped[str | None] = mapped_column(Text)
    occurrences: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_by: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'"))
    # the condition by reading time: its first breaching reading, the reading at which it had
    # lasted long enough, the reading that cleared it
    condition_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    condition_fired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    condition_ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    peak_severity: Mapped[str | None] = mapped_column(Text)
    title_en: Mapped[str | None] = mapped_column(Text)  # `title` is Vietnamese
    # wall time: the latest transition (escalation counts from it) and the latest reading or
    # transition that confirmed the alert (auto-resolution counts from it)
    transitioned_at: Mapped[datetime] = _now()
    confirmed_at: Mapped[datetime] = _now()
    retracted: Mapped[bool] = mapped_column(server_default=text("false"))  # late readings
    assigned_to: Mapped[str | None] = mapped_column(Text)  # an agency or a person's name
    # listed in the public CAP feed (/api/v1/cap/alerts.atom); from the rule's `public` param
    public: Mapped[bool] = mapped_column(server_default=text("false"))


class AlertEvent(Base):
    """Append-only history of alerts. `seq` numbers events in commit order (set at commit by
    a trigger, migration 0008): readers follow it, never `id`, to miss nothing."""

    __tablename__ = "alert_event"
    __table_args__ = (Index(None, "alert_id"), Index("uq_alert_event_seq", "seq", unique=True))

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alert.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(Text)
    severity: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    actor: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'"))
    at: Mapped[datetime] = _now()
    seq: Mapped[int | None] = mapped_column(BigInteger)


class NotifyCursor(Base):
    """How far a notifier channel has delivered the alert events (by `alert_event.seq`)."""

    __tablename__ = "notify_cursor"

    channel: Mapped[str] = mapped_column(Text, primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    updated_at: Mapped[datetime] = _now()


class AlertDelivery(Base):
    """One attempt to deliver an alert event on a channel (MQTT, a webhook), and its outcome."""

    __tablename__ = "alert_delivery"
    __table_args__ = (Index(None, "alert_event_id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    alert_event_id: Mapped[int] = mapped_column(ForeignKey("alert_event.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer)
    ok: Mapped[bool]
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = _now()


class ApiKey(Base):
    """An API key, stored as a hash; the prefix identifies it in logs."""

    __tablename__ = "api_key"
    __table_args__ = (
        CheckConstraint(_in("role", ROLES), name="role"),
        UniqueConstraint("prefix"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text)
    prefix: Mapped[str] = mapped_column(Text)
    key_hash: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text)
    sectors: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))
    created_at: Mapped[datetime] = _now()
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class IdempotentRequest(Base):
    """A POST made with an `Idempotency-Key`: a retry gets the first answer back."""

    __tablename__ = "idempotent_request"
    __table_args__ = (PrimaryKeyConstraint("api_key_id", "key"), Index(None, "created_at"))

    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_key.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(Text)
    request_hash: Mapped[str] = mapped_column(Text)
    status_code: Mapped[int] = mapped_column(SmallInteger)
    response: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _now()


class AuditLog(Base):
    """Who did what, for changes made through the API or CLI."""

    __tablename__ = "audit_log"
    __table_args__ = (Index(None, "at"), Index(None, "target"))

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = _now()
    actor: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    target: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'"))


class IngestReject(Base):
    """A message or reading that ingest refused, kept whole with the reason."""

    __tablename__ = "ingest_reject"
    __table_args__ = (Index(None, "received_at"), Index(None, "reason"))

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = _now()
    topic: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    reason: Mapped[str] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)
    source_id: Mapped[str | None] = mapped_column(Text)


class IngestReceipt(Base):
    """A message whose stored rows depend on its delivery (receipt-timed readings, rejects).

    A redelivered copy of it (MQTT DUP, or a copy held from a dropped connection) takes the
    recorded stamp instead of a new one, so it stores nothing twice."""

    __tablename__ = "ingest_receipt"
    __table_args__ = (
        PrimaryKeyConstraint("digest", "received_at"),
        Index(None, "received_at"),
    )

    digest: Mapped[bytes] = mapped_column(LargeBinary)
    """First 16 bytes of sha256(topic NUL payload)."""
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    redelivery: Mapped[bool] = mapped_column(server_default=text("false"))
    """Recorded by a copy the broker marked as redelivered."""
