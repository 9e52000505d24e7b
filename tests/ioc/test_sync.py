"""The profile sync writes sectors once, changes nothing when run again, and survives a switch."""

from __future__ import annotations

import psycopg
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from ioc.catalogue import load_profile
from ioc.db import libpq_url, sqlalchemy_url
from ioc.sync import SyncReport, sync_profile


def _sync(url: str, name: str) -> SyncReport:
    engine = create_engine(sqlalchemy_url(url), poolclass=NullPool)
    with engine.begin() as conn:
        report = sync_profile(conn, load_profile(name))
    engine.dispose()
    return report


def _active(url: str) -> list[tuple[str, int]]:
    with psycopg.connect(libpq_url(url)) as conn:
        return conn.execute(
            "SELECT id, display_order FROM sector WHERE active ORDER BY display_order"
        ).fetchall()


def test_sync_is_idempotent(db_url: str) -> None:
    first = _sync(db_url, "bac-lieu")
    assert first.sectors_written == 8
    again = _sync(db_url, "bac-lieu")
    assert (again.sectors_written, again.sectors_deactivated) == (0, 0)
    assert [s for s, _ in _active(db_url)][:3] == ["citizen_reports", "security", "traffic"]


def test_switching_profile_keeps_old_sectors_but_inactive(db_url: str) -> None:
    _sync(db_url, "bac-lieu")
    with psycopg.connect(libpq_url(db_url)) as conn:
        conn.execute("INSERT INTO source (id, sector_id) VALUES ('hotline-pbx-1', 'hotline')")
    report = _sync(db_url, "binh-phuoc")
    assert report.sectors_deactivated == 1  # hotline is not a Bình Phước sector
    active = {s for s, _ in _active(db_url)}
    assert len(active) == 11 and "hotline" not in active
    with psycopg.connect(libpq_url(db_url)) as conn:
        row = conn.execute("SELECT active FROM sector WHERE id = 'hotline'").fetchone()
        metrics = conn.execute("SELECT metrics FROM sector WHERE id = 'socio_economic'").fetchone()
    assert row == (False,)
    assert metrics is not None
    assert "cpi_yoy_pct" in {m["id"] for m in metrics[0]}
