"""Re-encrypting stored ciphertexts under the key ring's primary key (``authsvc keys rotate``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.orm import Session as DbSession

from authsvc.crypto.keyring import Keyring
from authsvc.db import rowcount


def reencrypt_rows(
    session: DbSession,
    keyring: Keyring,
    *,
    key: InstrumentedAttribute[Any],
    column: InstrumentedAttribute[bytes],
    rows: Iterable[tuple[Any, bytes]],
    associated_data: Callable[[Any], bytes],
) -> int:
    """Re-encrypt each (key, ciphertext) of ``rows`` that is not under the primary key, in
    ``column`` of the row whose ``key`` holds it; return how many were written. Each write is
    conditional on the row still holding what was read: a row deleted or rewritten meanwhile
    (a user removing a factor, a message delivered) is left as it is, not an error that undoes
    the batch."""
    count = 0
    for row_id, blob in rows:
        if not keyring.needs_reencryption(blob):
            continue
        fresh = keyring.reencrypt(blob, associated_data=associated_data(row_id))
        written = session.execute(
            update(column.class_)
            .where(key == row_id, column == blob)
            .values({column.key: fresh})
            .execution_options(synchronize_session=False)
        )
        count += rowcount(written)
    return count
