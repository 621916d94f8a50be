"""`authsvc breach-response ...`: start, watch, cancel and report forced-reset campaigns."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import IO, Any, TypeVar

import click
from tqdm import tqdm

from authsvc.app import Runtime, build_runtime
from authsvc.commands import sign_audit_head, sigterm_as_interrupt
from authsvc.db import utcnow
from authsvc.errors import AuthsvcError
from authsvc.services import breach
from authsvc.services import breach_batches as batches
from authsvc.services import breach_lists as lists
from authsvc.services.breach import CampaignRequest, CampaignView, Created, Creator
from authsvc.services.breach_lists import InputReport, TargetList
from authsvc.services.context import SYSTEM
from authsvc.settings import Settings
from authsvc.times import parse_time

T = TypeVar("T")
POLL_SECONDS = 1.0
REPORT_PAGE = 5000


@contextmanager
def _opened() -> Iterator[Runtime]:
    """The app-wide objects for one command; the database pool is closed afterwards."""
    runtime = build_runtime(Settings.from_env())
    try:
        sign_audit_head(runtime)
        yield runtime
    finally:
        runtime.dispose()


def _in_transaction(runtime: Runtime, work: Callable[[Any], T]) -> T:
    """Run ``work(session)`` in one transaction; domain and database errors become one line."""
    try:
        with runtime.sessionmaker.begin() as session:
            return work(session)
    except AuthsvcError as exc:
        raise click.ClickException(f"{exc.code}: {exc.detail}") from None


def _plain(value: Any) -> Any:
    """Dataclasses and times as JSON values (times in RFC 3339 UTC)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _shown(value: Any) -> Any:
    """A value as a line of text output shows it: a string's line breaks and other control
    characters escaped (\\n, \\x1b), so that a reason over several lines neither forges a
    line of `status` nor breaks `list`'s one line per campaign, and an escape sequence in it
    never reaches the terminal."""
    if not isinstance(value, str) or value.isprintable():
        return value
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)


def _checked_operator(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """--operator as an admin key's name: kept whole in the campaign and the trail, and one
    line in `status`."""
    name = value.strip()
    if not name or len(name) > 128 or not name.isprintable():
        raise click.BadParameter("1 to 128 characters, without tabs or line breaks")
    return name


@click.group("breach-response")
def breach_response() -> None:
    """Forced password resets for many accounts."""


def _read_list(kind: str, source: IO[bytes], csv_format: bool) -> TargetList:
    return lists.parse_target_list(kind, source.read().splitlines(), csv_format=csv_format)


def _selection(
    every: bool,
    emails: IO[bytes] | None,
    user_ids: IO[bytes] | None,
    created_before: str | None,
    password_set_before: str | None,
    csv_format: bool | None,
) -> tuple[str, Any, TargetList | None]:
    given = [
        name
        for name, value in (
            ("--all", every),
            ("--emails-file", emails),
            ("--user-ids-file", user_ids),
            ("--created-before", created_before),
            ("--password-set-before", password_set_before),
        )
        if value
    ]
    if len(given) != 1:
        raise click.UsageError(
            "choose exactly one of --all, --emails-file, --user-ids-file, "
            "--created-before, --password-set-before"
        )
    for kind, source in (("emails", emails), ("user_ids", user_ids)):
        if source is not None:
            as_csv = csv_format if csv_format is not None else source.name.endswith(".csv")
            return kind, None, _read_list(kind, source, as_csv)
    for selector, raw in (
        ("created_before", created_before),
        ("password_set_before", password_set_before),
    ):
        if raw is not None:
            try:
                return selector, parse_time(raw, field=selector, dates=True), None
            except AuthsvcError as exc:
                hint = "--" + selector.replace("_", "-")
                raise click.BadParameter(exc.detail, param_hint=hint) from None
    return "all", None, None


@breach_response.command("create")
@click.option("--reason", required=True, help="Why (kept in the audit trail and reports).")
@click.option("--mode", required=True, type=click.Choice(breach.MODES))
@click.option("--all", "every", is_flag=True, help="Every account that exists now.")
@click.option(
    "--emails-file",
    type=click.File("rb"),
    help="Emails, one per line or CSV ('-' reads standard input).",
)
@click.option("--user-ids-file", type=click.File("rb"), help="User ids, one per line or CSV.")
@click.option("--created-before", help="Accounts created before this time or date.")
@click.option("--password-set-before", help="Accounts whose password is older than this.")
@click.option(
    "--csv/--lines",
    "csv_format",
    default=None,
    help="How to read the list (default: CSV for *.csv files).",
)
@click.option("--revoke-sessions/--keep-sessions", default=True, show_default=True)
@click.option("--reset-mfa", is_flag=True, help="Also remove second factors.")
@click.option("--notify/--no-notify", default=True, show_default=True)
@click.option("--dry-run", is_flag=True, help="Only count the accounts.")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Run the batches here with a progress bar (Ctrl-C leaves the rest to the workers), "
    "or leave them all to the workers.",
)
@click.option(
    "--operator",
    default="command line",
    show_default=True,
    callback=_checked_operator,
    help="Who starts it, for the audit trail.",
)
def create(
    reason: str,
    mode: str,
    every: bool,
    emails_file: IO[bytes] | None,
    user_ids_file: IO[bytes] | None,
    created_before: str | None,
    password_set_before: str | None,
    csv_format: bool | None,
    revoke_sessions: bool,
    reset_mfa: bool,
    notify: bool,
    dry_run: bool,
    wait: bool,
    operator: str,
) -> None:
    """Start a breach response; prints its id on stdout, progress on stderr."""
    selector, before, targets = _selection(
        every, emails_file, user_ids_file, created_before, password_set_before, csv_format
    )
    request = CampaignRequest(
        reason=reason,
        selector=selector,
        mode=mode,
        revoke_sessions=revoke_sessions,
        reset_mfa=reset_mfa,
        notify=notify,
        before=before,
        targets=targets,
    )
    with _opened() as runtime:
        result = _in_transaction(
            runtime,
            lambda session: breach.create_campaign(
                session,
                runtime.deps,
                request=request,
                creator=Creator(name=operator),
                client=SYSTEM,
                now=utcnow(),
                origin="cli",
                dry_run=dry_run,
            ),
        )
        if not isinstance(result, Created):
            click.echo(json.dumps({"dry_run": True, **_plain(result)}, indent=2))
            return
        campaign = result.campaign
        click.echo(campaign.id)
        if campaign.input is not None:
            _list_report(campaign.input)
        if wait:
            try:
                campaign = _run_here(runtime, campaign)
            except KeyboardInterrupt:
                # The batch under way is rolled back; the campaign itself goes on.
                raise click.ClickException(
                    f"interrupted: breach response {campaign.id} is not stopped, the workers "
                    f"carry it on: follow it with `authsvc breach-response status {campaign.id} "
                    f"--watch`, or stop it with `authsvc breach-response cancel {campaign.id}`"
                ) from None
            _summary(campaign)
    if campaign.status == "failed":
        raise click.ClickException(f"breach response failed: {campaign.last_error}")


