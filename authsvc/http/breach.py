"""Breach responses and forced resets under /admin/v1 (admin API key as bearer token).

A campaign is created from JSON, or from an uploaded list (``text/plain``: one entry per line;
``text/csv``: the ``email`` / ``user_id`` column) with the other parameters in the query string.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, json, request, stream_with_context

from authsvc.db import utcnow
from authsvc.errors import InvalidRequest, UnsupportedMediaType
from authsvc.http.auth import current_admin, require_admin
from authsvc.http.io import (
    client,
    db,
    deps,
    field,
    only_query,
    parse,
    query_limit,
    request_body,
    respond,
    to_json,
    transactional,
)
from authsvc.services import breach
from authsvc.services import breach_lists as lists
from authsvc.services.breach import CampaignRequest, Created, Creator
from authsvc.services.breach_lists import ReportRow
from authsvc.times import parse_time

bp = Blueprint("breach", __name__)

BASE = "/admin/v1/breach-responses"
REPORT_PAGE = 5000
_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})
# What an upload takes in its query string: the JSON body's fields other than the list and
# ``before`` (uploads are lists only).
UPLOAD_QUERY = frozenset(
    {"selector", "mode", "reason", "revoke_sessions", "reset_mfa", "notify", "dry_run"}
)


@dataclass
class CampaignBody:
    reason: str = field(max_length=breach.MAX_REASON)
    selector: str = field(max_length=32)
    mode: str = field(max_length=32)
    revoke_sessions: bool = True
    reset_mfa: bool = False
    notify: bool = True
    dry_run: bool = False
    before: str | None = field(max_length=64, default=None)
    emails: list[str] | None = None
    user_ids: list[str] | None = None


@dataclass
class ForceResetBody:
    mode: str = field(max_length=32, default="invalidate")
    revoke_sessions: bool = True
    reset_mfa: bool = False
    notify: bool = True
    reason: str = field(max_length=breach.MAX_REASON, default="forced password reset")


def _creator() -> Creator:
    admin = current_admin()
    return Creator(name=f"admin key {admin.name}", key_id=admin.key_id)


def _flag(name: str, default: bool) -> bool:
    raw = request.args.get(name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise InvalidRequest(f"{name} must be true or false", field=name)


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (1 <= len(key) <= 128 and key.isprintable()):
        raise InvalidRequest(
            "Idempotency-Key must be 1 to 128 printable characters", field="Idempotency-Key"
        )
    return key


def _from_json() -> tuple[CampaignRequest, bool]:
    body = parse(CampaignBody, known_only=True)
    # The query string holds an upload's parameters: ignored here, ?dry_run=true would start
    # the campaign for real.
    name = next(iter(request.args), None)
    if name is not None:
        raise InvalidRequest(f"{name} goes in the JSON body, not the query string", field=name)
    targets = None
    for kind, values in (("emails", body.emails), ("user_ids", body.user_ids)):
        if values is not None:
            if body.selector != kind:
                raise InvalidRequest(f"{kind} goes with the selector {kind}", field=kind)
            targets = lists.parse_target_list(kind, values, comments=False)
    if body.selector in breach.LIST_KINDS and targets is None:
        raise InvalidRequest(f"{body.selector} is required with that selector", field=body.selector)
    # An empty string is a before too (not a time), never taken for none.
    before = (
        parse_time(body.before, field="before", dates=True) if body.before is not None else None
    )
    return CampaignRequest(
        reason=body.reason,
        selector=body.selector,
        mode=body.mode,
        revoke_sessions=body.revoke_sessions,
        reset_mfa=body.reset_mfa,
        notify=body.notify,
        before=before,
        targets=targets,
    ), body.dry_run


def _from_upload(csv_format: bool) -> tuple[CampaignRequest, bool]:
    # Refused rather than ignored, before the body is read: a misspelt ?dry_run would start
    # the campaign for real, and of a repeated flag only the first value would count.
    only_query(UPLOAD_QUERY)
    selector = request.args.get("selector", "")
    if selector not in breach.LIST_KINDS:
        raise InvalidRequest(
            "an uploaded list needs selector=emails or selector=user_ids", field="selector"
        )
    lines = request_body().splitlines()
    targets = lists.parse_target_list(selector, lines, csv_format=csv_format)
    return CampaignRequest(
        reason=request.args.get("reason", "")[: breach.MAX_REASON + 1],
        selector=selector,
        mode=request.args.get("mode", "")[:32],
        revoke_sessions=_flag("revoke_sessions", True),
        reset_mfa=_flag("reset_mfa", False),
        notify=_flag("notify", True),
        targets=targets,
    ), _flag("dry_run", False)


@bp.post(BASE)
@transactional
@require_admin
def create_breach_response() -> Response:
    request.max_content_length = deps().settings.breach_upload_max_bytes
    mimetype = request.mimetype
    if mimetype in ("text/plain", "text/csv"):
        campaign_request, dry_run = _from_upload(csv_format=mimetype == "text/csv")
    elif mimetype == "application/json" or not request.content_length:
        campaign_request, dry_run = _from_json()
    else:
        raise UnsupportedMediaType("Send application/json, text/plain or text/csv")
    key = _idempotency_key()
    result = breach.create_campaign(
        db(),
        deps(),
        request=campaign_request,
        creator=_creator(),
        client=client(),
        now=utcnow(),
        idempotency_key=key,
        dry_run=dry_run,
    )
    if not isinstance(result, Created):
        return respond({"dry_run": True, **to_json(result)})
    headers = {"Location": f"{BASE}/{result.campaign.id}"}
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    return respond(result.campaign, 202, headers)


@bp.get(BASE)
@transactional
@require_admin
def list_breach_responses() -> Response:
    only_query(frozenset({"status", "limit"}))
    limit = query_limit(default=50, maximum=200)
    items = breach.list_campaigns(db(), status=request.args.get("status"), limit=limit)
    return respond({"breach_responses": items})


@bp.get(f"{BASE}/<campaign_id>")
@transactional
@require_admin
def get_breach_response(campaign_id: str) -> Response:
    only_query(frozenset())
    return respond(breach.get_campaign(db(), campaign_id=campaign_id[:64]))


@bp.post(f"{BASE}/<campaign_id>/cancel")
@transactional
@require_admin
def cancel_breach_response(campaign_id: str) -> Response:
    only_query(frozenset())
    return respond(
        breach.cancel_campaign(
            db(),
            deps(),
            campaign_id=campaign_id[:64],
            creator=_creator(),
            client=client(),
            now=utcnow(),
        )
    )


@bp.get(f"{BASE}/<campaign_id>/report")
@transactional
@require_admin
def breach_response_report(campaign_id: str) -> Response:
    only_query(frozenset({"format"}))
    fmt = request.args.get("format", "csv")
    if fmt not in ("csv", "json"):
        raise InvalidRequest("format must be csv or json", field="format")
    campaign = breach.record_report_export(
        db(),
        campaign_id=campaign_id[:64],
        fmt=fmt,
        creator=_creator(),
        client=client(),
        now=utcnow(),
    )
    rows = _report_rows(campaign.id)
    body = _csv(rows) if fmt == "csv" else _json_report(to_json(campaign), rows)
    response = Response(
        stream_with_context(body), mimetype="text/csv" if fmt == "csv" else "application/json"
    )
    response.headers["Content-Disposition"] = (
        f'attachment; filename="breach-response-{campaign.id}.{fmt}"'
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def _report_rows(campaign_id: str) -> Iterator[ReportRow]:
    """Every affected account, read page by page in short transactions of their own."""
    factory = current_app.extensions["authsvc"].sessionmaker
    after = ""
    while True:
        with factory() as session:
            page = lists.report_page(
                session, campaign_id=campaign_id, after=after, limit=REPORT_PAGE
            )
        yield from page
        if len(page) < REPORT_PAGE:
            return
        after = page[-1].user_id


def _csv(rows: Iterator[ReportRow]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(lists.REPORT_COLUMNS)
    for count, row in enumerate(rows, start=1):
        writer.writerow(lists.csv_cells(lists.report_record(row)))
        if count % 1000 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _json_report(campaign: Any, rows: Iterator[ReportRow]) -> Iterator[str]:
    yield '{"breach_response": ' + json.dumps(campaign) + ', "accounts": ['
    for count, row in enumerate(rows):
        yield ("," if count else "") + json.dumps(lists.report_record(row))
    yield "]}"


@bp.post("/admin/v1/users/<user_id>/force-reset")
@transactional
@require_admin
def force_reset(user_id: str) -> Response:
    only_query(frozenset())
    body = parse(ForceResetBody, optional=True, known_only=True)
    result = breach.force_reset(
        db(),
        deps(),
        user_id=user_id[:64],
        mode=body.mode,
        revoke_sessions=body.revoke_sessions,
        reset_mfa=body.reset_mfa,
        notify=body.notify,
        reason=body.reason,
        creator=_creator(),
        client=client(),
        now=utcnow(),
        idempotency_key=_idempotency_key(),
    )
    headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
    return respond(result.campaign, 200, headers)
