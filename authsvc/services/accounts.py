"""Password accounts: sign-up, verification, login, forgotten and changed passwords.

Enumeration resistance lives here. ``signup`` and ``forgot_password`` do the same work for every
email (validate, throttle, hash where a password is given, queue one outbox job, write one audit
row); the job that looks the account up runs in the background worker. ``login`` performs one
Argon2 verification whether or not the account exists.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from datetime import datetime
from typing import Any

from sqlalchemy import String, bindparam, func, select
from sqlalchemy.orm import Session as DbSession

from authsvc.crypto.blocklist import check_policy, context_words
from authsvc.crypto.passwords import HasherBusy, PasswordPolicyViolation
from authsvc.errors import (
    InvalidCredentials,
    InvalidMfa,
    InvalidRequest,
    InvalidToken,
    MfaRequired,
    Overloaded,
    WeakPassword,
)
from authsvc.models import AuditEvent, User
from authsvc.services import (
    audit,
    breach_batches,
    factors,
    login,
    notices,
    outbox,
    password_costs,
    sessions,
    throttle,
    user_tokens,
)
from authsvc.services.context import Client, Deps

MAX_EMAIL_LENGTH = 254
# An addr-spec in dot-atom form only (RFC 5322 atext, or any non-ASCII character for
# internationalised addresses): no quotes, commas, semicolons, angle brackets, parentheses or
# spaces, so that an address can never turn into a list of addresses or a display name in a
# mail header. Domains are dot-separated labels of letters, digits and hyphens (IDN allowed).
_ATOM = r"[a-z0-9!#$%&'*+/=?^_`{|}~\u0080-\U0010ffff-]+"
_LABEL = r"[a-z0-9\u0080-\U0010ffff](?:[a-z0-9\u0080-\U0010ffff-]*[a-z0-9\u0080-\U0010ffff])?"
_EMAIL = re.compile(rf"[^@]{{1,64}}@{_LABEL}(?:\.{_LABEL})+")
_LOCAL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")


def normalize_email(raw: str) -> str:
    """NFKC, trimmed, lower-cased; raise InvalidRequest if it is not an address."""
    email = unicodedata.normalize("NFKC", raw).strip().lower()
    if (
        len(email) > MAX_EMAIL_LENGTH
        or not _EMAIL.fullmatch(email)
        or not _LOCAL.fullmatch(email.rpartition("@")[0])
        or "=?" in email  # an RFC 2047 encoded word: mail software would decode it
        or not email.isprintable()
    ):
        raise InvalidRequest("email is not a valid address", field="email")
    try:
        email.encode("utf-8")  # lone surrogates: no database stores them
    except UnicodeEncodeError:
        raise InvalidRequest("email is not a valid address", field="email") from None
    return email


# Gmail delivers a.d.a@ and ada@, at either of its domains, to one mailbox: 2^(n-1) addresses
# for a local part of n characters, each with limits of its own without this.
DOTLESS_DOMAINS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


def mailbox_key(email: str) -> str:
    """The mailbox that mail to the normalised ``email`` reaches, as limits on mail sent to
    it count it: the local part without a ``+tag`` (most providers deliver ada+1@ to ada@),
    the domain in its IDNA ASCII (punycode) form, lower-cased; a domain that has none (a label
    too long, a character IDNA prohibits) as given, lower-cased; at Gmail's domains
    (``DOTLESS_DOMAINS``), the local part without its dots, the domain gmail.com. Never an
    identity: ada+1@ and ada@ stay two accounts. Python's codec is IDNA 2003, which also maps
    ß to ss: two domains that IDNA 2008 keeps apart may share a key, a limit shared, never
    one escaped."""
    local, _, domain = email.rpartition("@")
    local = local.partition("+")[0] or local
    with contextlib.suppress(UnicodeError):  # no IDNA form: the domain as given
        domain = domain.encode("idna").decode("ascii")
    local, domain = local.lower(), domain.lower()
    if domain in DOTLESS_DOMAINS:
        local, domain = local.replace(".", ""), DOTLESS_DOMAINS[domain]
    return f"{local}@{domain}"


def throttled(
    session: DbSession,
    deps: Deps,
    *,
    action: str,
    email: str,
    client: Client,
    now: datetime,
    user_id: str | None = None,
    more: tuple[throttle.Check, ...] = (),
) -> throttle.Who:
    """Per-IP, per-email and per-IP+email limits, identical for known and unknown emails, and
    ``more`` after them. Returns who asked, with the email's audit digest, for the caller's
    own events."""
    who = throttle.Who(
        now=now,
        client=client,
        action=action,
        user_id=user_id,
        email_hash=audit.email_digest(deps.keyring, email),
    )
    checks = (
        ("ip", (client.rate_key,)),
        ("email", (email,)),
        ("ip_email", (client.rate_key, email)),
        *more,
    )
    throttle.hit_each(session, deps, checks, who=who)
    return who


def throttled_mail(
    session: DbSession, deps: Deps, *, action: str, email: str, client: Client, now: datetime
) -> throttle.Who:
    """``throttled``, and per mailbox (``mailbox_key``) for a request that has mail sent to
    ``email``: without it one mailbox gets the per-email limit once for each of its spellings.
    Counted before anything looks at the account, identical for known and unknown emails."""
    mailbox = (throttle.MAILBOX, (mailbox_key(email),))
    return throttled(
        session, deps, action=action, email=email, client=client, now=now, more=(mailbox,)
    )


def acceptable_password(deps: Deps, password: str, *, email: str) -> str:
    """The NFKC form of a new password for the account ``email``, or WeakPassword."""
    settings = deps.settings
    try:
        return check_policy(
            password,
            blocklist=deps.blocklist,
            min_length=settings.password_min_length,
            max_length=settings.password_max_length,
            context=context_words(
                (
                    "authsvc",
                    settings.webauthn_rp_name,
                    settings.totp_issuer,
                    *settings.password_context_words,
                ),
                email=email,
            ),
        )
    except PasswordPolicyViolation as exc:
        messages = {
            "too_short": f"must be at least {settings.password_min_length} characters",
            "too_long": f"must be at most {settings.password_max_length} characters",
            "breached": "is a common or breached password: choose another",
            "context_word": "must be free of this service's name and of parts of your email",
        }
        raise WeakPassword(
            f"The password {messages.get(exc.reason, 'is not acceptable')}", reason=exc.reason
        ) from None


def hash_password(deps: Deps, password: str) -> str:
    try:
        return deps.hasher.hash(password)
    except HasherBusy:
        raise Overloaded(retry_after=1) from None


# --- sign-up -----------------------------------------------------------------------------


def signup(
    session: DbSession, deps: Deps, *, email: str, password: str, client: Client, now: datetime
) -> None:
    email = normalize_email(email)
    who = throttled_mail(session, deps, action="signup", email=email, client=client, now=now)
    normalized = acceptable_password(deps, password, email=email)
    password_hash = hash_password(deps, normalized)
    outbox.enqueue(
        session,
        deps.keyring,
        kind="signup_request",
        payload={"email": email, "password_hash": password_hash},
        now=now,
    )
    audit.record(
        session,
        type="signup.requested",
        outcome="accepted",
        now=now,
        client=client,
        email_hash=who.email_hash,
    )


def process_signup_request(
    session: DbSession, deps: Deps, payload: dict[str, Any], now: datetime
) -> None:
    """Background half of sign-up: create the account or tell the owner it exists."""
    email, password_hash = payload["email"], payload["password_hash"]
    user = session.scalar(select(User).where(User.email == email))
    if user is not None and user.disabled_at is not None:
        return  # as a reset request for it: no link of a disabled account would work
    if user is not None and user.email_verified_at is not None:
        _mail_reset_link(session, deps, user=user, template="account_exists", now=now)
        return
    if user is None:
        user = User(email=email, created_at=now, updated_at=now)
        session.add(user)
        session.flush()
        audit.record(session, type="signup.created", outcome="success", now=now, user_id=user.id)
    # Every sign-up's link stays good; when one is opened while another is still pending, the
    # address was signed up more than once, perhaps by someone else (see verify_email).
    token = user_tokens.issue(
        session,
        user_id=user.id,
        purpose="verify_email",
        ttl=deps.settings.verification_token_ttl,
        now=now,
        pending_password_hash=password_hash,
        replace_previous=False,
    )
    notices.send(
        session,
        deps,
        to=email,
        template="verify_email",
        now=now,
        link=notices.link(deps, "verify-email", token),
        ttl=_human(deps.settings.verification_token_ttl.total_seconds()),
    )


# Sign-ups of an address accepted after a moment. A sign-up still waiting in the outbox for
# the worker has no link yet, and its payload is encrypted: its audit event is what shows it.
_SIGNUPS_SINCE = (
    select(func.count())
    .select_from(AuditEvent)
    .where(
        AuditEvent.type == "signup.requested",
        AuditEvent.email_hash == bindparam("email_hash"),
        AuditEvent.occurred_at > bindparam("since"),
    )
)


def _signed_up_since(session: DbSession, deps: Deps, *, email: str, since: datetime) -> int:
    digest = audit.email_digest(deps.keyring, email)
    found = session.scalar(
        _SIGNUPS_SINCE,
        {"email_hash": digest, "since": since},
        execution_options=audit.WITHOUT_PENDING,
    )
    return int(found or 0)


def verify_email(
    session: DbSession, deps: Deps, *, token: str, client: Client, now: datetime
) -> None:
    """Confirm the address. The sign-up's password becomes the account's, unless the address
    was signed up again before this link was opened (another link still pending, or another
    sign-up accepted since this link was issued, which may still wait for the worker): then
    nobody can tell which password the owner chose (an attacker may have signed up before or
    after them), so none is taken and the mailbox gets a link to choose one (account
    pre-hijacking, in either order)."""
    row, user = user_tokens.find_with_owner(
        session, token=token, purpose="verify_email", now=now, lock_owner=True
    )
    user_tokens.consume(session, row=row, now=now)
    user.email_verified_at = user.email_verified_at or now
    outcome = "success"
    if row.pending_password_hash and user.password_hash is None:
        pending = user_tokens.count_live(
            session, user_id=user.id, purpose="verify_email", now=now
        ) + _signed_up_since(session, deps, email=user.email, since=row.created_at)
        user_tokens.revoke_all(session, user_id=user.id, purposes=("verify_email",), now=now)
        if pending:
            outcome = "contested"
            _mail_reset_link(
                session,
                deps,
                user=user,
                template="signup_contested",
                now=now,
            )
        else:
            user.password_hash = row.pending_password_hash
            user.password_set_at = now
    user.updated_at = now
    audit.record(
        session, type="signup.verified", outcome=outcome, now=now, client=client, user_id=user.id
    )


# --- login -------------------------------------------------------------------------------


# Built once: every login asks, and building an ORM statement costs more than running it.
_USER_BY_EMAIL = select(User).where(User.email == bindparam("email", type_=String()))


def lock_account(session: DbSession, user_id: str) -> User | None:
    """Lock the account's row (FOR NO KEY UPDATE) and read it (again, into the session's
    object); None when it does not exist (any more). The one way a writer takes an account
    before its other rows (see user_tokens.find_with_owner's ``lock_owner``)."""
    return session.get(User, user_id, with_for_update={"key_share": True}, populate_existing=True)


def lock_breach_targets(session: DbSession, user: User) -> None:
    """For a flagged account, locked already: lock the breach_targets rows its new password
    will stamp, before any of its tokens is written. The order of the account's rows is
    account, breach targets, tokens: a breach notice run holds a target row as it replaces
    the account's reset tokens."""
    if user.password_invalidated_at is not None or user.password_change_required:
        breach_batches.lock_targets(session, user_id=user.id)


def _refusal(user: User | None, password_ok: bool) -> str | None:
    """Why a login with this account and password check fails, or None."""
    if user is None:
        return "unknown_email"
    if not password_ok:
        return "wrong_password"
    if user.disabled_at is not None:
        return "disabled"
    if user.email_verified_at is None:
        return "unverified"
    if user.password_invalidated_at is not None:
        return "password_invalidated"
    return None


def authenticate_password(
    session: DbSession, deps: Deps, *, email: str, password: str, client: Client, now: datetime
) -> User:
    """One Argon2 verification for every email; InvalidCredentials for every failure."""
    email = normalize_email(email)
    # The daily cap on checks that reach the verifier ("account_failures") counts each check
    # before it runs, in one atomic step: counted only after a failure, parallel requests that
    # all passed the test before any of them failed would overshoot it. A successful check
    # counts too.
    daily_cap = ("account_failures", (email,))
    who = throttled(
        session, deps, action="login", email=email, client=client, now=now, more=(daily_cap,)
    )
    email_hash = who.email_hash
    user = session.scalar(_USER_BY_EMAIL, {"email": email})
    try:
        # Every failed check takes as long as one of the costliest hash stored would.
        password_costs.refresh(session, deps.hasher)
        if user is not None and user.password_hash is not None:
            # An account refused whatever the password (disabled, unverified, invalidated)
            # answers the right one as it answers a wrong one, in its time too.
            result = deps.hasher.verify(
                user.password_hash, password, refused=_refusal(user, True) is not None
            )
            ok, needs_rehash = result.ok, result.needs_rehash
            password_costs.note_unknown(session, deps.hasher, user.password_hash, now=now)
        else:
            deps.hasher.dummy_verify(password)
            ok, needs_rehash = False, False
    except HasherBusy:
        raise Overloaded(retry_after=1) from None
    reason = _refusal(user, ok)
    if user is not None and reason is None:
        # A reset, change, disable, deletion or breach response may have committed while the
        # password was checked. Lock the row and read it again: such a change either shows
        # now, or waits for this login to commit and then revokes the session or mfa_token it
        # opens. A new password shows in password_set_at; a rehash (a parallel login's, of the
        # same password) leaves it alone.
        verified_set_at = user.password_set_at
        if lock_account(session, user.id) is None:
            reason = "unknown_email"
        else:
            reason = _refusal(user, user.password_set_at == verified_set_at)
    if reason is not None:
        audit.record(
            session,
            type="login.failure",
            outcome=reason,
            now=now,
            client=client,
            user_id=user.id if user else None,
            email_hash=email_hash,
        )
        raise InvalidCredentials()
    assert user is not None
    if needs_rehash:
        _upgrade_hash(deps, user=user, password=password, now=now)
    if (
        deps.settings.flag_breached_at_login
        and not user.password_change_required
        and deps.blocklist.is_blocked(password)
    ):
        user.password_change_required = True
        user.password_change_required_at = now
        audit.record(
            session,
            type="password.breached_at_login",
            outcome="flagged",
            now=now,
            client=client,
            user_id=user.id,
        )
    return user


def _upgrade_hash(deps: Deps, *, user: User, password: str, now: datetime) -> None:
    """Rehash a password that verified against an outdated hash (other Argon2 parameters, an
    imported bcrypt or PBKDF2 hash, or one of the password as typed rather than NFKC), when a
    hashing slot is free; else keep the old hash, which still verifies, for a later login.
    A login never fails here: it has already passed its checks, counted among the account's
    daily ones, and a 503 would refuse a proven password and have it retried on a busy
    server."""
    rehashed = deps.hasher.rehash(password)
    if rehashed is not None:
        user.password_hash = rehashed
        user.updated_at = now


def login_with_password(
    session: DbSession, deps: Deps, *, email: str, password: str, client: Client, now: datetime
) -> login.LoginResult:
    user = authenticate_password(
        session, deps, email=email, password=password, client=client, now=now
    )
    return login.after_password(session, deps, user=user, amr=("pwd",), client=client, now=now)


# --- forgotten password ------------------------------------------------------------------


def forgot_password(
    session: DbSession, deps: Deps, *, email: str, client: Client, now: datetime
) -> None:
    email = normalize_email(email)
    who = throttled_mail(session, deps, action="forgot", email=email, client=client, now=now)
    outbox.enqueue(session, deps.keyring, kind="reset_request", payload={"email": email}, now=now)
    audit.record(
        session,
        type="password.forgot",
        outcome="accepted",
        now=now,
        client=client,
        email_hash=who.email_hash,
    )


def _mail_reset_link(
    session: DbSession, deps: Deps, *, user: User, template: str, now: datetime, **params: str
) -> None:
    """Issue a fresh reset token (earlier ones die) and mail it in ``template``, which may
    say how long the link works ({ttl})."""
    token = user_tokens.issue(
        session,
        user_id=user.id,
        purpose="reset_password",
        ttl=deps.settings.reset_token_ttl,
        now=now,
    )
    notices.send(
        session,
        deps,
        to=user.email,
        template=template,
        now=now,
        link=notices.link(deps, "reset-password", token),
        ttl=_human(deps.settings.reset_token_ttl.total_seconds()),
        **params,
    )


def process_reset_request(
    session: DbSession, deps: Deps, payload: dict[str, Any], now: datetime
) -> None:
    email = payload["email"]
    user = session.scalar(select(User).where(User.email == email))
    if user is None:
        notices.send(session, deps, to=email, template="no_account", now=now)
        return
    if user.disabled_at is not None:
        return
    _mail_reset_link(
        session,
        deps,
        user=user,
        template="reset_password",
        now=now,
    )


def reset_password(
    session: DbSession,
    deps: Deps,
    *,
    token: str,
    new_password: str,
    proof: factors.FactorProof,
    client: Client,
    now: datetime,
) -> None:
    # The account locked first: checking a second factor writes its rows (a step, a code, a
    # challenge), and every writer takes the account before those; then its breach targets,
    # before the link is spent.
    row, user = user_tokens.find_with_owner(
        session, token=token, purpose="reset_password", now=now, lock_owner=True
    )
    lock_breach_targets(session, user)
    normalized = acceptable_password(deps, new_password, email=user.email)
    methods = factors.methods_for(session, user_id=user.id)
    if methods:
        if not proof.given:
            raise MfaRequired(
                "This account has a second factor; send one with the new password",
                methods=list(methods),
            )
        try:
            factors.verify(
                session,
                deps,
                user_id=user.id,
                user_token_id=row.id,
                proof=proof,
                client=client,
                now=now,
            )
        except InvalidMfa as exc:
            audit.record(
                session,
                type="password.reset",
                outcome="invalid_mfa",
                now=now,
                client=client,
                user_id=user.id,
                details=factors.refusal_details(exc),
            )
            raise
    user_tokens.consume(session, row=row, now=now)
    set_password(
        session,
        deps,
        user=user,
        password=normalized,
        client=client,
        now=now,
        event="password.reset",
    )
    user.email_verified_at = user.email_verified_at or now  # the link proved the mailbox


# Tokens that a new password ends: pending resets, and every half-finished login, including a
# forced enrollment (whoever knew the old password must not get to enroll a second factor).
_DIE_WITH_THE_PASSWORD = ("reset_password", *user_tokens.LOGIN_STEP_PURPOSES)


def set_password(
    session: DbSession,
    deps: Deps,
    *,
    user: User,
    password: str,
    client: Client,
    now: datetime,
    event: str,
    proven_at: datetime | None = None,
) -> None:
    """Replace the password. ``proven_at``: when the caller's proof (a login step's token)
    was made; a password invalidated since (a breach response) is not replaced with it."""
    hashed = hash_password(deps, password)
    # Lock the row and read it again: a breach batch that flagged the account after it was
    # read would otherwise keep its flag (the ORM writes only the columns it saw change), and
    # a login checked against the old password waits for this to commit, or this for it.
    if lock_account(session, user.id) is None or user.disabled_at is not None:
        raise InvalidToken()
    invalidated = user.password_invalidated_at
    if proven_at is not None and invalidated is not None and proven_at <= invalidated:
        raise InvalidToken()
    forced = invalidated is not None or user.password_change_required
    if forced:  # a forced reset is complete: breach responses count it (before the tokens)
        breach_batches.record_password_set(session, user_id=user.id, now=now)
    user.password_hash = hashed
    user.password_set_at = now
    user.password_invalidated_at = None
    user.password_change_required = False
    user.password_change_required_at = None
    user.updated_at = now
    user_tokens.revoke_all(session, user_id=user.id, purposes=_DIE_WITH_THE_PASSWORD, now=now)
    revoked = sessions.revoke_all_for_user(session, user_id=user.id, reason=event, now=now)
    audit.record(
        session,
        type=event,
        outcome="success",
        now=now,
        client=client,
        user_id=user.id,
        details={"sessions_revoked": revoked},
    )
    _mail_reset_link(
        session,
        deps,
        user=user,
        template="password_changed",
        now=now,
        when=now.strftime("%Y-%m-%d %H:%M"),
    )


def _human(seconds: float) -> str:
    if seconds >= 3600:
        hours = int(seconds // 3600)
        return f"{hours} hour{'s' if hours != 1 else ''}"
    minutes = max(1, int(seconds // 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"
