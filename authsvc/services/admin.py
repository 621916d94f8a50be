"""Administration: API keys and user management."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, bindparam, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as DbSession

from authsvc.crypto.tokens import new_token, token_hash
from authsvc.errors import EmailTaken, InvalidAdminKey, InvalidRequest, NotFound
from authsvc.models import AdminKey, User
from authsvc.services import accounts, audit, factors, password_costs, sessions, throttle
from authsvc.services.context import Client, Deps


@dataclass(frozen=True, slots=True)
class AdminIdentity:
    key_id: str
    name: str


@dataclass(frozen=True, slots=True)
class UserView:
    id: str
    email: str
    email_verified: bool
    disabled: bool
    created_at: datetime
    password_set_at: datetime | None
    password_invalidated: bool
    password_change_required: bool
    mfa_methods: tuple[str, ...]


def create_key(session: DbSession, *, name: str, now: datetime) -> tuple[str, str]:
    """Return (key id, secret). Only the secret's hash is stored."""
    name = name.strip()
    if not name or len(name) > 128:
        raise InvalidRequest("name must be 1 to 128 characters")
    if not name.isprintable():  # `admin list-keys` prints one key per tab-separated line
        raise InvalidRequest("name must not contain tabs, line breaks or other control characters")
    secret = new_token("ak")
    key = AdminKey(name=name, key_hash=token_hash(secret), created_at=now)
    session.add(key)
    session.flush()
    audit.record(
        session,
        type="admin.key_created",
        outcome="success",
        now=now,
        admin_key_id=key.id,
        details={"name": name},
    )
    return key.id, secret


@dataclass(frozen=True, slots=True)
class KeyView:
    id: str
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def list_keys(session: DbSession) -> list[KeyView]:
    """Every admin key, oldest first, without its hash."""
    keys = session.scalars(select(AdminKey).order_by(AdminKey.created_at, AdminKey.id))
    return [
        KeyView(
            id=k.id,
            name=k.name,
            created_at=k.created_at,
            last_used_at=k.last_used_at,
            revoked_at=k.revoked_at,
        )
        for k in keys
    ]


def revoke_key(session: DbSession, *, key_id: str, now: datetime) -> bool:
    """Revoke a key: it opens nothing from now on, and a later use of it is audited as
    ``revoked_key`` with its id. False when it was revoked already. NotFound for no such key."""
    key = session.get(AdminKey, key_id, with_for_update=True)
    if key is None:
        raise NotFound("no admin key has this id")
    if key.revoked_at is not None:
        return False
    key.revoked_at = now
    audit.record(session, type="admin.key_revoked", outcome="success", now=now, admin_key_id=key.id)
    return True


# A key's last use, never moved back by a request that started earlier.
_STAMP = (
    update(AdminKey)
    .where(
        AdminKey.id == bindparam("key_id"),
        or_(AdminKey.last_used_at.is_(None), AdminKey.last_used_at < bindparam("now")),
    )
    .values(last_used_at=bindparam("now"))
)


def authenticate_key(
    session: DbSession,
    deps: Deps,
    *,
    secret: str,
    now: datetime,
    client: Client,
    stamp: Engine | DbSession | None = None,
) -> AdminIdentity:
    """The key behind a bearer secret. A presented key that opens nothing is audited
    (``admin.auth``): ``unknown_key``, or ``revoked_key`` with the key's id, the sign of a
    leaked key still in use; and counted against the client's address
    (``throttle.ADMIN_KEY_FAILURES``). A client past that limit is refused before its key is
    looked at, a right one too: answered apart, a throttled guesser would still learn which
    guess was right. Its refusals are ``ratelimit.hit`` events, not more ``admin.auth`` ones,
    so a flood of wrong keys cannot flood the trail any faster than any throttled request.
    Successful presentations count nothing, and other addresses are never affected.

    ``stamp`` is where its last use is written: an autocommit engine (PostgreSQL) writes it
    at once, so that the key's row is not locked for the rest of the request: a long one (a
    campaign from a large list) held every other request with the same key, status polls
    included, and the key's revocation, until it committed. By default, the session."""
    who = throttle.Who(now=now, client=client, action="admin_auth")
    throttle.test(session, deps, throttle.ADMIN_KEY_FAILURES, client.rate_key, who=who)
    key = session.scalar(select(AdminKey).where(AdminKey.key_hash == token_hash(secret)))
    if key is None or key.revoked_at is not None:
        audit.record(
            session,
            type="admin.auth",
            outcome="unknown_key" if key is None else "revoked_key",
            now=now,
            client=client,
            admin_key_id=key.id if key is not None else None,
        )
        throttle.hit(session, deps, throttle.ADMIN_KEY_FAILURES, client.rate_key, who=who)
        raise InvalidAdminKey()
    params = {"key_id": key.id, "now": now}
    if isinstance(stamp, Engine):
        with stamp.connect() as conn:
            conn.execute(_STAMP, params)
    else:
        (stamp or session).execute(_STAMP, params)
    return AdminIdentity(key_id=key.id, name=key.name)


