"""Domain errors. Each class declares its problem ``code``, ``title`` and HTTP ``status``.

The single renderer in ``authsvc.http.problems`` turns them into RFC 9457 problem+json.
This module imports nothing.
"""


class AuthsvcError(Exception):
    code = "error"
    title = "Error"
    status = 400
    retry_after: int | None = None
    # The request's transaction commits on a domain error, so that audit rows and failure
    # counters stay; an error that means "not now, retry" rolls everything back instead, so
    # that a retry finds the same state (an unspent link, an unused recovery code).
    keeps_work = True

    def __init__(self, detail: str | None = None, **extra: object) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra


class InvalidRequest(AuthsvcError):
    code, title, status = "invalid_request", "The request is not valid", 400


class MalformedJson(AuthsvcError):
    code, title, status = "malformed_json", "The body is not valid JSON", 400


class UnsupportedMediaType(AuthsvcError):
    code, title, status = "unsupported_media_type", "The body must be application/json", 415


class WeakPassword(AuthsvcError):
    code, title, status = "weak_password", "The password is not acceptable", 400


class InvalidToken(AuthsvcError):
    code, title, status = "invalid_token", "The token is invalid or expired", 400


class TokenSpentMeanwhile(InvalidToken):
    """A concurrent request spent the same single-use token first: this request's work (a
    recovery code, a claimed TOTP step) is rolled back, as if it had never run."""

    keeps_work = False


class InvalidCredentials(AuthsvcError):
    code, title, status = "invalid_credentials", "Invalid credentials", 401


class Unauthenticated(AuthsvcError):
    code, title, status = "unauthenticated", "A valid bearer token is required", 401


class InvalidAdminKey(AuthsvcError):
    code, title, status = "invalid_admin_key", "A valid admin API key is required", 401


class InvalidMfa(AuthsvcError):
    code, title, status = "invalid_mfa", "The second factor was not accepted", 401


class MfaRequired(AuthsvcError):
    code, title, status = "mfa_required", "A second factor is required", 401


class ReauthenticationRequired(AuthsvcError):
    code, title, status = "reauthentication_required", "A recent login is required", 403


class Forbidden(AuthsvcError):
    code, title, status = "forbidden", "Not allowed", 403


class NotFound(AuthsvcError):
    code, title, status = "not_found", "Not found", 404


class Conflict(AuthsvcError):
    code, title, status = "conflict", "Conflict", 409


class EmailTaken(AuthsvcError):
    code, title, status = "email_taken", "An account with this email exists", 409


class RateLimited(AuthsvcError):
    code, title, status = "rate_limited", "Too many requests", 429

    def __init__(self, retry_after: int, policy: str = "") -> None:
        super().__init__("Too many requests; retry later")
        self.retry_after = max(1, int(retry_after))
        self.policy = policy  # for the audit trail and metrics; never rendered


class Overloaded(AuthsvcError):
    code, title, status = "overloaded", "The service is busy", 503
    keeps_work = False

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__("The service is busy; retry later")
        self.retry_after = retry_after


class SigningKeyUnreadable(AuthsvcError):
    """No key of this process's ring opens the access-token signing key: `authsvc keys rotate`
    ran under it with a ring it was not restarted with. Nothing to retry until it is."""

    code, title, status = "unavailable", "Service unavailable", 503
    keeps_work = False

    def __init__(self) -> None:
        super().__init__("A key this request needs cannot be opened here; retry later")
        self.retry_after = 5


class InvalidWebauthnResponse(AuthsvcError):
    code, title, status = (
        "invalid_webauthn_response",
        "The WebAuthn response was not accepted",
        400,
    )


class InvalidChallenge(AuthsvcError):
    code, title, status = (
        "invalid_challenge",
        "The WebAuthn challenge is unknown, expired or already used",
        400,
    )


class AuthenticatorNotAllowed(AuthsvcError):
    code, title, status = (
        "authenticator_not_allowed",
        "This authenticator is not allowed by policy",
        403,
    )


class CredentialExists(AuthsvcError):
    code, title, status = "credential_exists", "This credential is already registered", 409


class InvalidCode(AuthsvcError):
    code, title, status = "invalid_code", "The code is not correct", 400


class FactorLimitReached(AuthsvcError):
    code, title, status = "factor_limit_reached", "No more factors of this type can be added", 409


class MfaNotEnabled(AuthsvcError):
    code, title, status = "mfa_not_enabled", "The account has no second factor", 409


class EmptyTargetList(AuthsvcError):
    code, title, status = "empty_target_list", "The list names no acceptable entry", 400


class NoTargets(AuthsvcError):
    code, title, status = "no_targets", "No account matches the selection", 422


class CampaignConflict(AuthsvcError):
    code, title, status = (
        "campaign_conflict",
        "A running breach response already covers some of these accounts",
        409,
    )


class CampaignFinished(AuthsvcError):
    code, title, status = "campaign_finished", "The breach response has already finished", 409


class IdempotencyKeyReused(AuthsvcError):
    code, title, status = (
        "idempotency_key_reused",
        "This Idempotency-Key was used with a different request",
        422,
    )
