"""`authsvc keys ...`: the encryption key ring (AUTHSVC_ENCRYPTION_KEYS), and the
access-token signing key (``rotate-signing``).

Rotation: put a new key first in AUTHSVC_ENCRYPTION_KEYS (``authsvc keys generate`` prints
one), keep the old ones after it, restart, then run ``authsvc keys rotate``. Every TOTP secret,
signing key and unsent outbox payload is re-encrypted under the first key; a TOTP factor that
no key opens is named and left as it is, and the command fails once the rest is moved. Keyed hashes
(recovery codes, audit email digests) use a key derived from the LAST entry, so keep that
entry in the list for as long as those hashes must verify.
"""

from __future__ import annotations

from collections.abc import Callable

import click
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from authsvc.app import Runtime, build_runtime
from authsvc.commands import interrupted_between_steps, sign_audit_head
from authsvc.crypto.keyring import DecryptionFailed, Keyring, generate_key_spec
from authsvc.db import utcnow
from authsvc.services import audit, outbox, signing, totp
from authsvc.services.context import SYSTEM
from authsvc.settings import KEY_ID, Settings

BATCH = 500


@click.group("keys")
def keys() -> None:
    """Encryption key ring and token signing key.

    Generate and rotate the encryption key ring (AUTHSVC_ENCRYPTION_KEYS); rotate the
    access-token signing key."""


@keys.command("generate")
@click.option("--kid", required=True, help="Key id, e.g. the date: 2026-11.")
def generate(kid: str) -> None:
    """Print a new key entry ("kid:base64url") for AUTHSVC_ENCRYPTION_KEYS."""
    if not KEY_ID.fullmatch(kid):  # the rule AUTHSVC_ENCRYPTION_KEYS is read with
        raise click.ClickException("--kid must be 1 to 32 ASCII letters, digits, '_' or '-'")
    click.echo(generate_key_spec(kid))


@keys.command("rotate")
def rotate() -> None:
    """Re-encrypt every TOTP secret, signing key and unsent outbox payload under the first
    key of AUTHSVC_ENCRYPTION_KEYS."""
    settings = Settings.from_env()
    if not settings.encryption_keys:
        raise click.ClickException("AUTHSVC_ENCRYPTION_KEYS is not set; nothing to rotate to")
    runtime = build_runtime(settings)
    keyring = runtime.deps.keyring
    try:
        with interrupted_between_steps() as checkpoint:
            counts, totp_left = _rotate_all(runtime, keyring, checkpoint)
    except DecryptionFailed as exc:
        raise click.ClickException(
            f"a ciphertext opens with none of the configured keys ({exc}); add the old key "
            "back to AUTHSVC_ENCRYPTION_KEYS, after the new one"
        ) from None
    except KeyboardInterrupt:
        # Each batch commits on its own: what is done stays done, and a run again skips it.
        raise click.ClickException(
            "interrupted: what was re-encrypted stays so, the rest is under the keys it was "
            "under; run `authsvc keys rotate` again to finish"
        ) from None
    finally:
        runtime.dispose()
    summary = " ".join(f"{name}={count}" for name, count in counts.items())
    click.echo(f"re-encrypted under key {keyring.primary_kid!r}: {summary}")
    if totp_left:
        raise click.ClickException(_totp_left(totp_left))


@keys.command("rotate-signing")
@click.option(
    "--discard-next",
    is_flag=True,
    help="Also replace the published next key (when the stored keys may have leaked): "
    "a brand-new key signs at once, before apps' copies of the JWKS hold it.",
)
def rotate_signing(discard_next: bool) -> None:
    """Retire the access-token signing key and promote the next one, published in the JWKS
    since the last rotation; a new next key is published. Prints the kid that now signs.

    Retired keys stay published, so tokens signed before keep verifying until they expire;
    running processes sign with the new key within a minute."""
    runtime = build_runtime(Settings.from_env())
    try:
        sign_audit_head(runtime)
        with runtime.sessionmaker.begin() as session:
            rotation = signing.rotate(
                session, runtime.deps.keyring, now=utcnow(), discard_next=discard_next
            )
    finally:
        runtime.dispose()
    published = rotation.published_for
    if published is None or published < signing.JWKS_MAX_AGE:
        since = (
            "was not published before"
            if published is None
            else (f"was published only {int(published.total_seconds())} s ago")
        )
        click.echo(
            f"warning: key {rotation.kid!r} {since}: an app holding a copy of the JWKS "
            f"fetched earlier refuses its tokens until it fetches again (copies live at most "
            f"{int(signing.JWKS_MAX_AGE.total_seconds())} s)",
            err=True,
        )
    click.echo(
        f"next key {rotation.next_kid!r} is published, and signs after the next rotation", err=True
    )
    click.echo(rotation.kid)


