"""Every table, split by aggregate. Importing this package registers them all on Base.metadata."""

from authsvc.models.accounts import RefreshToken, Session, User, UserToken
from authsvc.models.breach import *  # noqa: F403
from authsvc.models.mfa import *  # noqa: F403
from authsvc.models.ops import AdminKey, AuditEvent, OutboxMessage, PasswordHashCost, SigningKey
from authsvc.models.webauthn import *  # noqa: F403

__all__ = [
    "AdminKey",
    "AuditEvent",
    "OutboxMessage",
    "PasswordHashCost",
    "RefreshToken",
    "Session",
    "SigningKey",
    "User",
    "UserToken",
]