def _view(session: DbSession, user: User) -> UserView:
    return UserView(
        id=user.id,
        email=user.email,
        email_verified=user.email_verified_at is not None,
        disabled=user.disabled_at is not None,
        created_at=user.created_at,
        password_set_at=user.password_set_at,
        password_invalidated=user.password_invalidated_at is not None,
        password_change_required=user.password_change_required,
        mfa_methods=factors.methods_for(session, user_id=user.id),
    )


def create_user(
    session: DbSession,
    deps: Deps,
    *,
    admin: AdminIdentity,
    email: str,
    password: str | None,
    password_hash: str | None,
    email_verified: bool,
    client: Client,
    now: datetime,
) -> UserView:
    email = accounts.normalize_email(email)
    if (password is None) == (password_hash is None):
        raise InvalidRequest("give exactly one of password and password_hash")
    if password is not None:
        stored = accounts.hash_password(
            deps, accounts.acceptable_password(deps, password, email=email)
        )
        source = "password"
    else:
        assert password_hash is not None
        source = deps.hasher.identify(password_hash) or ""
        if not source:
            raise InvalidRequest(
                "password_hash must be an argon2, bcrypt or pbkdf2_sha256 hash within the cost"
                " ceilings (about a second per check at most)",
                field="password_hash",
            )
        stored = password_hash
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise EmailTaken()
    if password_hash is not None:  # failed logins now take as long as a check of it would
        password_costs.record(session, [password_hash], now=now, own=deps.hasher.own_cost())
    user = User(
        email=email,
        password_hash=stored,
        password_set_at=now,
        email_verified_at=now if email_verified else None,
        created_at=now,
        updated_at=now,
    )
    try:
        with session.begin_nested():
            session.add(user)
    except IntegrityError:
        raise EmailTaken() from None
    _record_action(
        session,
        "admin.user_created",
        user.id,
        admin=admin,
        client=client,
        now=now,
        details={"hash_source": source},
    )
    return _view(session, user)


def _record_action(
    session: DbSession,
    type: str,
    user_id: str,
    *,
    admin: AdminIdentity,
    client: Client,
    now: datetime,
    details: dict[str, Any] | None = None,
) -> None:
    """Audit an admin's change to the account ``user_id`` with the admin's key."""
    audit.record(
        session,
        type=type,
        outcome="success",
        now=now,
        client=client,
        user_id=user_id,
        admin_key_id=admin.key_id,
        details=details,
    )


def _locked_user(session: DbSession, user_id: str) -> User:
    """The account ``user_id``, locked for a change (NotFound when there is none): of two
    changes at once, the second sees the first."""
    user = accounts.lock_account(session, user_id)
    if user is None:
        raise NotFound("No such user")
    return user


def _record_look(
    session: DbSession,
    type: str,
    user: User | None,
    *,
    admin: AdminIdentity,
    client: Client,
    now: datetime,
    email_hash: str | None = None,
) -> None:
    """Audit an admin's look at an account (found or not) with the admin's key."""
    audit.record(
        session,
        type=type,
        outcome="not_found" if user is None else "found",
        now=now,
        client=client,
        user_id=user.id if user is not None else None,
        admin_key_id=admin.key_id,
        email_hash=email_hash,
    )