def _list_report(report: InputReport) -> None:
    click.echo(
        f"list: {report.lines} lines, {report.matched} accounts, {report.unknown} "
        f"unknown, {report.duplicates} duplicates, {report.rejected} rejected",
        err=True,
    )
    for rejection in report.rejections:
        value = _shown(rejection.value)
        click.echo(f"  line {rejection.line}: {rejection.reason}: {value}", err=True)


def _run_here(runtime: Runtime, campaign: CampaignView) -> CampaignView:
    """Apply batches in this process until done (workers may run some of them too)."""
    step = partial(_next_batch, runtime, campaign.id)
    current = partial(_current, runtime, campaign.id)
    with _bar(campaign) as bar:
        while True:
            outcome = _in_transaction(runtime, step)
            campaign = current()
            bar.update(campaign.processed - bar.n)
            if outcome.finished:
                return campaign
            if outcome.busy:
                time.sleep(POLL_SECONDS / 4)


def _next_batch(runtime: Runtime, campaign_id: str, session: Any) -> batches.BatchOutcome:
    return batches.run_next_batch(session, runtime.deps, campaign_id=campaign_id, now=utcnow())


def _current(runtime: Runtime, campaign_id: str) -> CampaignView:
    return _in_transaction(runtime, partial(_get, campaign_id))


def _get(campaign_id: str, session: Any) -> CampaignView:
    return breach.get_campaign(session, campaign_id=campaign_id)


def _bar(campaign: CampaignView) -> tqdm[Any]:
    return tqdm(
        total=campaign.targeted,
        initial=campaign.processed,
        unit=" accounts",
        desc=f"breach response {campaign.id}",
        file=sys.stderr,
        dynamic_ncols=True,
    )


def _summary(campaign: CampaignView) -> None:
    click.echo(
        f"{campaign.status}: {campaign.processed} of {campaign.targeted} accounts flagged, "
        f"{campaign.sessions_revoked} sessions revoked, {campaign.notices_queued} notices "
        f"queued, {campaign.notified} sent, {campaign.completed_resets} passwords reset since",
        err=True,
    )


