"""The secret scan (.ci/secret_scan.py) finds real-looking secrets and passes placeholders.

Every secret below is generated at run time by the same code that makes real ones, so this file
holds none itself.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from authsvc.crypto.keyring import generate_key_spec
from authsvc.crypto.tokens import generate_signing_key, new_token

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("secret_scan", ROOT / ".ci" / "secret_scan.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["secret_scan"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


scanner = _load()


def rules(path: str, text: str) -> list[str]:
    return [finding.rule for finding in scanner.scan_text(path, text)]


def pem() -> str:
    return generate_signing_key("k").private_pem.decode()


def private_jwk() -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from jwt.algorithms import OKPAlgorithm

    return str(OKPAlgorithm.to_jwk(Ed25519PrivateKey.generate()))


@pytest.mark.parametrize(
    ("make", "rule"),
    [
        (pem, "private-key"),
        (lambda: f"KEY = {pem()!r}", "private-key"),  # a PEM inside a string literal
        (lambda: "-----BEGIN OPENSSH PRIVATE KEY-----", "private-key"),
        (lambda: "-----BEGIN PGP PRIVATE KEY BLOCK-----", "private-key"),
        (lambda: new_token("ak"), "authsvc-token"),
        (lambda: f'refresh = "{new_token("rt")}"', "authsvc-token"),
        (
            lambda: f"link: https://auth.example/reset-password?token={new_token('rp')}",
            "authsvc-token",
        ),
        (lambda: generate_key_spec("k2026"), "encryption-key-spec"),
        (
            lambda: f"AUTHSVC_ENCRYPTION_KEYS={generate_key_spec('a')},{generate_key_spec('b')}",
            "encryption-key-spec",
        ),
        (private_jwk, "private-jwk"),
        (lambda: "AKIA" + "IOSFODNN7EXAMPLE", "aws-access-key-id"),
        (
            lambda: "aws_secret_access_key = " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "aws-secret-key",
        ),
        (lambda: "gh" + "p_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8", "github-token"),
    ],
)
def test_real_looking_secrets_are_found(make, rule):
    found = rules("authsvc/settings_example.py", make())

    assert rule in found


@pytest.mark.parametrize(
    "text",
    [
        'assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")',
        "ak_" + "x" * 43,  # a placeholder of the right length
        "rt_" + "A" * 43,
        "rt_nope",
        '"mfa_" + "x" * 43',
        "https://auth.example.com:" + "a" * 43,
        "sha256:" + "0123456789abcdef" * 4,
        "AUTHSVC_ENCRYPTION_KEYS=kid:base64url(32 bytes)",
        '{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}',
    ],
)
def test_placeholders_and_public_values_pass(text):
    assert rules("authsvc/example.py", text) == []


def test_key_specs_are_allowed_in_tests_only():
    spec = generate_key_spec("test1")

    assert rules("tests/unit/test_anything.py", spec) == []
    assert rules("docs/operations.md", spec) == ["encryption-key-spec"]
    # Tokens and private keys are not allowed anywhere, tests included.
    assert rules("tests/unit/test_anything.py", new_token("ak")) == ["authsvc-token"]
    assert rules("tests/unit/test_anything.py", pem()) == ["private-key"]


def test_findings_name_file_and_line_and_never_print_the_secret(tmp_path, capsys):
    token = new_token("ak")
    (tmp_path / "clean.txt").write_text("nothing to see\n")
    (tmp_path / "leak.env").write_text(f"# admin key\nKEY={token}\n")

    status = scanner.main(["--root", str(tmp_path), "clean.txt", "leak.env"])

    out = capsys.readouterr().out
    assert status == 1
    assert out.startswith("leak.env:2: authsvc-token: ")
    assert token not in out
    assert "clean.txt" not in out


def test_a_clean_tree_exits_zero(tmp_path, capsys):
    (tmp_path / "a.py").write_text("TOKEN_PREFIX = 'ak'\n")

    assert scanner.main(["--root", str(tmp_path), "a.py"]) == 0
    assert "1 files clean" in capsys.readouterr().out


def test_binary_and_huge_files_are_skipped(tmp_path):
    (tmp_path / "blob.bin").write_bytes(b"\x00" + new_token("ak").encode())
    (tmp_path / "huge.txt").write_text(new_token("ak") + "\n" + "x" * scanner.MAX_BYTES)

    assert scanner.scan(tmp_path, ["blob.bin", "huge.txt", "missing.txt"]) == []


def test_untracked_files_are_scanned_and_ignored_ones_are_not(tmp_path):
    git = ["git", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / ".gitignore").write_text("var/\n")
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "dev-keys.txt").write_text(generate_key_spec("dev1"))
    (tmp_path / "new.py").write_text(f"KEY = {json.dumps(generate_key_spec('k'))}\n")

    files = scanner.repository_files(tmp_path)

    assert files == [".gitignore", "new.py"]
    assert [f.path for f in scanner.scan(tmp_path, files)] == ["new.py"]


def test_the_repository_holds_no_secrets(capsys):
    status = scanner.main([])

    assert status == 0, capsys.readouterr().out


def test_every_allowance_is_narrow_and_explained():
    for allowance in scanner.ALLOW:
        assert allowance.rule in {rule.name for rule in scanner.RULES}
        assert allowance.path not in {"*", "**"}
        assert len(allowance.reason) > 20
