"""Settings.from_env: parsing, one ConfigError with every problem, production guardrails."""

from __future__ import annotations

import base64
import dataclasses
import re
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Any

import pytest

from authsvc import deadline
from authsvc import settings as settings_module
from authsvc.crypto import blocklist, passwords
from authsvc.crypto.keyring import Keyring, generate_key_spec
from authsvc.http import public
from authsvc.settings import ConfigError, Env, Settings

KEY = generate_key_spec("k1")
POSTGRES = "postgresql://authsvc@db.internal/authsvc"
PUBLIC = "https://id.example.com"
# Passkeys on the public domain, as production needs.
PASSKEYS = {"webauthn_rp_id": "id.example.com", "webauthn_origins": PUBLIC}
WEBHOOK_SECRET = {"alert_webhook_secret": "webhook-secret-of-at-least-32-characters"}


def from_env(**variables: str) -> Settings:
    return Settings.from_env(
        {f"AUTHSVC_{name.upper()}": value for name, value in variables.items()}
    )


def problems_of(**env: str) -> list[str]:
    """The problems ConfigError lists for these settings (a test fails when there are none)."""
    with pytest.raises(ConfigError) as excinfo:
        from_env(**env)
    return excinfo.value.problems


def test_defaults_without_any_variable():
    settings = Settings.from_env({})

    assert settings == Settings()
    assert settings.env is Env.DEVELOPMENT
    assert settings.resolved_database_url == "sqlite:///var/authsvc.db"
    assert settings.rate_limit_storage_url == "memory://"
    assert settings.breached_passwords_path == Path("var/breached-passwords.bin")


def test_only_the_given_mapping_is_read(monkeypatch):
    monkeypatch.setenv("AUTHSVC_JWT_AUDIENCE", "from-os-environ")

    assert Settings.from_env({}).jwt_audience == "authsvc"
    assert Settings.from_env().jwt_audience == "from-os-environ"


def test_other_variables_are_ignored():
    settings = Settings.from_env(
        {
            "PATH": "/bin",
            "AUTHSVC_TEST_DATABASE_URL": "x",
            "AUTHSVC_E2E_REDIS_URL": "x",
            "authsvc_jwt_audience": "lower-case prefix",
        }
    )

    assert settings == Settings()


def test_a_variable_that_names_no_setting_is_refused_with_the_likely_name():
    # A typo would otherwise leave the default in force: here, trusting no proxy hop and
    # counting every client behind the proxy as one address.
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {"AUTHSVC_TRUSTED_PROXY": "1", "AUTHSVC_REQIURE_MFA": "true", "AUTHSVC_X": "1"}
        )

    assert sorted(caught.value.problems) == [
        "AUTHSVC_REQIURE_MFA is not a setting (did you mean AUTHSVC_REQUIRE_MFA?)",
        "AUTHSVC_TRUSTED_PROXY is not a setting (did you mean AUTHSVC_TRUSTED_PROXIES?)",
        "AUTHSVC_X is not a setting",
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("10m", timedelta(minutes=10)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("1500ms", timedelta(seconds=1.5)),
        ("45", timedelta(seconds=45)),
        (" 5m ", timedelta(minutes=5)),
        ("0s", timedelta(0)),
        ("36500d", timedelta(days=36500)),  # a century: the longest
    ],
)
def test_durations(raw, expected):
    assert from_env(alert_cooldown=raw).alert_cooldown == expected


@pytest.mark.parametrize(
    "raw",
    ["10 minutes", "1.5h", "-5s", "5w", "m", "", "10mm", "36501d", "1000000d", "9" * 5000 + "s"],
)
def test_bad_durations(raw):
    [problem] = problems_of(refresh_token_ttl=raw)
    assert problem.startswith("AUTHSVC_REFRESH_TOKEN_TTL: expected a duration")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        (" On ", True),
        ("false", False),
        ("0", False),
        ("no", False),
        ("off", False),
        ("False", False),
    ],
)
def test_booleans(raw, expected):
    assert from_env(require_mfa=raw).require_mfa is expected


@pytest.mark.parametrize("raw", ["", "maybe", "2", "y", "enabled"])
def test_bad_booleans(raw):
    with pytest.raises(ConfigError, match="AUTHSVC_REQUIRE_MFA: expected a boolean"):
        from_env(require_mfa=raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://a.example", ("https://a.example",)),
        ("https://a.example, https://b.example", ("https://a.example", "https://b.example")),
        ("https://a.example,,  ,https://b.example,", ("https://a.example", "https://b.example")),
        ("", ()),
    ],
)
def test_tuples(raw, expected):
    assert from_env(cors_origins=raw).cors_origins == expected