@breach_response.command("status")
@click.argument("campaign_id")
@click.option(
    "--watch",
    is_flag=True,
    help="Show a progress bar until it finishes; exit 1 if it failed.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(campaign_id: str, watch: bool, as_json: bool) -> None:
    """Show a breach response's status and progress."""
    with _opened() as runtime:
        current = partial(_current, runtime, campaign_id)
        campaign = current()
        if watch and campaign.status in batches.ACTIVE:
            with _bar(campaign) as bar:
                while campaign.status in batches.ACTIVE:
                    time.sleep(POLL_SECONDS)
                    campaign = current()
                    bar.update(campaign.processed - bar.n)
    if as_json:
        click.echo(json.dumps(_plain(campaign), indent=2))
    else:
        for name, value in _plain(campaign).items():
            if name != "input":
                click.echo(f"{name}: {'' if value is None else _shown(value)}")
    if watch and campaign.status == "failed":  # as `create --wait`: the wait's outcome
        raise click.ClickException(f"breach response failed: {campaign.last_error}")


@breach_response.command("list")
@click.option("--status", "status_", type=click.Choice(breach.STATUSES))
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 200))
def list_(status_: str | None, limit: int) -> None:
    """The latest breach responses, newest first."""
    with _opened() as runtime:
        items = _in_transaction(
            runtime, lambda session: breach.list_campaigns(session, status=status_, limit=limit)
        )
    for c in items:
        click.echo(
            f"{c.id}  {c.status:<9}  {c.processed}/{c.targeted}  "
            f"{c.created_at:%Y-%m-%d %H:%M}  {c.selector}  {_shown(c.reason[:60])}"
        )


@breach_response.command("cancel")
@click.argument("campaign_id")
@click.option(
    "--operator",
    default="command line",
    show_default=True,
    callback=_checked_operator,
    help="Who stops it, for the audit trail.",
)
def cancel(campaign_id: str, operator: str) -> None:
    """Stop a pending or running breach response (accounts already flagged stay flagged)."""
    with _opened() as runtime:
        campaign = _in_transaction(
            runtime,
            lambda session: breach.cancel_campaign(
                session,
                runtime.deps,
                campaign_id=campaign_id,
                creator=Creator(name=operator),
                client=SYSTEM,
                now=utcnow(),
            ),
        )
    _summary(campaign)


@breach_response.command("report")
@click.argument("campaign_id")
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write here instead of standard output.",
)
@click.option(
    "--operator",
    default="command line",
    show_default=True,
    callback=_checked_operator,
    help="Who exports it, for the audit trail.",
)
def report(campaign_id: str, fmt: str, output: Path | None, operator: str) -> None:
    """Export every affected account: flagged, notified, reset since."""
    with sigterm_as_interrupt(), _opened() as runtime, _output(output) as out:
        campaign = _in_transaction(
            runtime,
            lambda session: breach.record_report_export(
                session,
                campaign_id=campaign_id,
                fmt=fmt,
                creator=Creator(name=operator),
                client=SYSTEM,
                now=utcnow(),
            ),
        )
        rows = _rows(runtime, campaign.id)
        if fmt == "csv":
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(lists.REPORT_COLUMNS)
            for row in rows:
                writer.writerow(lists.csv_cells(row))
            return
        out.write('{"breach_response": ' + json.dumps(_plain(campaign)) + ', "accounts": [')
        for count, row in enumerate(rows):
            out.write(("," if count else "") + "\n" + json.dumps(row))
        out.write("\n]}\n")


@contextmanager
def _output(path: Path | None) -> Iterator[IO[str]]:
    """Standard output, or a file next to ``path`` that replaces it once the report is
    complete: a report cut short (a lost connection, Ctrl-C) neither passes for a complete
    one nor takes the place of the one exported before. A file that cannot be made fails
    before the export is recorded. A device or pipe (/dev/stdout) is written to as it is."""
    if path is None or (path.exists() and not path.is_file()):  # standard output, /dev/stdout
        with click.open_file(str(path or "-"), "w") as out:
            yield out
        return
    target = path.resolve() if path.is_symlink() else path  # the file a link names is replaced
    try:
        staging = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below, or renamed
            "w",
            encoding="utf-8",
            newline="",
            dir=target.parent,
            prefix=f".{target.name}.",
            suffix=".tmp",
            delete=False,
        )
    except OSError as exc:
        raise click.ClickException(f"{path}: {exc.strerror or exc}") from None
    try:
        with staging:
            yield staging
        os.replace(staging.name, target)
    finally:
        Path(staging.name).unlink(missing_ok=True)


def _rows(runtime: Runtime, campaign_id: str) -> Iterator[dict[str, str | None]]:
    after = ""
    while True:
        page = _in_transaction(runtime, partial(_page, campaign_id, after))
        yield from (lists.report_record(row) for row in page)
        if len(page) < REPORT_PAGE:
            return
        after = page[-1].user_id


def _page(campaign_id: str, after: str, session: Any) -> list[lists.ReportRow]:
    return lists.report_page(session, campaign_id=campaign_id, after=after, limit=REPORT_PAGE)
