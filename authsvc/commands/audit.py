"""`authsvc audit ...`: check the trail's hash chain, prune old events."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import click

from authsvc.app import build_runtime
from authsvc.commands import MAX_ROW_ID, sign_audit_head
from authsvc.db import utcnow
from authsvc.errors import AuthsvcError
from authsvc.services import audit as audit_service
from authsvc.settings import Settings
from authsvc.times import parse_time

BATCH = 5000  # events deleted per transaction by `audit prune`
MAX_DAYS = 36_500  # `audit prune --older-than`: a century back is still a date


@click.group("audit")
def audit() -> None:
    """The security event trail."""


@audit.command("verify")
@click.option(
    "--known",
    metavar="EVENT_ID:HASH",
    help="Where an earlier run found the trail ending (it prints it): fail if that event is "
    "gone or differs, as when the trail was cut back to an earlier head.",
)
def verify(known: str | None) -> None:
    """Check every event against the hash chain; exit 1 naming the first broken event."""
    expected = _known(known) if known is not None else None
    runtime = build_runtime(Settings.from_env())
    try:
        with runtime.sessionmaker.begin() as session:
            result = audit_service.verify(session, keyring=runtime.deps.keyring, known=expected)
    finally:
        runtime.dispose()
    if not result.ok:
        where = f"event {result.broken_id}" if result.broken_id is not None else "chain head"
        raise click.ClickException(
            f"audit trail broken at {where}: {result.reason} ({result.checked} events verified "
            "before it)"
        )
    end = ""
    if result.last is not None:
        end = f"; to find it cut back later, verify with --known {result.last[0]}:{result.last[1]}"
    click.echo(f"audit trail intact: {result.checked} events verified{end}")


def _known(value: str) -> tuple[int, str]:
    event_id, _, digest = value.partition(":")
    if (
        not re.fullmatch(r"[0-9]{1,19}", event_id)
        or int(event_id) > MAX_ROW_ID
        or not re.fullmatch(r"[0-9a-f]{64}", digest)
    ):
        raise click.BadParameter("EVENT_ID:HASH as a verification printed it", param_hint="--known")
    return int(event_id), digest


def _cutoff(before: str | None, older_than: str | None, retention: timedelta) -> datetime | None:
    if before is not None and older_than is not None:
        raise click.UsageError("give --before or --older-than, not both")
    if before is not None:
        try:
            cutoff = parse_time(before, field="--before")
        except AuthsvcError as exc:
            raise click.BadParameter(exc.detail, param_hint="--before") from None
        # As --older-than: at least the last day stays (a time in the future, a typo for the
        # year, deleted the whole trail).
        if cutoff > utcnow() - timedelta(days=1):
            raise click.BadParameter("a time at least one day ago", param_hint="--before")
        return cutoff
    if older_than is not None:
        # ASCII digits only (str.isdigit takes "²"), and a number of days a date can go back.
        days = older_than.removesuffix("d")
        if not re.fullmatch(r"[0-9]{1,6}", days) or not 1 <= int(days) <= MAX_DAYS:
            raise click.BadParameter(
                f"a number of days from 1 to {MAX_DAYS} such as 400d", param_hint="--older-than"
            )
        return utcnow() - timedelta(days=int(days))
    if retention <= timedelta(0):
        return None
    return utcnow() - retention


@audit.command("prune")
@click.option("--before", help="Delete events before this RFC 3339 time.")
@click.option(
    "--older-than",
    help="Delete events older than N days (e.g. 400d). Default: AUTHSVC_AUDIT_RETENTION.",
)
def prune(before: str | None, older_than: str | None) -> None:
    """Delete old events; what remains still verifies (the chain keeps an anchor)."""
    settings = Settings.from_env()
    cutoff = _cutoff(before, older_than, settings.audit_retention)
    if cutoff is None:
        click.echo(
            "AUTHSVC_AUDIT_RETENTION is 0: events are kept forever; nothing pruned", err=True
        )
        return
    pruned = 0
    runtime = build_runtime(settings)
    sign_audit_head(runtime)
    while True:  # one short transaction per batch: writers wait for the chain lock meanwhile
        with runtime.sessionmaker.begin() as session:
            result = audit_service.prune(session, before=cutoff, now=utcnow(), batch=BATCH)
        if result.broken is not None:
            runtime.dispose()
            raise click.ClickException(
                f"{'nothing' if not pruned else f'{pruned} events'} pruned: audit trail broken "
                f"at event {result.broken.broken_id}: {result.broken.reason} (see `authsvc "
                "audit verify`)"
            )
        pruned += result.pruned
        if result.pruned < BATCH:
            break
    runtime.dispose()
    click.echo(f"pruned {pruned} events before {cutoff.isoformat()}")
