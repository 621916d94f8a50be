"""Migrations: `upgrade head` on an empty database matches the models exactly, and the chain
goes down to base and up again. On the configured backend (SQLite by default, PostgreSQL in the
second pass), in a database created for the test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import timedelta

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Boolean,
    Engine,
    LargeBinary,
    String,
    column,
    insert,
    inspect,
    select,
    table,
)

from authsvc import models  # noqa: F401 - registers every table
from authsvc.db import Base, UTCDateTime, make_engine, utcnow
from authsvc.schema import MIGRATIONS, alembic_config, schema_is_current, upgrade


@pytest.fixture
def scratch_engine(scratch_database_url: str) -> Iterator[Engine]:
    engine = make_engine(scratch_database_url)
    yield engine
    engine.dispose()


def differences(engine: Engine) -> list:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, Base.metadata))


def tables(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(inspect(conn).get_table_names()) - {"alembic_version"}


def test_the_chain_is_linear_with_one_head():
    script = ScriptDirectory(str(MIGRATIONS))

    revisions = list(script.walk_revisions())  # head first

    assert len(script.get_heads()) == 1
    assert revisions[-1].down_revision is None
    for newer, older in itertools.pairwise(revisions):
        assert newer.down_revision == older.revision  # no branches, no merges
    for revision in revisions:
        assert revision.doc, f"{revision.revision} has no docstring title"
        assert callable(revision.module.downgrade)


def test_upgrade_head_on_an_empty_database_matches_the_models(scratch_database_url, scratch_engine):
    assert tables(scratch_engine) == set()
    with scratch_engine.connect() as conn:
        assert not schema_is_current(conn)

    upgrade(scratch_database_url)

    assert differences(scratch_engine) == []
    assert tables(scratch_engine) == set(Base.metadata.tables)
    with scratch_engine.connect() as conn:
        assert schema_is_current(conn)


def test_downgrade_step_by_step_to_base_and_upgrade_again(scratch_database_url, scratch_engine):
    config = alembic_config(scratch_database_url)
    upgrade(scratch_database_url)
    revisions = [r.revision for r in ScriptDirectory(str(MIGRATIONS)).walk_revisions()]

    for _ in revisions:
        command.downgrade(config, "-1")

    assert tables(scratch_engine) == set()
    with scratch_engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_heads() == ()
    upgrade(scratch_database_url)
    assert differences(scratch_engine) == []
    command.downgrade(config, "base")
    assert tables(scratch_engine) == set()


def test_accounts_flagged_before_0009_keep_updated_at_as_their_flag_time(
    scratch_database_url, scratch_engine
):
    upgrade(scratch_database_url, "0008")
    users = table(
        "users",
        column("id", String),
        column("email", String),
        column("password_change_required", Boolean),
        column("created_at", UTCDateTime),
        column("updated_at", UTCDateTime),
        column("password_change_required_at", UTCDateTime),
    )
    at = utcnow()
    row = {"created_at": at, "updated_at": at}
    flag = "password_change_required"
    with scratch_engine.begin() as conn:
        conn.execute(
            insert(users),
            [
                {**row, "id": "flagged", "email": "a@example.com", flag: True},
                {**row, "id": "other", "email": "b@example.com", flag: False},
            ],
        )

    upgrade(scratch_database_url)

    with scratch_engine.connect() as conn:
        rows = conn.execute(select(users.c.id, users.c.password_change_required_at)).all()
    assert sorted(rows) == [("flagged", at), ("other", None)]


def test_signing_keys_from_before_0011_are_active_since_they_were_made(
    scratch_database_url, scratch_engine
):
    upgrade(scratch_database_url, "0010")
    keys = table(
        "signing_keys",
        column("kid", String),
        column("private_key_ciphertext", LargeBinary),
        column("public_jwk", String),
        column("created_at", UTCDateTime),
        column("retired_at", UTCDateTime),
        column("activates_at", UTCDateTime),
    )
    made = utcnow() - timedelta(days=40)
    row = {"private_key_ciphertext": b"x", "public_jwk": "{}", "created_at": made}
    with scratch_engine.begin() as conn:
        conn.execute(
            insert(keys),
            [
                {**row, "kid": "retired", "retired_at": made},
                {**row, "kid": "active", "retired_at": None},
            ],
        )

    upgrade(scratch_database_url)

    with scratch_engine.connect() as conn:
        rows = conn.execute(select(keys.c.kid, keys.c.activates_at, keys.c.retired_at)).all()
    assert sorted(rows) == [("active", made, None), ("retired", made, made)]
