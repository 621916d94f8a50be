#!/usr/bin/env python3
"""Fail when a secret-looking literal is in the repository.

Scans every file git knows about (tracked, plus untracked files that are not ignored, so a
secret is caught before its first commit) for:

- private keys (PEM and OpenSSH headers, PGP private key blocks),
- authsvc tokens of real length and randomness (``ak_``, ``rt_``, ``rp_``, ``ve_``, ``ct_``,
  ``en_``, ``mfa_`` followed by 43 base64url characters),
- encryption key specs as in AUTHSVC_ENCRYPTION_KEYS (``kid:`` and 43 random base64url
  characters),
- private JWK members (``"d": "<base64url>"``),
- AWS access key ids and secret keys, GitHub, Slack, Stripe and Google API tokens.

Test fixtures may hold throwaway material; each such exception is listed in ALLOW with its
reason, by path pattern and rule. Nothing else is exempt.

Usage: .ci/secret_scan.py [--root DIR] [FILE ...]   (no FILE: every file git knows about)
Exit status 0 when clean, 1 with one ``path:line: rule: message`` per finding.
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

MAX_BYTES = 2 * 1024 * 1024  # larger files are data, not code or configuration
MIN_ENTROPY = 3.8  # bits per character; 43 random base64url characters give about 5


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern[str]
    message: str
    group: int = 0  # the part of the match that must look random (0: no entropy check)


RULES: tuple[Rule, ...] = (
    Rule(
        "private-key",
        # The header ends its line in a PEM file, or is followed by an escaped newline and the
        # base64 body in a string literal; `startswith(b"-----BEGIN ...-----")` is no key.
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
            r"(?:\s*$|\\[rn](?:\\[rn])?[A-Za-z0-9+/]{16})"
        ),
        "a private key",
    ),
    Rule(
        "authsvc-token",
        re.compile(
            r"(?<![A-Za-z0-9_-])(?:ak|rt|rp|ve|ct|en|mfa)_([A-Za-z0-9_-]{43})"
            r"(?![A-Za-z0-9_-])"
        ),
        "an authsvc token (admin key, refresh token or mail-link token) of real length",
        group=1,
    ),
    Rule(
        "encryption-key-spec",
        re.compile(
            r"(?<![A-Za-z0-9_/.:-])[A-Za-z0-9_-]{1,32}:([A-Za-z0-9_-]{43})=?"
            r"(?![A-Za-z0-9_=-])"
        ),
        "an AUTHSVC_ENCRYPTION_KEYS entry (kid:base64url of 32 bytes)",
        group=1,
    ),
    Rule(
        "private-jwk",
        re.compile(r"""["']d["']\s*:\s*["']([A-Za-z0-9_-]{32,})["']"""),
        "the private member of a JWK",
        group=1,
    ),
    Rule("aws-access-key-id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id"),
    Rule(
        "aws-secret-key",
        re.compile(r"(?i)aws_?secret_?(?:access_?)?key\W{0,4}([A-Za-z0-9/+]{40})\b"),
        "an AWS secret access key",
        group=1,
    ),
    Rule("github-token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"), "a GitHub token"),
    Rule("slack-token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"), "a Slack token"),
    Rule("stripe-key", re.compile(r"\b[sr]k_live_[A-Za-z0-9]{16,}\b"), "a live Stripe key"),
    Rule("google-api-key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"), "a Google API key"),
)


@dataclass(frozen=True)
class Allowance:
    path: str  # fnmatch pattern against the repository-relative path
    rule: str  # a rule name, or "*"
    reason: str


# Explicit exceptions. Keep each one narrow and say why it is harmless.
ALLOW: tuple[Allowance, ...] = (
    Allowance(
        "tests/**",
        "encryption-key-spec",
        "test fixtures may spell out throwaway key rings; no deployment reads them",
    ),
)


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    rule: str
    message: str
    excerpt: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.message} ({self.excerpt})"


def entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    if not text:
        return 0.0
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def _mask(text: str) -> str:
    return text[:6] + "…" if len(text) > 6 else text


def _allowed(path: str, rule: str) -> bool:
    return any(fnmatch.fnmatch(rule, a.rule) and fnmatch.fnmatch(path, a.path) for a in ALLOW)


def scan_text(path: str, text: str) -> list[Finding]:
    """Findings in one file's text; ``path`` is repository-relative with forward slashes."""
    findings = []
    for number, line in enumerate(text.splitlines(), start=1):
        for rule in RULES:
            for match in rule.pattern.finditer(line):
                if rule.group and entropy(match.group(rule.group)) < MIN_ENTROPY:
                    continue  # "x" * 43, "AAAA...": placeholders, not secrets
                if _allowed(path, rule.name):
                    continue
                findings.append(
                    Finding(path, number, rule.name, rule.message, _mask(match.group(0)))
                )
    return findings


def read_text(file: Path) -> str | None:
    """The file as text, or None for binaries, oversized files and vanished files."""
    try:
        if file.stat().st_size > MAX_BYTES:
            return None
        data = file.read_bytes()
    except OSError:
        return None
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def repository_files(root: Path) -> list[str]:
    """Tracked files plus untracked ones that .gitignore does not exclude."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],  # noqa: S607
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout
    return sorted({name for name in out.decode("utf-8").split("\0") if name})


def scan(root: Path, paths: Iterable[str]) -> list[Finding]:
    findings = []
    for name in paths:
        text = read_text(root / name)
        if text is not None:
            findings.extend(scan_text(Path(name).as_posix(), text))
    return findings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("files", nargs="*")
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    paths = args.files or repository_files(root)
    findings = scan(root, paths)
    for finding in findings:
        print(finding)
    if findings:
        print(
            f"secret scan: {len(findings)} finding(s) in {len(paths)} files; remove the "
            f"secret (and rotate it), or add a narrow ALLOW entry with a reason",
            file=sys.stderr,
        )
        return 1
    print(f"secret scan: {len(paths)} files clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
