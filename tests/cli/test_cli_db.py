"""`authsvc db upgrade`: upgrades started together (an init container per instance) run one at
a time, and every one of them ends at head."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import make_url, text

from authsvc.db import make_engine
from authsvc.schema import schema_is_current

AUTHSVC = Path(sys.executable).parent / "authsvc"


@pytest.fixture
def empty_schema_url(database_url: str) -> Iterator[str]:
    """The test database seen through a new, empty schema (its search_path): a database
    nothing was migrated in yet, dropped afterwards."""
    if make_url(database_url).get_backend_name() != "postgresql":
        pytest.skip("upgrades that overlap: PostgreSQL (SQLite takes its write lock at BEGIN)")
    schema = f"upgrade_{secrets.token_hex(4)}"
    admin = make_engine(database_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(database_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_upgrades_started_together_all_end_at_head(empty_schema_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
    env |= {"AUTHSVC_DATABASE_URL": empty_schema_url, "AUTHSVC_VAR_DIR": str(tmp_path)}

    upgrades = [
        subprocess.Popen(
            [str(AUTHSVC), "db", "upgrade"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [(process.communicate(timeout=120)[1], process.returncode) for process in upgrades]

    assert [code for _, code in results] == [0] * 4, [err[-300:] for err, _ in results]
    assert all("database is at head" in err for err, _ in results)
    engine = make_engine(empty_schema_url)
    with engine.connect() as conn:
        assert schema_is_current(conn)
    engine.dispose()
