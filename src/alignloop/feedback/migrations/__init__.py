"""Alembic migrations of the feedback service's schema (a package, so that installs ship them)."""