def _rotate_all(
    runtime: Runtime, keyring: Keyring, checkpoint: Callable[[], None]
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Move everything, audit the rotation; (counts by table, TOTP factors left). Each batch
    commits on its own, and an interrupt stops the work at the ``checkpoint`` after one."""
    factory = runtime.sessionmaker
    sign_audit_head(runtime)
    totp_factors, totp_left = _rotate_totp(factory, keyring, checkpoint)
    signing_keys = _in_one(factory, lambda s: signing.reencrypt(s, keyring))
    checkpoint()
    counts = {
        "totp_factors": totp_factors,
        "signing_keys": signing_keys,
        "outbox_messages": _rotate_outbox(factory, keyring, checkpoint),
    }
    details: dict[str, object] = {"kid": keyring.primary_kid, **counts}
    if totp_left:
        details["totp_factors_left"] = len(totp_left)
    with factory.begin() as session:
        audit.record(
            session,
            type="encryption_key.rotated",
            outcome="success" if not totp_left else "incomplete",
            now=utcnow(),
            client=SYSTEM,
            details=details,
        )
    return counts, totp_left


def _in_one(factory: sessionmaker[DbSession], work: Callable[[DbSession], int]) -> int:
    with factory.begin() as session:
        return work(session)


def _rotate_totp(
    factory: sessionmaker[DbSession], keyring: Keyring, checkpoint: Callable[[], None]
) -> tuple[int, list[tuple[str, str]]]:
    """(factors re-encrypted, (id, key id) of those that no key opens, left as they are)."""
    total, after = 0, ""
    left: list[tuple[str, str]] = []
    while True:
        with factory.begin() as session:
            count, last, unreadable = totp.reencrypt_batch(
                session, keyring, after_id=after, limit=BATCH
            )
        total += count
        left += unreadable
        if last is None:
            return total, left
        after = last
        checkpoint()


def _totp_left(left: list[tuple[str, str]]) -> str:
    """What the command fails with when factors were left under keys the ring lacks."""
    kids = sorted({kid for _, kid in left})
    shown = ", ".join(factor_id for factor_id, _ in left[:20]) + (", ..." if len(left) > 20 else "")
    what = (
        "TOTP factor that no key opens was left as it is"
        if len(left) == 1
        else "TOTP factors that no key opens were left as they are"
    )
    keys = ", ".join(repr(kid) for kid in kids)
    return (
        f"{len(left)} {what} (id {shown}, under key{'s' if len(kids) > 1 else ''} {keys}): "
        f"put {'that key' if len(kids) == 1 else 'those keys'} back after the first entry and "
        "run `authsvc keys rotate` again"
    )


def _rotate_outbox(
    factory: sessionmaker[DbSession], keyring: Keyring, checkpoint: Callable[[], None]
) -> int:
    """Messages not yet delivered (pending or parked as failed); delivered ones are kept as
    they are, and are never read again. Parked messages that no key opens are named on
    stderr and left as they are."""
    total, after = 0, 0
    left: list[int] = []
    while True:
        with factory.begin() as session:
            count, last, unreadable = outbox.reencrypt_pending_batch(
                session, keyring, after_id=after, batch=BATCH
            )
        total += count
        left += unreadable
        if last is None:
            break
        after = last
        checkpoint()
    if left:
        shown = ", ".join(str(i) for i in left[:20]) + (", ..." if len(left) > 20 else "")
        what = (
            "message that no key opens was left as it is"
            if len(left) == 1
            else "messages that no key opens were left as they are"
        )
        click.echo(f"{len(left)} parked {what} (id {shown})", err=True)
    return total
