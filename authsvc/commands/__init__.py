"""CLI command groups, one module per capability; registered in authsvc.cli."""

from __future__ import annotations

import click
from sqlalchemy.exc import DBAPIError

from authsvc.app import Runtime
from authsvc.services import audit as audit_service


def refuse_a_ring_without_its_mac_key(runtime: Runtime) -> None:
    """Stop when the audit trail's head was signed with another MAC key (see
    audit.head_signed_by); an unreachable database is left to what runs next to report."""
    try:
        with runtime.sessionmaker() as session:
            signed = audit_service.head_signed_by(session, runtime.deps.keyring)
    except DBAPIError:
        return
    if not signed:
        runtime.dispose()
        raise click.ClickException(
            "AUTHSVC_ENCRYPTION_KEYS: the audit trail was signed with the MAC key of another "
            "last entry; recovery codes and the trail are keyed from the last entry, so put "
            "the key that was last back at the end of the list (if the ring is right, the "
            "trail's head was altered: see `authsvc audit verify`)"
        )


def sign_audit_head(runtime: Runtime) -> None:
    """What a command that writes events does first, as serve and worker do: refuse a ring
    whose last entry did not sign the trail's head (its first event would chain an
    ``audit.head_invalid`` and sign the head with the wrong key, so that the trail failed
    ``audit verify`` for good and serve and worker with the right ring refused to start),
    then sign an unsigned head (``Runtime.sign_audit_head``)."""
    refuse_a_ring_without_its_mac_key(runtime)
    runtime.sign_audit_head()