def test_numbers_paths_and_strings():
    settings = from_env(
        argon2_time_cost="3",
        hash_queue_timeout="0.25",
        var_dir="/srv/authsvc",
        breached_passwords_file="/data/pwned.bin",
        public_url="https://id.example",
        redis_url="redis://cache:6379/2",
        trusted_proxies="2",
    )

    assert settings.argon2_time_cost == 3
    assert settings.hash_queue_timeout == 0.25
    assert settings.var_dir == Path("/srv/authsvc")
    assert settings.breached_passwords_path == Path("/data/pwned.bin")
    assert settings.public_url == "https://id.example"
    assert settings.rate_limit_storage_url == "redis://cache:6379/2"
    assert settings.trusted_proxies == 2


def test_empty_optional_values_mean_unset():
    settings = from_env(redis_url="", breached_passwords_file="")

    assert settings.redis_url is None
    assert settings.breached_passwords_file is None


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("argon2_time_cost", "two", "expected an integer"),
        ("trusted_proxies", "1.5", "expected an integer"),
        ("hash_queue_timeout", "soon", "expected a number"),
        ("hash_queue_timeout", "nan", "expected a finite number"),
        ("outbox_poll_interval", "inf", "expected a finite number"),
        ("env", "staging", "expected 'development' or 'production'"),
    ],
)
def test_bad_scalars(name, raw, message):
    [problem] = problems_of(**{name: raw})
    assert problem.startswith(f"AUTHSVC_{name.upper()}: {message}")


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as excinfo:
        from_env(
            access_token_ttl="soon",
            require_mfa="perhaps",
            argon2_time_cost="x",
            password_min_length="4",
            limit_ip="lots",
            encryption_keys="not-a-key",
        )

    problems = excinfo.value.problems
    assert len(problems) == 6
    joined = "\n".join(problems)
    for name in (
        "ACCESS_TOKEN_TTL",
        "REQUIRE_MFA",
        "ARGON2_TIME_COST",
        "PASSWORD_MIN_LENGTH",
        "LIMIT_IP",
        "ENCRYPTION_KEYS",
    ):
        assert f"AUTHSVC_{name}" in joined
    assert str(excinfo.value) == "; ".join(problems)
    assert "not-a-key" not in str(excinfo.value)  # key material is never echoed


@pytest.mark.parametrize(
    "name",
    [
        "verification_token_ttl",
        "reset_token_ttl",
        "breach_notice_token_ttl",
        "change_token_ttl",
        "mfa_token_ttl",
        "totp_pending_ttl",
        "reauth_window",
    ],
)
@pytest.mark.parametrize("raw", ["0", "30s"])
def test_a_step_a_person_takes_has_at_least_a_minute(name, raw):
    # A mailed link, a login's second step or a forced change that ends at once (or before
    # anyone could type a code) refused every use of it, silently.
    assert problems_of(**{name: raw}) == [f"AUTHSVC_{name.upper()} must be at least 1m"]
    assert getattr(from_env(**{name: "1m"}), name) == timedelta(minutes=1)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        # A session ended before its first refresh: every login good for one access token.
        (
            {"refresh_token_ttl": "0"},
            "AUTHSVC_REFRESH_TOKEN_TTL must be >= AUTHSVC_ACCESS_TOKEN_TTL",
        ),
        (
            {"refresh_token_ttl": "5m"},
            "AUTHSVC_REFRESH_TOKEN_TTL must be >= AUTHSVC_ACCESS_TOKEN_TTL",
        ),
        # No factor of that kind could ever be added.
        ({"totp_max_factors": "0"}, "AUTHSVC_TOTP_MAX_FACTORS must be >= 1"),
        ({"webauthn_max_credentials": "-1"}, "AUTHSVC_WEBAUTHN_MAX_CREDENTIALS must be >= 1"),
        # Every upload answered 413.
        ({"breach_upload_max_bytes": "0"}, "AUTHSVC_BREACH_UPLOAD_MAX_BYTES must be >= 1024"),
    ],
)
def test_limits_that_would_refuse_every_use_are_refused(changes, problem):
    assert problems_of(**changes) == [problem]


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        # A wait for a busy hashing slot beyond threading.TIMEOUT_MAX raised OverflowError:
        # every login answered 500 while another hashed.
        (
            {"hash_queue_timeout": "1e10"},
            "AUTHSVC_MAX_CONCURRENT_HASHES must be >= 1 and AUTHSVC_HASH_QUEUE_TIMEOUT from 0 "
            "to 60 (seconds)",
        ),
        # A breach notice job's next run (one notice, then 1/rate seconds) left the calendar.
        (
            {"notify_rate_per_second": "1e-12"},
            "AUTHSVC_BREACH_BATCH_SIZE must be > 0 and AUTHSVC_NOTIFY_RATE_PER_SECOND at least "
            "0.01 (one notice every 100 s)",
        ),
    ],
)
def test_waits_that_would_overflow_at_run_time_are_refused(changes, problem):
    assert problems_of(**changes) == [problem]


