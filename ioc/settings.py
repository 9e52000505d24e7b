"""Process settings, read from `IOC_*` environment variables."""

from __future__ import annotations

import os
import re
import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlsplit

import platformdirs
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from ioc.errors import ConfigError
from ioc.vocabulary import SeverityName

ENV_PREFIX = "IOC_"
_PG_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg", "postgresql+asyncpg")
_MQTT_SCHEMES = ("mqtt", "mqtts", "tcp")
DEVELOPMENT_PEPPER = "ioc-development-pepper-not-secret"
OSM_TILE_URL = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
OSM_ATTRIBUTION = '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a>'


def default_data_dir() -> Path:
    """Per-user data directory; a system path when running as root (postgres refuses root)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/ioc")
    return Path(platformdirs.user_data_dir("ioc", appauthor=False))


def host_tag(max_len: int = 28) -> str:
    """This host's name (first label) as it may appear in an MQTT client id."""
    name = socket.gethostname().split(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:max_len] or "host"


def default_ingest_client_id() -> str:
    """`ioc-ingest-<host>`: the same on every start on this host (a container's hostname is
    its id), different between hosts, so two instances never share persistent sessions."""
    return f"ioc-ingest-{host_tag()}"


SubscriptionMode = Literal["partitioned", "shared"]
"""How ingest workers subscribe: plain filters dealt out by sector, or one shared filter."""


