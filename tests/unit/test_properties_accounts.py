"""Property tests for account input and password lifetime.

- ``normalize_email`` returns a canonical address or raises InvalidRequest (field "email") for
  any text at all; the canonical form is stable and the same for case, width and surrounding
  space variants of an address (rate limits and look-ups key on it).
- ``mailbox_key`` gives every address one key, the same for its +tagged spellings and for its
  domain in Unicode and in punycode (limits on mail sent to an address count it).
- A password stays valid however long ago it was set (ASVS 6.2.10: no periodic rotation).
"""

from __future__ import annotations

import dataclasses
import unicodedata
from collections.abc import Iterator
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from authsvc.app import Runtime, build_runtime
from authsvc.db import utcnow
from authsvc.errors import InvalidRequest
from authsvc.models import User
from authsvc.services import accounts
from authsvc.services.accounts import MAX_EMAIL_LENGTH, mailbox_key, normalize_email
from authsvc.services.context import Client
from authsvc.settings import Settings

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

any_text = st.text(
    alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=()),
    max_size=80,
)
emailish = st.builds(
    lambda local, domain, tld: f"{local}@{domain}.{tld}",
    st.text(min_size=1, max_size=70),
    st.text(min_size=1, max_size=40),
    st.text(min_size=1, max_size=10),
)
huge = st.integers(min_value=250, max_value=10_000).map(lambda n: "a" * n + "@example.com")


@FAST
@given(raw=any_text | emailish | huge | st.emails() | st.just(""))
def test_any_text_is_a_canonical_address_or_invalid_request(raw):
    try:
        email = normalize_email(raw)
    except InvalidRequest as exc:
        assert exc.extra == {"field": "email"}
        return
    assert len(email) <= MAX_EMAIL_LENGTH
    assert email.count("@") == 1
    assert email == email.strip() and email.isprintable()
    email.encode("utf-8")
    assert normalize_email(email) == email  # canonical: normalising again changes nothing


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@FAST
@given(address=st.emails(), data=st.data())
def test_case_width_and_space_variants_are_the_same_address(address, data):
    try:
        canonical = normalize_email(address)
    except InvalidRequest:
        return  # st.emails() allows forms (e.g. 65+ character local parts) the service refuses
    variant = data.draw(
        st.sampled_from(
            [
                address.upper(),
                address.swapcase(),
                f"  {address}\t",
                _fullwidth(address),
                unicodedata.normalize("NFKD", _fullwidth(address.upper())),
            ]
        )
    )

    assert normalize_email(variant) == canonical


@pytest.mark.parametrize(
    ("spelled", "mailbox"),
    [
        ("ada@example.com", "ada@example.com"),
        ("Ada+News@Example.COM", "ada@example.com"),
        ("ada+1+2@example.com", "ada@example.com"),
        ("ada+1@bücher.de", "ada@xn--bcher-kva.de"),
        ("ADA+2@XN--BCHER-KVA.DE", "ada@xn--bcher-kva.de"),
        ("ada@BÜCHER.de", "ada@xn--bcher-kva.de"),
        ("+ada@example.com", "+ada@example.com"),  # nothing left without the tag: kept
        ("ada@" + "ü" * 64 + ".de", "ada@" + "ü" * 64 + ".de"),  # no IDNA form: as given
        ("ada@\ufffd.de", "ada@\ufffd.de"),  # a character IDNA prohibits: as given
        ("A.Da+1@gmail.com", "ada@gmail.com"),  # Gmail ignores dots
        ("a.d.a@GoogleMail.com", "ada@gmail.com"),  # and delivers googlemail.com alike
        ("a.da@example.com", "a.da@example.com"),  # elsewhere a dot is a character
    ],
)
def test_mailbox_key(spelled, mailbox):
    assert mailbox_key(normalize_email(spelled)) == mailbox


@FAST
@given(address=st.emails(), tag=st.text(max_size=10), data=st.data())
def test_every_spelling_of_an_address_has_its_mailbox_key(address, tag, data):
    local, _, domain = address.rpartition("@")
    variant = data.draw(
        st.sampled_from(
            [
                f"{local}+{tag}@{domain}",
                f"{local.upper()}@{domain.upper()}",
            ]
        )
    )
    try:
        email, spelled = normalize_email(address), normalize_email(variant)
    except InvalidRequest:
        return  # forms the service refuses (see above), or a tag it refuses
    key = mailbox_key(email)

    assert key.count("@") == 1
    assert mailbox_key(key) == key
    if not local.startswith("+"):
        assert mailbox_key(spelled) == key


@FAST
@given(label=st.text(alphabet=st.characters(whitelist_categories=("Ll", "Lo")), min_size=1))
def test_a_domain_in_unicode_and_in_punycode_is_one_mailbox(label):
    # The label as the service keeps it (NFKC, lower-cased), in punycode: a compatibility
    # character's own punycode is another domain name.
    canonical = unicodedata.normalize("NFKC", label).lower()
    try:
        punycode = canonical.encode("idna").decode("ascii")
        unicode = normalize_email(f"ada+1@{label}.de")
        ascii = normalize_email(f"ADA+2@{punycode.upper()}.DE")
    except (UnicodeError, InvalidRequest):
        return  # no IDNA form, or not a label the service takes

    assert mailbox_key(unicode) == mailbox_key(ascii) == f"ada@{punycode.lower()}.de"


# --- a password does not expire with age ----------------------------------------------------

PASSWORD = "a long-lived passphrase 7"


@pytest.fixture
def runtime(settings: Settings, connection: Connection) -> Iterator[Runtime]:
    # Generous throttles: this test logs in many times from one address on purpose.
    loose = dataclasses.replace(
        settings,
        limit_ip="10000/minute",
        limit_email="10000/minute",
        limit_ip_email="10000/minute",
    )
    runtime = build_runtime(loose, bind=connection)
    runtime.deps.limiter.reset()
    yield runtime
    runtime.deps.limiter.reset()
    runtime.dispose()


def test_a_password_stays_valid_however_long_ago_it_was_set(runtime, connection):
    deps = runtime.deps
    session = Session(
        bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
    )
    set_at = utcnow()
    session.add(
        User(
            email="old@example.com",
            password_hash=deps.hasher.hash(PASSWORD),
            password_set_at=set_at,
            email_verified_at=set_at,
            created_at=set_at,
            updated_at=set_at,
        )
    )
    session.flush()
    client = Client(ip="192.0.2.7", user_agent="pytest")

    @settings(max_examples=25, deadline=None)
    @given(age=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=365 * 30)))
    def logs_in(age: timedelta) -> None:
        result = accounts.login_with_password(
            session,
            deps,
            email="old@example.com",
            password=PASSWORD,
            client=client,
            now=set_at + age,
        )
        assert result.status == "authenticated"
        user = session.get(User, result.user_id)
        assert user is not None and not user.password_change_required

    try:
        logs_in()
    finally:
        session.close()
