"""The security documents stay true: docs/asvs.yaml, docs/asvs.md and docs/threat-model.md.

- The ASVS map covers every V6, V7 and V11 requirement of levels 1 and 2 of ASVS 5.0.0 once;
  every test it names exists; every "met" entry names a test; anything not met explains itself;
  docs/asvs.md shows the same statuses.
- Every test the threat model names exists; its route inventory is the contract's; the throttle,
  detector and session settings it quotes are the code's defaults; its cryptographic inventory
  lists every primitive the code uses.
- An answer the documents quote ("401 `invalid_mfa`") has the status of its problem code.
- Evidence for requirements no other test covers: no default accounts, no password hints, no
  `random`, no weak hashes or modes, and a sign-in page that masks passwords, lets password
  managers fill them and offers a logout.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Iterator
from datetime import timedelta
from functools import cache
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, func, select

from authsvc.db import Base
from authsvc.errors import AuthsvcError
from authsvc.models import AdminKey, RefreshToken, Session, User
from authsvc.schema import upgrade
from authsvc.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PACKAGE = ROOT / "authsvc"

# ASVS 5.0.0 (OWASP_Application_Security_Verification_Standard_5.0.0_en.csv): every requirement
# of V6, V7 and V11 at level 1 or 2, with its level.
IN_SCOPE: dict[str, int] = {
    # V6 Authentication
    "6.1.1": 1, "6.1.2": 2, "6.1.3": 2,
    "6.2.1": 1, "6.2.2": 1, "6.2.3": 1, "6.2.4": 1, "6.2.5": 1, "6.2.6": 1, "6.2.7": 1,
    "6.2.8": 1, "6.2.9": 2, "6.2.10": 2, "6.2.11": 2, "6.2.12": 2,
    "6.3.1": 1, "6.3.2": 1, "6.3.3": 2, "6.3.4": 2,
    "6.4.1": 1, "6.4.2": 1, "6.4.3": 2, "6.4.4": 2,
    "6.5.1": 2, "6.5.2": 2, "6.5.3": 2, "6.5.4": 2, "6.5.5": 2,
    "6.6.1": 2, "6.6.2": 2, "6.6.3": 2,
    "6.8.1": 2, "6.8.2": 2, "6.8.3": 2, "6.8.4": 2,
    # V7 Session Management
    "7.1.1": 2, "7.1.2": 2, "7.1.3": 2,
    "7.2.1": 1, "7.2.2": 1, "7.2.3": 1, "7.2.4": 1,
    "7.3.1": 2, "7.3.2": 2,
    "7.4.1": 1, "7.4.2": 1, "7.4.3": 2, "7.4.4": 2, "7.4.5": 2,
    "7.5.1": 2, "7.5.2": 2,
    "7.6.1": 2, "7.6.2": 2,
    # V11 Cryptography
    "11.1.1": 2, "11.1.2": 2,
    "11.2.1": 2, "11.2.2": 2, "11.2.3": 2,
    "11.3.1": 1, "11.3.2": 1, "11.3.3": 2,
    "11.4.1": 1, "11.4.2": 2, "11.4.3": 2, "11.4.4": 2,
    "11.5.1": 2,
    "11.6.1": 2,
}  # fmt: skip
# Level-3 requirements of the same chapters (listed only when authsvc meets them).
LEVEL_3 = {
    "6.3.5", "6.3.6", "6.3.7", "6.3.8", "6.4.5", "6.4.6", "6.5.6", "6.5.7", "6.5.8", "6.6.4",
    "6.7.1", "6.7.2", "7.5.3", "11.1.3", "11.1.4", "11.2.4", "11.2.5", "11.3.4", "11.3.5",
    "11.5.2", "11.6.2", "11.7.1", "11.7.2",
}  # fmt: skip
STATUSES = {
    "met": "met",
    "partial": "partial",
    "not_met": "not met",
    "not_applicable": "not applicable",
}
NODE_ID = re.compile(r"\btests/[\w/]+\.py::\w+(?:::\w+)?")


@cache
def asvs_map() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DOCS / "asvs.yaml").read_text(encoding="utf-8"))
    return data


def requirements() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = asvs_map()["requirements"]
    return entries


@cache
def threat_model() -> str:
    return (DOCS / "threat-model.md").read_text(encoding="utf-8")


@cache
def collected_tests() -> frozenset[str]:
    """Every test function's node id (``path::name`` or ``path::Class::name``), found with
    ``ast`` so that no test has to be imported or run."""
    ids = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        relative = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (
                node.name.startswith("test")
            ):
                ids.add(f"{relative}::{node.name}")
            elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and (
                        item.name.startswith("test")
                    ):
                        ids.add(f"{relative}::{node.name}::{item.name}")
    return frozenset(ids)


# --- the ASVS map -------------------------------------------------------------------------


def test_every_requirement_in_scope_is_mapped_once_with_its_level():
    ids = [entry["id"] for entry in requirements()]

    assert len(ids) == len(set(ids)), "a requirement is listed twice"
    missing = set(IN_SCOPE) - set(ids)
    assert not missing, f"requirements in scope but not mapped: {sorted(missing)}"
    for entry in requirements():
        if entry["id"] in IN_SCOPE:
            assert entry["level"] == IN_SCOPE[entry["id"]], entry["id"]
        else:
            assert entry["id"] in LEVEL_3 and entry["level"] == 3, entry["id"]


@pytest.mark.parametrize("entry", requirements(), ids=lambda entry: entry["id"])
def test_each_entry_is_complete_and_honest(entry):
    assert set(entry) <= {
        "id",
        "level",
        "summary",
        "status",
        "evidence",
        "note",
        "tests",
        "requires",
    }, entry["id"]
    assert entry["status"] in STATUSES
    assert len(entry["summary"]) > 20
    tests = entry.get("tests") or []
    if entry["status"] == "met":
        assert tests, f"{entry['id']} is met but names no test"
    if entry["status"] == "partial":
        assert tests, f"{entry['id']} is partially met but names no test for the part that is"
    if entry["status"] != "met":
        assert len(entry.get("note", "")) > 20, f"{entry['id']} must say why it is not met"
    if entry["level"] == 3:
        assert entry["status"] == "met", "level-3 entries are listed only when met"
    assert len(tests) == len(set(tests))


def test_every_test_named_in_the_map_exists():
    named = {test for entry in requirements() for test in entry.get("tests") or []}
    for test in named:
        assert NODE_ID.fullmatch(test), f"not a node id: {test}"

    missing = sorted(named - collected_tests())

    assert not missing, f"docs/asvs.yaml names tests that do not exist: {missing}"


def test_the_readable_map_shows_the_same_statuses_and_tests():
    text = (DOCS / "asvs.md").read_text(encoding="utf-8")
    shown, shown_tests = {}, {}
    for line in text.splitlines():
        cells = [cell.strip().strip("*") for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and re.fullmatch(r"\d+\.\d+\.\d+", cells[0]):
            shown[cells[0]] = next((c for c in cells if c in STATUSES.values()), None)
            shown_tests[cells[0]] = NODE_ID.findall(cells[-1])

    expected = {entry["id"]: STATUSES[entry["status"]] for entry in requirements()}
    expected_tests = {entry["id"]: entry.get("tests") or [] for entry in requirements()}

    assert shown == expected
    assert shown_tests == expected_tests
    for status, label in STATUSES.items():
        count = sum(entry["status"] == status for entry in requirements())
        assert f"| {label} | {count} |" in text, f"the summary count of '{label}' is stale"


# --- the threat model ---------------------------------------------------------------------


def test_every_test_named_in_the_docs_exists():
    for name in ("threat-model.md", "asvs.md"):
        named = set(NODE_ID.findall((DOCS / name).read_text(encoding="utf-8")))
        missing = sorted(named - collected_tests())
        assert not missing, f"docs/{name} names tests that do not exist: {missing}"


def _problem_statuses() -> dict[str, int]:
    def subclasses(cls: type) -> Iterator[type]:
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    return {cls.code: cls.status for cls in subclasses(AuthsvcError)}


# A status with a problem code, as the documents quote answers: "401 `invalid_mfa`" or
# "`401 invalid_mfa`".
QUOTED_ANSWER = re.compile(r"\b([1-5]\d\d) `?([a-z_]+)\b")


def test_the_documents_quote_each_problem_code_with_its_status():
    statuses = _problem_statuses()
    wrong = []
    for path in (ROOT / "README.md", ROOT / "openapi.yaml", *sorted(DOCS.glob("*.md"))):
        for status, code in QUOTED_ANSWER.findall(path.read_text(encoding="utf-8")):
            if code in statuses and int(status) != statuses[code]:
                wrong.append(f"{path.relative_to(ROOT)}: {status} {code} ({statuses[code]})")
    assert wrong == []


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", threat_model(), re.M | re.S)
    assert match, f"docs/threat-model.md has no section '{title}'"
    return match.group(1)


def _guard(security: list[dict[str, Any]] | None) -> str:
    if not security:
        return "public"
    labels = {
        "bearer": "bearer",
        "adminKey": "admin",
        "enrollmentToken": "enrollment",
        "metricsToken": "metrics token",
    }
    names = [labels[name] for option in security for name in option] or []
    if any(not option for option in security):
        names.insert(0, "public")
    return ", ".join(names)


def test_the_route_inventory_matches_the_contract():
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text(encoding="utf-8"))
    contract = {
        (method.upper(), path): _guard(operation.get("security", spec.get("security")))
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if method in {"get", "post", "put", "patch", "delete"}
    }
    inventory = {}
    for line in _section("Route inventory").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0] in {"GET", "POST", "PUT", "PATCH", "DELETE"}:
            inventory[(cells[0], cells[1])] = cells[2]

    assert sorted(set(contract) - set(inventory)) == [], "routes missing from the inventory"
    assert sorted(set(inventory) - set(contract)) == [], "inventory routes not in the contract"
    assert {route: guard for route, guard in inventory.items()} == contract


def _env(name: str) -> str:
    return f"`AUTHSVC_{name.upper()}`"


def _renderings(value: Any) -> set[str]:
    """How a default may be written in the documents."""
    if isinstance(value, timedelta):
        seconds = int(value.total_seconds())
        out = {f"{seconds} s"}
        for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
            if seconds % size == 0:
                n = seconds // size
                out.add(f"{n} {unit}" + ("s" if n != 1 else ""))
        return out
    if isinstance(value, str):
        return {f"`{value}`"}
    return {str(value), f"`{value}`"}


def _documented_defaults(text: str, names: list[str]) -> list[str]:
    """The settings among ``names`` whose line in ``text`` lacks their default."""
    defaults = Settings()
    wrong = []
    for name in names:
        lines = [line for line in text.splitlines() if _env(name) in line]
        renderings = _renderings(getattr(defaults, name))
        if not any(r in line for line in lines for r in renderings):
            wrong.append(f"{_env(name)} (default {sorted(renderings)[0]})")
    return wrong


def test_the_threat_model_documents_every_throttle_setting():
    names = [
        f.name
        for f in dataclasses.fields(Settings)
        if f.name.startswith(("limit_", "detect_"))
        or f.name
        in {"max_concurrent_hashes", "hash_queue_timeout", "trusted_proxies", "alert_cooldown"}
    ]
    text = _section("Throttling, anti-automation and adaptive response")

    assert _documented_defaults(text, names) == []
    assert "No hard lockout" in text


def test_the_threat_model_states_the_session_lifetimes():
    names = [
        "access_token_ttl",
        "refresh_token_ttl",
        "session_idle_timeout",
        "reauth_window",
        "mfa_token_ttl",
        "change_token_ttl",
        "reset_token_ttl",
        "verification_token_ttl",
        "breach_notice_token_ttl",
    ]
    text = _section("Sessions: lifetimes and termination")

    assert _documented_defaults(text, names) == []
    for topic in (
        "**Inactivity:**",
        "**Concurrent sessions:**",
        "**Termination:**",
        "**Relying apps:**",
        "NIST SP 800-63B",
    ):
        assert topic in text
    # The map's evidence for the requirement on those lifetimes names both of them.
    [lifetimes] = [entry for entry in requirements() if entry["id"] == "7.1.1"]
    for setting in ("AUTHSVC_SESSION_IDLE_TIMEOUT", "AUTHSVC_REFRESH_TOKEN_TTL"):
        assert setting in lifetimes["evidence"]


# --- cryptographic inventory --------------------------------------------------------------

# What each cryptographic import or use of the code is, as the inventory names it; None for
# helpers that are no primitive (exceptions, encodings, constant-time comparison). A key ending
# in ".*" covers everything below it.
PRIMITIVES: dict[str, str | None] = {
    "argon2": "Argon2id",
    "argon2.*": "Argon2id",
    "bcrypt": "bcrypt",
    "bcrypt.*": "bcrypt",
    "cryptography.exceptions.*": None,
    "cryptography.hazmat.primitives.asymmetric.ed25519.Ed25519PrivateKey": "Ed25519",
    "cryptography.hazmat.primitives.asymmetric.ec.EllipticCurvePublicKey": "WebAuthn",
    "cryptography.hazmat.primitives.asymmetric.ed25519.Ed25519PublicKey": "Ed25519",
    "cryptography.hazmat.primitives.asymmetric.rsa.RSAPublicKey": "WebAuthn",
    "cryptography.hazmat.primitives.ciphers.aead.AESGCM": "AES-256-GCM",
    "cryptography.hazmat.primitives.serialization": None,
    "cryptography.x509": "WebAuthn",
    "hashlib": None,
    "hashlib.pbkdf2_hmac": "PBKDF2-HMAC-SHA-256",
    "hashlib.sha1": "SHA-1",
    "hashlib.sha256": "SHA-256",
    "hmac": None,
    "hmac.compare_digest": None,
    "hmac.new": "HMAC-SHA-256",  # and every call passes hashlib.sha256 (checked below)
    "jwt": None,
    "jwt.PyJWTError": None,
    "jwt.get_unverified_header": None,
    "jwt.algorithms.OKPAlgorithm": "Ed25519",
    "jwt.encode": "Ed25519",
    "jwt.decode": "Ed25519",
    "os.urandom": "CSPRNG",
    "pyotp": "HMAC-SHA-1",
    "pyotp.*": "HMAC-SHA-1",
    "secrets": "CSPRNG",
    "secrets.*": "CSPRNG",
    "webauthn": "WebAuthn",
    "webauthn.*": "WebAuthn",
}
_CRYPTO_MODULES = (
    "argon2",
    "bcrypt",
    "cryptography",
    "hashlib",
    "hmac",
    "jwt",
    "pyotp",
    "secrets",
    "webauthn",
    "nacl",
    "Crypto",
    "Cryptodome",
    "random",
)


_ATTRIBUTE_MODULES = {"hashlib", "hmac", "jwt", "pyotp", "bcrypt", "argon2", "secrets"}


def _crypto_uses() -> Iterator[tuple[str, str]]:
    """(dotted name, file) for every cryptographic import and module-attribute use."""
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in _CRYPTO_MODULES:
                        yield alias.name, relative
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.module.split(".")[0] in _CRYPTO_MODULES:
                    for alias in node.names:
                        yield f"{node.module}.{alias.name}", relative
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                module = node.value.id
                if module in _ATTRIBUTE_MODULES or (module == "os" and node.attr == "urandom"):
                    yield f"{module}.{node.attr}", relative
            elif isinstance(node, ast.Call) and ast.unparse(node.func) == "hmac.new":
                digest = (
                    node.args[2]
                    if len(node.args) > 2
                    else next((k.value for k in node.keywords if k.arg == "digestmod"), None)
                )
                named = ast.unparse(digest) if digest is not None else "no digest"
                if named != "hashlib.sha256":
                    yield f"hmac.new with {named}", relative


def _primitive(name: str) -> str | None:
    """The inventory name of a dotted use; KeyError when nobody classified it yet."""
    if name in PRIMITIVES:
        return PRIMITIVES[name]
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        pattern = ".".join(parts[:cut]) + ".*"
        if pattern in PRIMITIVES:
            return PRIMITIVES[pattern]
    raise KeyError(name)


def test_the_inventory_names_every_primitive_the_code_uses():
    table = _section("Keys and cryptographic inventory")
    first_cells = [
        line.strip().strip("|").split("|")[0]
        for line in table.splitlines()
        if line.startswith("| ")
    ]
    unknown, missing = [], []
    for name, where in _crypto_uses():
        try:
            primitive = _primitive(name)
        except KeyError:
            unknown.append(f"{name} ({where})")
            continue
        if primitive is not None and not any(primitive in cell for cell in first_cells):
            missing.append(f"{primitive} ({name} in {where})")

    assert unknown == [], (
        "cryptography the inventory does not know: add it to the table in "
        f"docs/threat-model.md and to PRIMITIVES here: {sorted(set(unknown))}"
    )
    assert sorted(set(missing)) == []


# --- static evidence ----------------------------------------------------------------------


def _sources() -> Iterator[tuple[str, str]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8")


def test_nothing_uses_the_random_module():
    offenders = [
        where
        for where, source in _sources()
        for node in ast.walk(ast.parse(source))
        if (isinstance(node, ast.Import) and any(a.name == "random" for a in node.names))
        or (isinstance(node, ast.ImportFrom) and node.module == "random")
    ]
    assert offenders == [], "secrets come from `secrets`, never from `random`"


def test_no_weak_hashes_ciphers_or_modes_are_used():
    weak = re.compile(
        r"\b(md5|md4|ECB|PKCS1v15|TripleDES|Blowfish|ARC4|CAST5|SEED|IDEA)\b|"
        r"hashlib\.new\(|\bDES\b",
        re.I,
    )
    found = [
        f"{where}:{n}"
        for where, source in _sources()
        for n, line in enumerate(source.splitlines(), 1)
        if weak.search(line.split("#")[0])
    ]
    sha1 = sorted({where for name, where in _crypto_uses() if name == "hashlib.sha1"})

    assert found == []
    assert sha1 == ["authsvc/crypto/blocklist.py"], "SHA-1 is only the Pwned Passwords key"


def test_there_are_no_password_hints_or_secret_questions():
    forbidden = re.compile(r"hint|question|answer|mother|maiden|pet_name|memorable", re.I)
    columns = [
        f"{table.name}.{column.name}"
        for table in Base.metadata.tables.values()
        for column in table.columns
        if forbidden.search(column.name)
    ]
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text(encoding="utf-8"))

    def properties(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "properties" and isinstance(value, dict):
                    yield from value
                yield from properties(value)
        elif isinstance(node, list):
            for item in node:
                yield from properties(item)

    assert columns == []
    assert [name for name in properties(spec) if forbidden.search(name)] == []


def test_a_new_database_has_no_accounts_and_no_admin_keys(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    upgrade(url)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            for model in (User, AdminKey, Session, RefreshToken):
                assert conn.scalar(select(func.count()).select_from(model)) == 0, model
    finally:
        engine.dispose()
    migrations = "\n".join(p.read_text() for p in (ROOT / "migrations").rglob("*.py"))
    assert not re.search(
        r"insert\s+into\s+(users|admin_keys)|bulk_insert\(\s*(users|admin)", migrations, re.I
    )


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[dict[str, str | None]] = []
        self.handlers: list[str] = []
        self.section: str | None = None
        self.buttons: dict[str, str | None] = {}  # button id -> enclosing section id

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.handlers += [
            name
            for name in found
            if name in {"onpaste", "oncopy", "ondrop", "oncut", "oncontextmenu"}
        ]
        if tag == "section":
            self.section = found.get("id")
        elif tag == "input":
            self.inputs.append(found)
        elif tag == "button" and found.get("id"):
            self.buttons[str(found["id"])] = self.section


def test_the_bundled_page_masks_passwords_and_allows_password_managers():
    page = _Page()
    page.feed((PACKAGE / "ui" / "index.html").read_text(encoding="utf-8"))
    script = (PACKAGE / "ui" / "app.js").read_text(encoding="utf-8")
    passwords = [i for i in page.inputs if "password" in f"{i.get('id')} {i.get('name')}"]

    assert passwords, "the sign-in page has a password field"
    for field in passwords:
        assert field.get("type") == "password"  # 6.2.6: masked
        assert field.get("autocomplete") in {"current-password", "new-password"}  # 6.2.7
        assert "maxlength" not in field or int(str(field["maxlength"])) >= 64
    assert page.handlers == []
    assert not re.search(r"""addEventListener\(\s*["'](paste|copy|drop|cut)["']""", script)
    assert not re.search(r"\.on(paste|copy|drop)\s*=", script)
    # 7.4.4: the signed-in view offers a logout that ends the session at the server.
    assert page.buttons.get("logout") == "account-view"
    assert '"/v1/logout"' in script
