"""Process settings, read from `IOC_*` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import platformdirs
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ioc.errors import ConfigError

ENV_PREFIX = "IOC_"
_PG_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg", "postgresql+asyncpg")
_MQTT_SCHEMES = ("mqtt", "mqtts", "tcp")


def default_data_dir() -> Path:
    """Per-user data directory; a system path when running as root (postgres refuses root)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/ioc")
    return Path(platformdirs.user_data_dir("ioc", appauthor=False))


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

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            scheme = urlsplit(value.get_secret_value()).scheme
            if scheme not in _PG_SCHEMES:
                raise ValueError(f"scheme must be postgresql://, got {scheme or 'none'!r}")
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
            field = str(err["loc"][0]) if err["loc"] else "?"
            problems.append(f"{ENV_PREFIX}{field.upper()}: {err['msg']}")
        raise ConfigError("; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
