"""What every route may need, built once in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import Depends, Request

from api.db import Database
from ingest.http import HttpIngest
from ioc.catalogue import Profile
from ioc.settings import Settings
from ioc.timeseries import Storage


@dataclass(frozen=True)
class Context:
    """The process's settings, profile, database pools, storage kind and HTTP ingest."""

    settings: Settings
    profile: Profile
    db: Database
    storage: Storage
    ingest: HttpIngest

    @property
    def zone(self) -> ZoneInfo:
        """The profile's time zone (day buckets and CSV times)."""
        return ZoneInfo(self.profile.timezone)


def _context(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


Ctx = Annotated[Context, Depends(_context)]
