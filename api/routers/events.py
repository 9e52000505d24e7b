"""Routes of the events area (issue 10)."""

from __future__ import annotations

from fastapi import APIRouter

from api.problems import PROBLEM_RESPONSES

router = APIRouter(tags=["events"], responses=PROBLEM_RESPONSES)
