"""Alembic glue: upgrade to head, and whether a database is at head."""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, make_url, text

from authsvc.db import make_engine

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


# The PostgreSQL advisory lock that an upgrade holds while it runs ("authsvc" in ASCII), and
# how often one that waits for it tries again.
UPGRADE_LOCK = 0x61757468737663
UPGRADE_LOCK_POLL_SECONDS = 0.5


def upgrade(url: str, revision: str = "head") -> None:
    """Alembic upgrade to ``revision``. On PostgreSQL, one at a time per database: upgrades
    started together (an init container per instance) ran the same migrations at once, and all
    but one failed half-way (a duplicate key in pg_type), or in a migration that commits as it
    goes (0007's concurrent index) got in each other's way. A second upgrade now waits for the
    first, then finds the database at head.

    The lock is held by a connection of its own that stays outside any transaction, and a
    waiting upgrade asks for it again every half second instead of waiting inside a statement:
    CREATE INDEX CONCURRENTLY waits for every transaction under way, a waiting statement's
    too, which would close a circle with the lock."""
    config = alembic_config(url)
    if make_url(url).get_backend_name() != "postgresql":
        command.upgrade(config, revision)
        return
    engine = make_engine(url, isolation_level="AUTOCOMMIT", pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            take = text("SELECT pg_try_advisory_lock(:key)")
            while not conn.execute(take, {"key": UPGRADE_LOCK}).scalar():
                time.sleep(UPGRADE_LOCK_POLL_SECONDS)
            try:
                command.upgrade(config, revision)
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": UPGRADE_LOCK})
    finally:
        engine.dispose()


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