@pytest.mark.parametrize("raw", ["0.000001", "600", "3600"])
def test_the_outbox_poll_interval_keeps_within_what_it_means(raw):
    # A millionth of a second polled the database in a busy loop; past the housekeeping
    # sweep (10 minutes), which wakes the loop, the interval was not the one in force.
    assert problems_of(outbox_poll_interval=raw) == [
        "AUTHSVC_OUTBOX_POLL_INTERVAL must be from 0.01 to 60 (seconds)"
    ]
    assert from_env(outbox_poll_interval="0.05").outbox_poll_interval == 0.05
    assert from_env(outbox_poll_interval="60").outbox_poll_interval == 60


def test_a_limit_period_stays_within_the_longest_duration():
    # Redis refuses an expiry that long (ResponseError): every throttled request answered 503.
    assert problems_of(limit_ip="10/99999999999 years") == [
        "AUTHSVC_LIMIT_IP must look like '10/minute' or '100 per day', with a period of at "
        "most 36500 days"
    ]
    assert from_env(limit_ip="10/100 years").limit_ip == "10/100 years"


def test_the_longest_waits_allowed():
    settings = from_env(hash_queue_timeout="60", notify_rate_per_second="0.01")

    assert (settings.hash_queue_timeout, settings.notify_rate_per_second) == (60, 0.01)


@pytest.mark.parametrize(
    "name", ["audit_retention", "expired_retention", "failed_message_retention"]
)
@pytest.mark.parametrize("raw", ["400", "1h", "23h"])
def test_a_retention_keeps_at_least_a_day(name, raw):
    # "400" is 400 seconds: `authsvc audit prune` would have deleted all but the last minutes
    # of the trail, which its own --before and --older-than refuse; "7" for the worker's
    # sweep deleted ended sessions and parked mail seconds after they ended.
    assert problems_of(**{name: raw}) == [
        f"AUTHSVC_{name.upper()} must be 0 (keep all) or at least 1d"
    ]
    assert getattr(from_env(**{name: "1d"}), name) == timedelta(days=1)
    assert getattr(from_env(**{name: "0"}), name) == timedelta(0)


@pytest.mark.parametrize(
    "changes",
    [
        {"password_min_length": "7"},
        {"password_min_length": "20", "password_max_length": "10"},
        {"password_max_length": "1025"},  # requests carry at most 1024 characters
        {"argon2_time_cost": "0"},
        {"argon2_memory_kib": "7"},
        {"max_concurrent_hashes": "0"},
        {"session_idle_timeout": "5m"},  # shorter than the access tokens it would cut off
        {"trusted_proxies": "-1"},
        {"max_body_bytes": "100"},
        {"limit_email": "20"},
        {"limit_failures_per_account": "100/fortnight"},
        {"limit_ip_email": "0/minute"},
        {"encryption_keys": "k1:short"},
        {"encryption_keys": f"{KEY},bad key:{'A' * 43}"},
        {"argon2_parallelism": "0"},
        {"argon2_parallelism": "300", "argon2_memory_kib": "65536"},
        {"argon2_memory_kib": str(5 * 1024 * 1024)},
        {"argon2_time_cost": "21"},
        {"hash_queue_timeout": "-1"},
        {"access_token_ttl": "0s"},
        {"outbox_poll_interval": "0"},
        {"alert_webhook_timeout": "-3"},
        {"alert_webhook_timeout": "61"},  # beyond the limit of the whole POST
        # PostgreSQL's lock_timeout and statement_timeout: milliseconds that fit an int, and
        # not so short that ordinary statements are cancelled.
        {"db_lock_timeout": "50ms"},
        {"db_statement_timeout": "2d"},
        {"alert_webhook_url": "https://alerts.example.com/x", "alert_webhook_secret": "s" * 31},
        # URLs no alert can ever be POSTed to (urllib takes user:password@ for part of the host
        # name, and refuses a port that is no number, a space or a character that is not ASCII
        # in the path, quoting the URL): each alert would be retried without end.
        {"alert_webhook_url": "https://alerts:pass@alerts.example.com/x", **WEBHOOK_SECRET},
        {"alert_webhook_url": "https://alerts.example.com:44x/x", **WEBHOOK_SECRET},
        {"alert_webhook_url": "https://[::1/x", **WEBHOOK_SECRET},
        {"alert_webhook_url": "https://alerts.example.com/hooks/T0 B0", **WEBHOOK_SECRET},
        {"alert_webhook_url": "https://alerts.example.com/x\x00", **WEBHOOK_SECRET},
        {"alert_webhook_url": "https://alerts.example.com/\u00e9", **WEBHOOK_SECRET},
        {"alert_webhook_url": "https:///x", **WEBHOOK_SECRET},
        {"log_level": "LOUD"},
        {"database_url": "not a url"},
        {"database_url": "mysql://db/authsvc"},
        {"database_url": "postgresql://authsvc@db:5432x/authsvc"},  # a port that is no number
        {"database_url": "postgresql://authsvc@[::1/authsvc"},
        {"database_url": "postgresql+psycopg2://db/authsvc"},  # a driver that is not installed
        {"database_url": "postgresql+asyncpg://db/authsvc"},
        {"database_url": "sqlite+pysqlcipher:///var/authsvc.db"},
        {"redis_url": "carrier-pigeon://x"},
        {"jwt_audience": ""},  # PyJWT refuses every token with an empty aud claim
        # A token no scraper can send: HTTP strips the space and line break around a header
        # value, and reads its bytes as Latin-1.
        {"metrics_token": "prometheus-scrape-token-0123456789abcdef\n"},
        {"metrics_token": "prometheus-scrape-token-0123456789abcdef "},
        {"metrics_token": "prometheus-scrape-token-0123456789abcdéf"},
        {"jwt_audience": "  "},
        # The base of every mailed link and the token issuer: links with no host otherwise.
        {"public_url": ""},
        {"public_url": " "},
        {"public_url": "auth.example.com"},
        {"public_url": "/auth"},
        {"public_url": "https://"},
        {"public_url": "ftp://auth.example.com"},
    ],
)
def test_invalid_values(changes):
    assert len(problems_of(**changes)) == 1