class WebhookConfig(BaseModel):
    """One webhook receiver (from `IOC_ALERTS_WEBHOOKS`, a JSON list of these)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")
    url: str = Field(pattern=r"^https?://")
    secret: SecretStr | None = None
    min_severity: SeverityName = "info"
    sectors: tuple[str, ...] = ()


class Settings(BaseSettings):
    """Every setting of an ioc process; see the README's settings table."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    environment: Literal["development", "production"] = "development"
    database_url: SecretStr | None = Field(
        default=None, description="PostgreSQL URL; unset: embedded PostgreSQL in IOC_DATA_DIR."
    )
    mqtt_url: SecretStr | None = Field(
        default=None, description="mqtt://user:pass@host:port; unset in demo: embedded broker."
    )
    profile: str = Field(default="bac-lieu", description="Profile name or path to a YAML file.")
    data_dir: Path = Field(default_factory=default_data_dir)
    retention_days: int = Field(default=365, ge=1, le=36500)
    timescale: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Use TimescaleDB: auto (when the extension is available), on (required), off.",
    )
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    mqtt_protocol: Literal["5", "3.1.1"] = Field(
        default="5",
        description="MQTT version; 3.1.1 (no shared subscriptions: one ingest worker) for "
        "brokers without MQTT 5 such as amqtt.",
    )

    # ingest (issue 3): see the README's settings table
    ingest_max_batch_rows: int = Field(default=10_000, ge=1, le=1_000_000)
    ingest_queue_max_rows: int = Field(default=200_000, ge=1)
    ingest_queue_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    ingest_max_payload_bytes: int = Field(default=256 * 1024, ge=64)
    ingest_unknown_metrics: Literal["reject", "accept"] = "reject"
    ingest_strict_sources: bool = False
    ingest_future_tolerance_s: int = Field(default=300, ge=0)
    ingest_client_id: str = Field(
        default_factory=default_ingest_client_id,
        pattern=r"^[A-Za-z0-9._-]{1,40}$",
        description="names the workers' persistent sessions ({id}-0, {id}-1, ...): keep it "
        "stable, and distinct for every `ioc ingest` instance on one broker",
    )
    ingest_subscription: SubscriptionMode = Field(
        default="partitioned",
        description="partitioned: plain subscriptions (one worker: the wildcard; several: "
        "sectors dealt out), safe on Mosquitto; shared: $share/{group}/... (MQTT 5)",
    )
    ingest_share_group: str = Field(default="ioc-ingest", pattern=r"^[A-Za-z0-9._-]{1,40}$")
    ingest_session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0, le=4_294_967_295)
    ingest_stats_interval_s: float = Field(default=60.0, gt=0)
    ingest_metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="worker i of `ioc ingest` serves its Prometheus counters at "
        "http://{IOC_HTTP_HOST}:{port + i}/metrics (0 or unset: off)",
    )

    # alerts (issue 4)
    alerts_enabled: bool = Field(
        default=True, description="evaluate alert rules inside each ingest batch"
    )
    alerts_reopen_window_s: float = Field(
        default=300.0,
        ge=0,
        description="a condition that fires again this soon after its alert resolved reopens "
        "that alert instead of opening a new one (0: never)",
    )
    alerts_lateness_s: float = Field(
        default=86_400.0,
        ge=0,
        le=30 * 86_400,
        description="a reading up to this much older than its series' newest (reading time) "
        "is judged again with the readings around it; older ones are stored only",
    )
    alerts_sweep_interval_s: float = Field(default=15.0, gt=0, le=3600)
    alerts_escalate_after_s: float = Field(
        default=900.0, gt=0, description="an unacknowledged critical alert escalates this often"
    )
    alerts_escalate_max_level: int = Field(default=3, ge=0, le=20)
    alerts_min_silence_s: float = Field(
        default=60.0,
        ge=0,
        le=86_400,
        description="never report a source silent sooner than this, whatever its interval",
    )
    alerts_webhooks: tuple[WebhookConfig, ...] = Field(
        default=(),
        description='JSON list: [{"name", "url", "secret", "min_severity", "sectors"}]',
    )
    alerts_mqtt: bool = Field(
        default=True, description="publish alert events on ioc/v1/alerts/{sector}/{severity}"
    )
    alerts_auto_resolve_s: float = Field(
        default=86_400.0,
        ge=0,
        description="an alert nothing confirmed for this long resolves itself (0: never)",
    )

    # HTTP API (issue 10)
    api_key_pepper: SecretStr = Field(
        default=SecretStr(DEVELOPMENT_PEPPER),
        description="secret key of the keyed hash API keys are stored under; set your own in "
        "production (changing it invalidates every key)",
    )
    api_key_cache_s: float = Field(
        default=10.0, ge=0, le=300, description="how long a checked API key is trusted in memory"
    )
    api_max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    api_rate_limit_per_min: int = Field(
        default=600, ge=1, description="requests a minute one agency key may make (per process)"
    )
    api_public_url: str = Field(
        default="", description="the API's public base URL, for links in the CAP Atom feed"
    )
    ws_queue_max: int = Field(
        default=10_000,
        ge=1,
        description="alert events one websocket client may have waiting; beyond, it is closed "
        "(4408) and resumes with its cursor",
    )
    ws_heartbeat_s: float = Field(default=15.0, gt=0, le=3600)
    ws_send_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="how long one websocket message may wait for a client that reads nothing "
        "(a full TCP window); beyond, the client is closed (4408) and resumes with its cursor",
    )
    ws_replay_max: int = Field(
        default=50_000,
        ge=1,
        description="alert events a websocket client resuming with `since` may be replayed; "
        "further behind, it gets a `reset` (reload the active alerts) instead",
    )
    cap_sender: str = Field(default="ioc@localhost", description="CAP <sender>")
    cap_sender_name: str = Field(default="", description="CAP <senderName>; empty: the profile's")

    # operations screen (issue 11)
    map_tile_url: str = Field(
        default=OSM_TILE_URL,
        max_length=2000,
        description="tile URL template of the screen's maps ({z}, {x}, {y}; {s} optional), "
        "absolute or a path on this server; empty: no tiles (markers and district names only, "
        "as on an isolated network)",
    )
    map_tile_attribution: str = Field(
        default=OSM_ATTRIBUTION,
        max_length=1000,
        description="credit shown on the maps for their tiles (HTML)",
    )

    @model_validator(mode="after")
    def _safe_in_production(self) -> Self:
        pepper = self.api_key_pepper.get_secret_value()
        if self.environment == "production" and pepper == DEVELOPMENT_PEPPER:
            raise ValueError("api_key_pepper: set IOC_API_KEY_PEPPER in production")
        if len(self.api_key_pepper.get_secret_value()) < 16:
            raise ValueError("api_key_pepper: use at least 16 characters")
        return self

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            scheme = urlsplit(value.get_secret_value()).scheme
            if scheme not in _PG_SCHEMES:
                raise ValueError(f"scheme must be postgresql://, got {scheme or 'none'!r}")
        return value

    @field_validator("map_tile_url")
    @classmethod
    def _check_map_tile_url(cls, value: str) -> str:
        value = value.strip()
        if value:
            parts = urlsplit(value)
            if not (parts.scheme in ("http", "https") and parts.netloc) and not (
                value.startswith("/") and not parts.netloc
            ):
                raise ValueError("an http(s):// URL or a /path on this server, or empty for none")
            missing = [p for p in ("{z}", "{x}", "{y}") if p not in value]
            if missing:
                raise ValueError(f"the template lacks {', '.join(missing)}")
        return value

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parts = urlsplit(value.get_secret_value())
            if parts.scheme not in _MQTT_SCHEMES:
                raise ValueError(f"scheme must be mqtt:// or mqtts://, got {parts.scheme!r}")
            if not parts.hostname:
                raise ValueError("a host is required, e.g. mqtt://127.0.0.1:1883")
            try:
                _ = parts.port
            except ValueError as exc:
                raise ValueError(f"bad port: {exc}") from None
        return value


def load_settings() -> Settings:
    """Read settings from the environment; a bad value raises ConfigError naming the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["loc"]:
                field = str(err["loc"][0])
            else:  # a check across fields names its field first: "field: message"
                field, _, msg = msg.partition(": ")
            problems.append(f"{ENV_PREFIX}{field.upper()}: {msg}")
        raise ConfigError("; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
