"""`authsvc outbox ...`: the messages the worker parked as failed, to look at and send again."""

from __future__ import annotations

import click

from authsvc.app import build_runtime
from authsvc.commands import MAX_ROW_ID, sign_audit_head
from authsvc.db import utcnow
from authsvc.services import audit
from authsvc.services import outbox as outbox_service
from authsvc.services.context import SYSTEM
from authsvc.settings import Settings

AUDITED_IDS = 100  # ids named in the audit event of a retry; more are counted


@click.group("outbox")
def outbox() -> None:
    """Background work: mail, webhooks and jobs that failed for good."""


@outbox.command("failed")
@click.option(
    "--limit",
    default=100,
    show_default=True,
    type=click.IntRange(min=1, max=MAX_ROW_ID, clamp=True),
    help="At most this many, oldest first.",
)
def failed(limit: int) -> None:
    """Messages parked as failed, one per line: id, kind, parked at, attempts, last error
    (addresses masked; never the message itself)."""
    runtime = build_runtime(Settings.from_env())
    try:
        with runtime.sessionmaker() as session:
            messages, total = outbox_service.parked(session, limit=limit)
    finally:
        runtime.dispose()
    for message in messages:
        parked_at = message.failed_at.isoformat(timespec="seconds")
        fields = (str(message.id), message.kind, parked_at, str(message.attempts))
        click.echo("\t".join((*fields, message.last_error)))
    if total > len(messages):
        click.echo(f"... and {total - len(messages)} more (--limit)", err=True)
    elif not total:
        click.echo("no parked messages", err=True)


@outbox.command("retry")
@click.argument("ids", nargs=-1, type=click.IntRange(min=1, max=MAX_ROW_ID), metavar="[ID]...")
@click.option("--all", "every", is_flag=True, help="Every parked message.")
def retry(ids: tuple[int, ...], every: bool) -> None:
    """Put parked messages back in the queue, their attempts reset: the worker sends them at
    its next poll. An ID that is not a parked message stops the command before any is put
    back."""
    if bool(ids) == every:
        raise click.UsageError("give the IDs of parked messages, or --all")
    runtime = build_runtime(Settings.from_env())
    try:
        sign_audit_head(runtime)
        with runtime.sessionmaker.begin() as session:
            now = utcnow()
            wanted = sorted(set(ids)) if ids else None
            retried = outbox_service.unpark(session, ids=wanted, now=now)
            missing = sorted(set(wanted or ()) - set(retried))
            if missing:  # raised inside the transaction: it is rolled back
                named = ", ".join(str(i) for i in missing)
                raise click.ClickException(
                    f"not parked as failed (sent, still queued, swept or unknown): {named}; "
                    "none was put back (see `authsvc outbox failed`)"
                )
            if retried:
                audit.record(
                    session,
                    type="outbox.retried",
                    outcome="success",
                    now=now,
                    client=SYSTEM,
                    details={"count": len(retried), "ids": retried[:AUDITED_IDS]},
                )
    finally:
        runtime.dispose()
    if not retried:
        click.echo("no parked messages", err=True)
        return
    what = "message" if len(retried) == 1 else "messages"
    click.echo(f"{len(retried)} parked {what} put back in the queue", err=True)