@pytest.mark.parametrize(
    "url",
    [
        "https://alerts.example.com/hooks/T0/B0?token=abc%20def",
        "http://127.0.0.1:9000/alerts",
        "https://[2001:db8::1]:8443/alerts",
        "https://b\u00fccher.example/alerts",  # a host name is sent IDNA-encoded
        "https://alerts.example.com/x\n",  # urllib strips the space around a URL
    ],
)
def test_webhook_urls_that_urllib_can_post_to(url):
    assert from_env(alert_webhook_url=url, **WEBHOOK_SECRET).alert_webhook_url == url


@pytest.mark.parametrize(
    "spec", ["10/minute", "100 per day", "5/2 hours", "3/day", "1/second", "1000 per 10 minutes"]
)
def test_rate_limit_notation(spec):
    assert from_env(limit_ip=spec).limit_ip == spec


def test_several_encryption_keys_keep_their_order():
    second = generate_key_spec("k2")

    assert from_env(encryption_keys=f"{second}, {KEY}").encryption_keys == (second, KEY)


def test_production_refuses_dev_keys_and_sqlite():
    problems = problems_of(env="production")

    problems = problems
    assert any("AUTHSVC_ENCRYPTION_KEYS is required in production" in p for p in problems)
    assert any("SQLite is refused in production" in p for p in problems)
    assert all("AUTHSVC_ALLOW_INSECURE_PRODUCTION" in p for p in problems)


@pytest.mark.parametrize(
    ("variables", "complaint"),
    [
        ({"database_url": POSTGRES}, "AUTHSVC_ENCRYPTION_KEYS"),
        ({"encryption_keys": KEY}, "SQLite"),
        ({"encryption_keys": KEY, "database_url": "sqlite:////srv/authsvc.db"}, "SQLite"),
    ],
)
def test_production_needs_both(variables, complaint):
    with pytest.raises(ConfigError) as excinfo:
        from_env(
            env="production",
            mail_url="smtp://relay.example.com",
            public_url=PUBLIC,
            **PASSKEYS,
            **variables,
        )

    [problem] = excinfo.value.problems
    assert complaint in problem


def test_production_with_keys_and_postgresql():
    settings = from_env(
        env="PRODUCTION",
        encryption_keys=KEY,
        database_url=POSTGRES,
        mail_url="smtp+starttls://relay.example.com",
        public_url=PUBLIC,
        **PASSKEYS,
    )

    assert settings.env is Env.PRODUCTION
    assert settings.encryption_keys == (KEY,)


def test_production_refuses_console_mail_which_prints_links():
    with pytest.raises(ConfigError) as excinfo:
        from_env(
            env="production",
            encryption_keys=KEY,
            database_url=POSTGRES,
            public_url=PUBLIC,
            **PASSKEYS,
        )

    [problem] = excinfo.value.problems
    assert "console://" in problem