def get_user(
    session: DbSession, *, admin: AdminIdentity, user_id: str, client: Client, now: datetime
) -> UserView:
    """The account ``user_id``; each look, found or not, is audited with the admin's key."""
    user = session.get(User, user_id)
    _record_look(session, "admin.user_viewed", user, admin=admin, client=client, now=now)
    if user is None:
        raise NotFound("No such user")
    return _view(session, user)


def find_users(
    session: DbSession,
    deps: Deps,
    *,
    admin: AdminIdentity,
    email: str,
    client: Client,
    now: datetime,
) -> list[UserView]:
    """The account with this email, if any. Each lookup is audited with the admin's key, so
    that a key used to try address after address leaves a trail; the address as the keyed
    digest failed logins use, so an unregistered one is never written down in clear."""
    try:
        email = accounts.normalize_email(email)
    except InvalidRequest:
        email = ""
    user = session.scalar(select(User).where(User.email == email)) if email else None
    _record_look(
        session,
        "admin.user_lookup",
        user,
        admin=admin,
        client=client,
        now=now,
        email_hash=audit.email_digest(deps.keyring, email) if email else None,
    )
    return [_view(session, user)] if user else []


def delete_user(
    session: DbSession, *, admin: AdminIdentity, user_id: str, client: Client, now: datetime
) -> None:
    # Locked as read: of two deletions at once, the second finds nothing (404), not a row
    # that is gone by the time it deletes.
    user = session.get(User, user_id, with_for_update=True, populate_existing=True)
    if user is None:
        raise NotFound("No such user")
    session.delete(user)
    session.flush()
    _record_action(session, "admin.user_deleted", user_id, admin=admin, client=client, now=now)


def disable_user(
    session: DbSession, *, admin: AdminIdentity, user_id: str, client: Client, now: datetime
) -> UserView:
    user = _locked_user(session, user_id)  # of two disables at once, one audit event
    if user.disabled_at is None:
        user.disabled_at = now
        user.updated_at = now
        revoked = sessions.revoke_all_for_user(session, user_id=user.id, reason="disabled", now=now)
        _record_action(
            session,
            "admin.user_disabled",
            user.id,
            admin=admin,
            client=client,
            now=now,
            details={"sessions_revoked": revoked},
        )
    return _view(session, user)


def enable_user(
    session: DbSession, *, admin: AdminIdentity, user_id: str, client: Client, now: datetime
) -> UserView:
    """Undo ``disable_user``: the account logs in again (its sessions stay revoked)."""
    user = _locked_user(session, user_id)  # of two enables at once, one audit event
    if user.disabled_at is not None:
        user.disabled_at = None
        user.updated_at = now
        _record_action(session, "admin.user_enabled", user.id, admin=admin, client=client, now=now)
    return _view(session, user)


def list_user_sessions(
    session: DbSession,
    *,
    admin: AdminIdentity,
    user_id: str,
    idle_timeout: timedelta,
    client: Client,
    now: datetime,
) -> list[sessions.SessionInfo]:
    """The account's live sessions, as its user sees them (none is ``current`` here); each
    look, found or not, is audited with the admin's key (the addresses and browsers are the
    user's personal data)."""
    user = session.get(User, user_id)
    _record_look(session, "admin.sessions_viewed", user, admin=admin, client=client, now=now)
    if user is None:
        raise NotFound("No such user")
    return sessions.list_sessions(
        session, user_id=user.id, current_session_id="", idle_timeout=idle_timeout, now=now
    )


def revoke_user_sessions(
    session: DbSession, *, admin: AdminIdentity, user_id: str, client: Client, now: datetime
) -> int:
    """Sign the account out everywhere and change nothing else (its password, factors and
    state stay): every session ends, its access tokens are refused at once and its refresh
    tokens are spent. Returns how many sessions were live."""
    user = _locked_user(session, user_id)
    revoked = sessions.revoke_all_for_user(session, user_id=user.id, reason="admin", now=now)
    _record_action(
        session,
        "admin.sessions_revoked",
        user.id,
        admin=admin,
        client=client,
        now=now,
        details={"sessions_revoked": revoked},
    )
    return revoked
