"""Alembic glue: upgrade to head, and whether a database is at head."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


@functools.cache
def head_revisions() -> frozenset[str]:
    """The migrations' heads, read from the files once per process (they ship with it)."""
    return frozenset(ScriptDirectory(str(MIGRATIONS)).get_heads())


def schema_is_current(conn: Connection) -> bool:
    # Alembic says at INFO which dialect it found, each time: a check is not a migration.
    migration_log = logging.getLogger("alembic.runtime.migration")
    level = migration_log.level
    migration_log.setLevel(max(level, logging.WARNING))
    try:
        return set(MigrationContext.configure(conn).get_current_heads()) == head_revisions()
    finally:
        migration_log.setLevel(level)