@pytest.mark.parametrize(
    "sender",
    [
        "no-reply@example.com\r\nBcc: list@attacker.example",  # every mail failed to build
        "no-reply@example.com\nBcc: list@attacker.example",
        # Line breaks to str.splitlines, which the mail layer refuses in every header value:
        # quoted, they passed as a display name, and each mail was retried without end.
        '"Ops\u2028Bcc: list@attacker.example" <no-reply@example.com>',
        '"Ops\u2029Team" <no-reply@example.com>',
        '"Ops\x85Team" <no-reply@example.com>',
        "not an address",  # servers refuse the MAIL FROM of every message
        "a@example.com, b@example.com",
        "authsvc <no-reply>",
        "",
    ],
)
def test_mail_from_must_be_one_address(sender):
    problems = Settings(mail_from=sender).problems()

    assert problems == [
        "AUTHSVC_MAIL_FROM must be one address on one line, such as "
        "'authsvc <no-reply@example.com>'"
    ]


@pytest.mark.parametrize(
    "sender",
    [
        "authsvc <no-reply@localhost>",
        "no-reply@example.com",
        '"Example, Inc." <no-reply@example.com>',
        "Sécurité <sécurité@exemple.fr>",
    ],
)
def test_mail_from_takes_an_address_with_or_without_a_name(sender):
    assert Settings(mail_from=sender).problems() == []


@pytest.mark.parametrize("scheme", ["smtp+starttls", "smtps"])
def test_production_refuses_smtp_without_certificate_checks(scheme):
    url = f"{scheme}://relay.example.com?verify=False"
    with pytest.raises(ConfigError) as excinfo:
        from_env(
            env="production",
            encryption_keys=KEY,
            database_url=POSTGRES,
            mail_url=url,
            public_url=PUBLIC,
            **PASSKEYS,
        )

    [problem] = excinfo.value.problems
    assert "verify=false" in problem and "AUTHSVC_ALLOW_INSECURE_PRODUCTION" in problem
    allowed = from_env(
        env="production",
        encryption_keys=KEY,
        database_url=POSTGRES,
        mail_url=url,
        allow_insecure_production="true",
    )
    assert allowed.mail_url == url
    assert from_env(mail_url=url).mail_url == url  # development: a test server's own cert


@pytest.mark.parametrize(
    "public_url",
    [
        None,  # the default, http://localhost:8000: links to the reader's own machine
        "http://auth.example.com",  # tokens in the clear
    ],
)
def test_production_needs_an_https_public_url_for_the_links_it_mails(public_url):
    given = {"public_url": public_url} if public_url is not None else {}
    production = {
        "env": "production",
        "encryption_keys": KEY,
        "database_url": POSTGRES,
        "mail_url": "smtp+starttls://relay.example.com",
        **PASSKEYS,
    }
    [problem] = problems_of(**production, **given)
    assert problem.startswith("AUTHSVC_PUBLIC_URL must be an https:// URL in production")
    assert "AUTHSVC_ALLOW_INSECURE_PRODUCTION" in problem
    assert from_env(**production, public_url="https://id.example.com/auth").env is Env.PRODUCTION
    assert from_env(**production, **given, allow_insecure_production="true")


def test_production_can_be_told_to_allow_insecure_defaults():
    settings = from_env(env="production", allow_insecure_production="true")

    assert settings.env is Env.PRODUCTION
    assert settings.encryption_keys == ()
    assert settings.resolved_database_url.startswith("sqlite")


def test_development_allows_dev_keys_and_sqlite():
    assert from_env(env="development").encryption_keys == ()


def _as_environment_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, timedelta):
        return f"{int(value.total_seconds() * 1000)}ms"
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Settings)])
def test_every_field_can_be_set_from_the_environment(field):
    default = getattr(Settings(), field)

    settings = from_env(**{field: _as_environment_value(default)})

    assert getattr(settings, field) == default


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().env = Env.PRODUCTION  # type: ignore[misc]


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        # 44 base64url characters that decode to 33 bytes: the old pattern let it through, and
        # the key ring then refused it with a traceback in every command.
        (("a:" + "A" * 44,), "each entry must be 'kid:base64url(32 bytes)'"),
        (("a:" + "A" * 43, "a:" + "B" * 43), "key ids must be unique"),
        (("a:" + "A" * 41 + "!!",), "each entry must be 'kid:base64url(32 bytes)'"),
        (("a b:" + "A" * 43,), "each entry must be 'kid:base64url(32 bytes)'"),
    ],
)
def test_a_key_ring_the_keyring_would_refuse_is_a_one_line_problem(keys, problem):
    problems = Settings(encryption_keys=keys).problems()

    assert problems == [f"AUTHSVC_ENCRYPTION_KEYS: {problem}"]


