"""Settings come from IOC_* variables; a bad value names the variable."""

from __future__ import annotations

import pytest

from ioc.errors import ConfigError
from ioc.settings import load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("IOC_DATABASE_URL", "IOC_MQTT_URL", "IOC_PROFILE", "IOC_RETENTION_DAYS"):
        monkeypatch.delenv(var, raising=False)
    settings = load_settings()
    assert settings.database_url is None
    assert settings.profile == "bac-lieu"
    assert settings.retention_days == 365


def test_plain_urls_are_accepted_and_kept_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOC_DATABASE_URL", "postgresql://ioc:s3cret@db:5432/ioc")
    monkeypatch.setenv("IOC_MQTT_URL", "mqtt://user:pw@broker:1883")
    settings = load_settings()
    assert settings.database_url is not None and settings.mqtt_url is not None
    assert "s3cret" not in repr(settings)
    assert settings.mqtt_url.get_secret_value() == "mqtt://user:pw@broker:1883"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("IOC_DATABASE_URL", "mysql://x@y/z"),
        ("IOC_MQTT_URL", "http://broker"),
        ("IOC_MQTT_URL", "mqtt://broker:notaport"),
        ("IOC_RETENTION_DAYS", "0"),
        ("IOC_RETENTION_DAYS", "a year"),
        ("IOC_TIMESCALE", "maybe"),
    ],
)
def test_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=var):
        load_settings()
