"""Alembic migrations for the ioc schema."""