def _spec(kid: str, raw: bytes) -> str:
    return f"{kid}:{base64.urlsafe_b64encode(raw).decode().rstrip('=')}"


WEAK_KEYS = {
    "zeros": bytes(32),  # a placeholder
    "ones": b"\xff" * 32,
    "pattern": bytes(range(8)) * 4,
    "passphrase": b"correct horse battery staple 42!",
    "hex-text": b"0123456789abcdef0123456789abcdef",  # 128 bits at most
}


@pytest.mark.parametrize("raw", WEAK_KEYS.values(), ids=WEAK_KEYS.keys())
def test_a_first_key_that_is_not_random_bytes_is_refused(raw):
    problems = Settings(encryption_keys=(_spec("weak", raw), KEY)).problems()

    [problem] = problems
    assert problem.startswith(
        "AUTHSVC_ENCRYPTION_KEYS: the first key 'weak' is not 32 random bytes"
    )
    assert "authsvc keys generate" in problem
    assert _spec("weak", raw).partition(":")[2] not in problem


@pytest.mark.parametrize("raw", WEAK_KEYS.values(), ids=WEAK_KEYS.keys())
def test_a_weak_key_after_a_random_first_one_is_kept_to_rotate_away_from(raw):
    assert Settings(encryption_keys=(KEY, _spec("weak", raw))).problems() == []


def test_a_first_key_that_repeats_another_entry_is_refused():
    # A "rotation" to the same bytes under a new id would change nothing.
    again = "k2:" + KEY.partition(":")[2]

    problems = Settings(encryption_keys=(again, KEY)).problems()

    assert problems == ["AUTHSVC_ENCRYPTION_KEYS: the first key 'k2' is 'k1' again"]


def test_generated_keys_are_accepted():
    keys = tuple(generate_key_spec(f"k{n}") for n in range(200))

    assert Settings(encryption_keys=keys).problems() == []


def test_the_longest_password_policy_is_what_a_request_may_carry():
    assert settings_module.MAX_PASSWORD_LENGTH == public.PASSWORD_MAX
    assert from_env(password_max_length="1024").password_max_length == 1024


@pytest.mark.parametrize("words", ["Acme, IBM", "ab", "Acme,\uff21\uff37\uff33"])
def test_a_context_word_that_would_be_left_out_is_refused(words):
    # Pieces shorter than four characters are no context words (crypto.blocklist): such a
    # word was accepted and refused nothing (fullwidth AWS is AWS after NFKC).
    [problem] = problems_of(password_context_words=words)
    assert problem.startswith("AUTHSVC_PASSWORD_CONTEXT_WORDS: ")
    assert "at least 4 characters" in problem


def test_context_words_are_as_long_as_the_policy_takes():
    assert settings_module.MIN_CONTEXT_WORD_LENGTH == blocklist.CONTEXT_WORD_MIN_LENGTH
    fullwidth_gizmo = "\uff27\uff49\uff5a\uff4d\uff4f"
    words = from_env(password_context_words=f"Acme, {fullwidth_gizmo}").password_context_words
    assert blocklist.context_words(words) == {"acme", "gizmo"}


def test_the_argon2_bounds_are_those_stored_hashes_are_verified_within():
    # A hash made under any admitted settings must verify after they change.
    assert settings_module.MAX_ARGON2_MEMORY_KIB == passwords.MAX_OWN_ARGON2_MEMORY_KIB
    assert settings_module.MAX_ARGON2_TIME_COST == passwords.MAX_OWN_ARGON2_TIME_COST


@pytest.mark.parametrize("issuer", ["", "  ", "Acme: Staff"])
def test_a_totp_issuer_that_would_break_the_key_uri_is_refused(issuer):
    with pytest.raises(ConfigError) as caught:
        from_env(totp_issuer=issuer)

    assert caught.value.problems == ["AUTHSVC_TOTP_ISSUER must not be empty or contain a colon"]
    assert from_env(totp_issuer="Acme Staff").totp_issuer == "Acme Staff"


