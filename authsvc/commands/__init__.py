"""CLI command groups, one module per capability; registered in authsvc.cli."""

from __future__ import annotations

import click
from sqlalchemy.exc import DBAPIError

from authsvc.app import Runtime
from authsvc.services import audit as audit_service
from authsvc.services import signing


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


def refuse_a_ring_that_cannot_sign(runtime: Runtime) -> None:
    """Stop serve or worker when no key of the ring opens the access-token signing key: a ring
    without the key that encrypted it (taken out before `authsvc keys rotate` moved it)
    answered every login and refresh 500 while /readyz said ready, and a worker parked for
    good every mail encrypted under that key. An unreachable database is left to what runs
    next to report."""
    try:
        with runtime.sessionmaker() as session:
            missing = signing.unreadable_key_id(session, runtime.deps.keyring)
    except DBAPIError:
        return
    if missing is not None:
        runtime.dispose()
        raise click.ClickException(
            f"AUTHSVC_ENCRYPTION_KEYS: the access-token signing key is encrypted under key "
            f"{missing!r}, which is not in the list; put it back after the first entry until "
            "`authsvc keys rotate` has moved everything to the first"
        )


def sign_audit_head(runtime: Runtime) -> None:
    """What a command that writes events does first, as serve and worker do: refuse a ring
    whose last entry did not sign the trail's head (its first event would chain an
    ``audit.head_invalid`` and sign the head with the wrong key, so that the trail failed
    ``audit verify`` for good and serve and worker with the right ring refused to start),
    then sign an unsigned head (``Runtime.sign_audit_head``)."""
    refuse_a_ring_without_its_mac_key(runtime)
    runtime.sign_audit_head()
