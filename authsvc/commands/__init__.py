"""CLI command groups, one module per capability; registered in authsvc.cli."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import click
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from authsvc.app import Runtime
from authsvc.crypto.keyring import Keyring
from authsvc.services import audit as audit_service
from authsvc.services import signing, totp

# The largest id of an audit event or an outbox message (64-bit integers): one past it names
# none, and given to the database, fails there as a database error.
MAX_ROW_ID = 2**63 - 1


def refuse_a_ring_without_its_mac_key(runtime: Runtime) -> None:
    """Stop when the audit trail's head was signed with another MAC key (see
    audit.head_signed_by)."""
    _refuse_unless(
        runtime,
        lambda session, keyring: (
            None
            if audit_service.head_signed_by(session, keyring)
            else "the audit trail was signed with the MAC key of another last entry; recovery "
            "codes and the trail are keyed from the last entry, so put the key that was last back "
            "at the end of the list (if the ring is right, the trail's head was altered: see "
            "`authsvc audit verify`)"
        ),
    )


def refuse_a_ring_that_cannot_sign(runtime: Runtime) -> None:
    """Stop serve or worker when no key of the ring opens the access-token signing key: a ring
    without the key that encrypted it (taken out before `authsvc keys rotate` moved it)
    answered every login and refresh 500 while /readyz said ready, and a worker parked for
    good every mail encrypted under that key."""

    def missing_key(session: Session, keyring: Keyring) -> str | None:
        missing = signing.unreadable_key_id(session, keyring)
        if missing is None:
            return None
        return (
            f"the access-token signing key is encrypted under key {missing!r}, which is not in "
            "the list; put it back after the first entry until `authsvc keys rotate` has moved "
            "everything to the first"
        )

    _refuse_unless(runtime, missing_key)


def warn_of_factors_no_key_opens(runtime: Runtime) -> None:
    """Say on stderr, at the start of serve or worker, when TOTP factors are encrypted under
    keys the ring lacks: a ring without the key of some (taken out before `authsvc keys
    rotate` moved them) started without a word, and each of their owners was refused every
    code as a wrong one. Not a refusal to start: a key lost for good would keep the service
    down for the sake of a few factors."""
    try:
        with runtime.sessionmaker() as session:
            count, kids = totp.under_keys_not_in(session, runtime.deps.keyring)
    except DBAPIError:
        return
    if not count:
        return
    factors = "TOTP factor is" if count == 1 else "TOTP factors are"
    named = ", ".join(repr(kid) for kid in kids)
    click.echo(
        f"warning: AUTHSVC_ENCRYPTION_KEYS: {count} {factors} encrypted under keys not in the "
        f"list ({named}): they refuse every code until those keys are back after the first "
        "entry (`authsvc keys rotate` then moves them)",
        err=True,
    )


def _refuse_unless(runtime: Runtime, problem: Callable[[Session, Keyring], str | None]) -> None:
    """Stop with AUTHSVC_ENCRYPTION_KEYS and what ``problem`` finds wrong with the ring; an
    unreachable database is left to what runs next to report."""
    try:
        with runtime.sessionmaker() as session:
            found = problem(session, runtime.deps.keyring)
    except DBAPIError:
        return
    if found is not None:
        runtime.dispose()
        raise click.ClickException(f"AUTHSVC_ENCRYPTION_KEYS: {found}")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a job runner's timeout, ``systemctl stop``) ends what runs inside as Ctrl-C
    does, so that the files it was writing are removed on the way out, not left behind."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def interrupted_between_steps() -> Iterator[Callable[[], None]]:
    """Ctrl-C or SIGTERM noted, and acted on where the work can stop cleanly: the context gives
    a ``checkpoint()`` to call between steps (each committed on its own), which raises
    KeyboardInterrupt once a signal came. A KeyboardInterrupt raised wherever the signal
    landed could land inside SQLAlchemy's connection pool, which logged it with a traceback
    before the command's own message. A second signal interrupts at once (a step that hangs)."""
    received: list[int] = []

    def checkpoint() -> None:
        if received:
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield checkpoint  # signal handlers belong to the main thread
        return

    def note(signum: int, _frame: FrameType | None) -> None:
        checkpoint()  # the second one
        received.append(signum)

    previous = {signum: signal.signal(signum, note) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield checkpoint
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def sign_audit_head(runtime: Runtime) -> None:
    """What a command that writes events does first, as serve and worker do: refuse a ring
    whose last entry did not sign the trail's head (its first event would chain an
    ``audit.head_invalid`` and sign the head with the wrong key, so that the trail failed
    ``audit verify`` for good and serve and worker with the right ring refused to start),
    then sign an unsigned head (``Runtime.sign_audit_head``)."""
    refuse_a_ring_without_its_mac_key(runtime)
    runtime.sign_audit_head()