def _readme_settings_table() -> list[str]:
    """The rows of README.md's table of settings, under its "Configuration" heading."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| `")]


def _names_in_first_cell(row: str) -> set[str]:
    """`AUTHSVC_ARGON2_TIME_COST` / `_MEMORY_KIB` names AUTHSVC_ARGON2_MEMORY_KIB: a name given
    by its end replaces the end of the cell's first full name."""
    cell = row.split("|")[1]
    full = re.findall(r"`(AUTHSVC_[A-Z0-9_]+)`", cell)
    names = set(full)
    known = {f"AUTHSVC_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    for end in re.findall(r"`(_[A-Z0-9_]+)`", cell):
        parts = full[0].split("_")
        candidates = {"_".join(parts[:cut]) + end for cut in range(1, len(parts))}
        names |= (candidates & known) or {full[0] + "?" + end}
    return names


def test_the_readme_table_names_every_setting_and_only_settings():
    rows = _readme_settings_table()
    listed = set().union(*(_names_in_first_cell(row) for row in rows))
    mentioned = listed | {name for row in rows for name in re.findall(r"AUTHSVC_[A-Z0-9_]+", row)}
    known = {f"AUTHSVC_{f.name.upper()}" for f in dataclasses.fields(Settings)}

    assert sorted(known - mentioned) == []
    assert sorted(listed - known) == []


def _readme_defaults() -> list[tuple[str, str]]:
    """(variable, default cell) of each setting README's table names: a row of several names
    gives as many defaults, separated by " / " or ", ", or one for all of them."""
    known = {f"AUTHSVC_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    pairs = []
    for row in _readme_settings_table():
        cell, defaults_cell = row.split("|")[1:3]
        names = re.findall(r"`(AUTHSVC_[A-Z0-9_]+|_[A-Z0-9_]+)`", cell)
        parts = names[0].split("_")
        full = [
            name
            if name.startswith("AUTHSVC_")
            else next(iter({"_".join(parts[:cut]) + name for cut in range(1, len(parts))} & known))
            for name in names
        ]
        defaults = re.split(r" / |, ", defaults_cell.strip())
        if len(full) == 1 or len(defaults) == 1:
            defaults = [defaults_cell.strip()] * len(full)
        assert len(defaults) == len(full), row
        pairs += zip(full, defaults, strict=True)
    return pairs


# Defaults the table gives in words, or resolved from another setting.
_DEFAULTS_IN_WORDS = {
    "AUTHSVC_ENCRYPTION_KEYS": "dev keys in `var/`",
    "AUTHSVC_UI_ENABLED": "on in development, off in production",
}


def test_the_readme_table_gives_every_true_default():
    settings = Settings()
    types = {f"AUTHSVC_{f.name.upper()}": f for f in dataclasses.fields(Settings)}
    resolved = {
        "AUTHSVC_DATABASE_URL": settings.resolved_database_url,
        "AUTHSVC_BREACHED_PASSWORDS_FILE": settings.breached_passwords_path,
    }
    checked = set()
    for name, cell in _readme_defaults():
        field = types[name]
        default = resolved.get(name, getattr(settings, field.name))
        if name in _DEFAULTS_IN_WORDS:
            assert cell == _DEFAULTS_IN_WORDS[name]
        elif cell.startswith(("unset", "empty")):
            assert default in (None, ()), name
        else:
            value = re.fullmatch(r"`([^`]*)`", cell)
            assert value, f"{name}: {cell!r}"
            kind = field.type.removesuffix(" | None")  # type: ignore[union-attr]
            assert settings_module._parse(kind, value[1]) == default, name
        checked.add(name)
    assert checked == set(types)


@pytest.mark.parametrize(
    ("rp_id", "origins"),
    [
        ("example.com", "https://example.org"),  # another domain
        ("auth.example.com", "https://example.com"),  # a parent of the RP ID, not a child
        ("example.com", "https://badexample.com"),  # a suffix, not a subdomain
        ("example.com", "https://id.example.com, not an origin"),
    ],
)
def test_webauthn_origins_must_be_on_the_rp_id(rp_id, origins):
    # Browsers refuse such a ceremony: every security key and passkey would fail, silently.
    [problem] = problems_of(webauthn_rp_id=rp_id, webauthn_origins=origins)
    assert problem.startswith("AUTHSVC_WEBAUTHN_ORIGINS: ")
    assert from_env(webauthn_rp_id="example.com", webauthn_origins="https://id.example.com")


@pytest.mark.parametrize(
    ("origin", "written"),
    [
        ("https://id.example.com/", "https://id.example.com"),  # a URL's trailing slash
        ("https://id.example.com/login", "https://id.example.com"),
        ("https://id.example.com?x=1", "https://id.example.com"),
        ("https://id.example.com#top", "https://id.example.com"),
        ("HTTPS://ID.Example.com", "https://id.example.com"),
        ("https://id.example.com:443", "https://id.example.com"),  # the default port
        ("http://id.example.com:80", "http://id.example.com"),
        ("https://ada@id.example.com", "https://id.example.com"),
        ("https://id.example.com:99999", None),  # no port
        ("https://id.example.com:https", None),
    ],
)
def test_webauthn_origins_are_written_as_browsers_send_them(origin, written):
    # The client data's origin is compared as a string with each one: any other spelling of
    # the same origin matches no browser, and every security key and passkey fails, silently.
    [problem] = problems_of(webauthn_rp_id="example.com", webauthn_origins=origin)
    assert problem.startswith(f"AUTHSVC_WEBAUTHN_ORIGINS: {origin!r} ")
    if written is not None:
        assert problem.endswith(f": write {written!r}")
        assert from_env(webauthn_rp_id="example.com", webauthn_origins=written)
    assert from_env(webauthn_rp_id="example.com", webauthn_origins="https://id.example.com:8443")


def test_production_needs_passkeys_on_https_origins():
    production = {
        "env": "production",
        "encryption_keys": KEY,
        "database_url": POSTGRES,
        "mail_url": "smtp+starttls://relay.example.com",
        "public_url": PUBLIC,
    }
    with pytest.raises(ConfigError) as excinfo:
        from_env(**production)  # the defaults: localhost over http

    [problem] = excinfo.value.problems
    assert problem.startswith("AUTHSVC_WEBAUTHN_ORIGINS must be https:// origins in production")
    assert from_env(**production, **PASSKEYS).env is Env.PRODUCTION
    assert from_env(**production, allow_insecure_production="true")


@pytest.mark.parametrize(
    ("lock", "statement", "lock_is", "statement_is"),
    [
        ("0", "0", timedelta(0), timedelta(0)),
        ("100ms", "1d", timedelta(milliseconds=100), timedelta(days=1)),
        ("2s", "15s", timedelta(seconds=2), timedelta(seconds=15)),
    ],
)
def test_database_timeouts_may_be_off_or_within_bounds(lock, statement, lock_is, statement_is):
    settings = from_env(db_lock_timeout=lock, db_statement_timeout=statement)

    assert (settings.db_lock_timeout, settings.db_statement_timeout) == (lock_is, statement_is)


def test_no_timeout_per_read_may_exceed_the_limit_of_a_whole_exchange():
    assert settings_module.MAX_EXCHANGE_SECONDS == deadline.EXCHANGE_SECONDS


def test_repr_shows_no_secret():
    # A settings object or a key ring in a traceback, a debugger or a log of an object shows
    # none of the secrets, nor the URLs that may hold one.
    spec = generate_key_spec("k1")
    settings = Settings(
        database_url="postgresql://authsvc:db-pass-1@db/authsvc",
        redis_url="redis://:redis-pass-2@cache:6379/0",
        mail_url="smtps://mailer:mail-pass-3@smtp.example.com",
        encryption_keys=(spec,),
        alert_webhook_url="https://hooks.example.com/alert?key=hook-key-4",
        alert_webhook_secret="hook-secret-5" * 3,
        metrics_token="metrics-token-6",
    )
    shown = repr(settings) + repr(Keyring.from_specs([spec]))

    for secret in ("db-pass-1", "redis-pass-2", "mail-pass-3", "hook-key-4", "hook-secret-5",
                   "metrics-token-6", spec.partition(":")[2]):  # fmt: skip
        assert secret not in shown
    assert "Keyring(kids=['k1'])" in shown and "argon2_time_cost=" in shown


@pytest.mark.parametrize(
    "url", ["smtp://authsvc:s3cret@relay.example.com:25", "SMTP://authsvc:s3cret@relay.example.com"]
)
def test_production_refuses_plain_smtp_with_credentials(url):
    production = {
        "env": "production",
        "encryption_keys": KEY,
        "database_url": POSTGRES,
        "public_url": PUBLIC,
        **PASSKEYS,
    }
    with pytest.raises(ConfigError) as excinfo:
        from_env(**production, mail_url=url)

    [problem] = excinfo.value.problems
    assert "smtps://" in problem and "smtp+starttls://" in problem
    assert "AUTHSVC_ALLOW_INSECURE_PRODUCTION" in problem
    assert "s3cret" not in problem and "\n" not in problem
    assert from_env(**production, mail_url=url, allow_insecure_production="true").mail_url == url
    assert from_env(mail_url=url).mail_url == url  # development: a test server


@pytest.mark.parametrize(
    "url",
    [
        "smtp://localhost:25",  # a local relay, no password to give away
        "smtp://relay.internal",
        "smtp+starttls://authsvc:s3cret@relay.example.com:587",
        "smtps://authsvc:s3cret@relay.example.com",
    ],
)
def test_production_takes_plain_smtp_without_credentials_and_tls_with_them(url):
    settings = from_env(
        env="production",
        encryption_keys=KEY,
        database_url=POSTGRES,
        public_url=PUBLIC,
        mail_url=url,
        **PASSKEYS,
    )
    assert settings.mail_url == url
