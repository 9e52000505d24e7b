"""The `ioc` command: profiles, database commands, and one-line errors."""

from __future__ import annotations

import json

from tests.support.cli import run_ioc


def test_profiles_list_names_the_bundled_profiles() -> None:
    out = run_ioc("profiles", "list")
    assert out.returncode == 0, out.stderr
    for name in ("bac-lieu", "binh-phuoc", "mekong"):
        assert name in out.stdout


def test_profiles_show_json_has_the_documented_shape() -> None:
    out = run_ioc("profiles", "show", "mekong", "--json")
    assert out.returncode == 0, out.stderr
    profile = json.loads(out.stdout)
    assert {"name", "timezone", "sectors"} <= profile.keys()
    water = next(s for s in profile["sectors"] if s["id"] == "water")
    assert {"id", "name_vi", "name_en", "metrics"} <= water.keys()
    salinity = next(m for m in water["metrics"] if m["id"] == "salinity")
    assert {
        "id",
        "unit",
        "name_vi",
        "name_en",
        "min",
        "max",
        "interval_s",
        "thresholds",
    } <= salinity.keys()
    assert sorted(t["value"] for t in salinity["thresholds"]) == [1.0, 4.0]


def test_profiles_show_table_lists_sectors() -> None:
    out = run_ioc("profiles", "show", "bac-lieu")
    assert out.returncode == 0, out.stderr
    assert "Phản ánh hiện trường" in out.stdout


def test_db_commands_on_a_database(empty_db_url: str) -> None:
    env = {"IOC_DATABASE_URL": empty_db_url, "IOC_PROFILE": "binh-phuoc"}
    up = run_ioc("db", "upgrade", **env)
    assert up.returncode == 0, up.stderr
    assert "binh-phuoc" in up.stdout and "11 sector(s) written" in up.stdout
    again = run_ioc("db", "upgrade", **env)
    assert "0 sector(s) written" in again.stdout
    current = run_ioc("db", "current", **env)
    assert "up to date" in current.stdout
    down = run_ioc("db", "downgrade", "base", **env)
    assert down.returncode == 0, down.stderr
    assert "base" in run_ioc("db", "current", **env).stdout


def _one_line_error(out: object, *needles: str) -> None:
    proc = out  # CompletedProcess
    assert proc.returncode != 0  # type: ignore[attr-defined]
    lines = proc.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0]


def test_failures_exit_non_zero_with_one_line() -> None:
    _one_line_error(run_ioc("profiles", "show", "atlantis"), "unknown profile")
    _one_line_error(run_ioc("db", "current", IOC_DATABASE_URL="mysql://x@y/z"), "IOC_DATABASE_URL")
    _one_line_error(
        run_ioc("db", "current", IOC_DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere"),
        "cannot read revision",
    )
    _one_line_error(
        run_ioc(
            "serve",
            IOC_PROFILE="/nonexistent/profile.yaml",
            IOC_DATABASE_URL="postgresql://postgres@127.0.0.1:1/x",
        ),
        "/nonexistent/profile.yaml",
        "cannot read profile",
    )


def test_an_unknown_command_is_a_usage_error() -> None:
    out = run_ioc("nope")
    assert out.returncode == 2
    assert "No such command 'nope'" in out.stderr
    assert "Traceback" not in out.stderr


def test_ingest_refuses_a_layout_that_cannot_work_with_one_line() -> None:
    env = {"IOC_MQTT_URL": "mqtt://127.0.0.1:1", "IOC_PROFILE": "mekong"}
    _one_line_error(
        run_ioc("ingest", "--workers", "9", **env),
        "IOC_INGEST_SUBSCRIPTION=partitioned",
        "8 sectors",
    )
    _one_line_error(
        run_ioc("ingest", IOC_INGEST_SUBSCRIPTION="queue", **env), "IOC_INGEST_SUBSCRIPTION"
    )
    _one_line_error(run_ioc("ingest", "--workers", "2", IOC_MQTT_PROTOCOL="3.1.1", **env), "3.1.1")
    _one_line_error(run_ioc("ingest", "retire", "ioc-ingest-x-1"), "IOC_MQTT_URL is required")
