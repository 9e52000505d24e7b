"""`GET /me`: what the caller's key is and may do, so a client (the operations screen) shows
only the actions the key holds."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.auth import PanelsReader
from api.permissions import MATRIX, Permission
from api.problems import PROBLEM_RESPONSES
from ioc.vocabulary import Role

router = APIRouter(tags=["overview"], responses=PROBLEM_RESPONSES)


class MeOut(BaseModel):
    """The key that made the request."""

    prefix: str = Field(examples=["a1b2c3d4"])
    name: str = Field(examples=["Trực ban ca 1"])
    role: Role = Field(examples=["operator"])
    sectors: list[str] | None = Field(
        description="The sectors an agency key is limited to; null: every sector",
        examples=[None],
    )
    permissions: list[Permission] = Field(
        description="What the key may do (README, Roles)",
        examples=[["panels.read", "alerts.read", "alerts.act"]],
    )


@router.get("/me", summary="The caller's key")
async def get_me(principal: PanelsReader) -> MeOut:
    """The key's prefix, name, role, sectors and permissions (never its secret). Any valid
    key may ask."""
    return MeOut(
        prefix=principal.prefix,
        name=principal.name,
        role=principal.role,
        sectors=None if principal.sectors is None else sorted(principal.sectors),
        permissions=sorted(MATRIX[principal.role]),
    )
