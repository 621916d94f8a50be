"""The dependency arrows of STYLE.md, checked on the source with ``ast``.

    http -> services -> {models, db, crypto, ratelimit, services.outbox/audit};  app -> everything.

- errors (and settings, db) import nothing from authsvc;
- crypto/ imports only the standard library, libraries and crypto/ itself;
- models import only db and models;
- services never import Flask or authsvc.http / app / cli / commands / mail.worker;
- only http/, app.py, cli.py, gunicorn_app.py and commands/ import Flask (or werkzeug);
- nothing imports authsvc.app except the CLI (cli.py and the command groups it registers from
  commands/) and the WSGI entry (gunicorn_app.py);
- no function-local imports of authsvc modules (an arrow pointing the wrong way, hidden).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "authsvc"
FLASK = ("flask", "flask_cors", "werkzeug")
FLASK_ALLOWED = (
    "authsvc.http",
    "authsvc.app",
    "authsvc.cli",
    "authsvc.gunicorn_app",
    "authsvc.commands",
)
APP_IMPORTERS = ("authsvc.cli", "authsvc.commands", "authsvc.gunicorn_app")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. authsvc.services.accounts
    target: str  # what it imports, e.g. authsvc.services.audit
    line: int
    local: bool  # inside a function body

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, *, is_package: bool = False) -> list[Import]:
    found: list[Import] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                found.extend(Import(module, a.name, child.lineno, local) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: resolve against this module's package
                    package = module.split(".")
                    package = package if is_package else package[:-1]
                    package = package[: len(package) - (child.level - 1)]
                    base = ".".join([*package, base] if base else package)
                found.append(Import(module, base, child.lineno, local))
                found.extend(
                    Import(module, f"{base}.{a.name}", child.lineno, local) for a in child.names
                )
            visit(child, inner)

    visit(ast.parse(source), False)
    return found


def all_imports() -> list[Import]:
    result = []
    for path in sorted(PACKAGE.rglob("*.py")):
        result += imports_of(
            path.read_text(encoding="utf-8"),
            module_name(path),
            is_package=path.name == "__init__.py",
        )
    return result


def within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(imports: list[Import]) -> list[str]:
    out = []
    for imp in imports:
        src, dst = imp.module, imp.target
        internal = within(dst, "authsvc") and dst != "authsvc"
        if internal and within(src, "authsvc.errors", "authsvc.settings", "authsvc.db"):
            out.append(f"{imp}: {src} imports nothing from authsvc")
        if internal and within(src, "authsvc.crypto") and not within(dst, "authsvc.crypto"):
            out.append(f"{imp}: crypto/ imports only libraries and crypto/")
        if (
            internal
            and within(src, "authsvc.models")
            and not within(dst, "authsvc.models", "authsvc.db")
        ):
            out.append(f"{imp}: models import only db")
        if within(src, "authsvc.services") and within(
            dst,
            *FLASK,
            "authsvc.http",
            "authsvc.app",
            "authsvc.cli",
            "authsvc.commands",
            "authsvc.gunicorn_app",
            "authsvc.mail.worker",
        ):
            out.append(f"{imp}: services never see Flask, HTTP or the app")
        if within(dst, *FLASK) and not within(src, *FLASK_ALLOWED):
            out.append(f"{imp}: only http/, app, cli and commands/ import Flask")
        if within(src, "authsvc.http") and within(
            dst, "authsvc.app", "authsvc.cli", "authsvc.commands"
        ):
            out.append(f"{imp}: http/ does not import the app or the CLI")
        if within(dst, "authsvc.app") and not within(src, *APP_IMPORTERS, "authsvc.app"):
            out.append(f"{imp}: only cli and the WSGI entry import authsvc.app")
        if internal and imp.local:
            out.append(f"{imp}: function-local import of an authsvc module")
    return sorted(set(out))


def test_the_walk_sees_the_whole_package():
    modules = {imp.module for imp in all_imports()}

    for expected in (
        "authsvc.app",
        "authsvc.cli",
        "authsvc.services.accounts",
        "authsvc.http.public",
        "authsvc.crypto.passwords",
        "authsvc.models.accounts",
        "authsvc.mail.worker",
        "authsvc.commands.passwords",
    ):
        assert expected in modules
    assert len(modules) >= 40


def test_no_arrow_points_backwards():
    assert violations(all_imports()) == []


@pytest.mark.parametrize(
    ("module", "source", "complaint"),
    [
        ("authsvc.errors", "from authsvc.settings import Settings", "imports nothing"),
        ("authsvc.crypto.totp", "from authsvc.models import User", "crypto/"),
        ("authsvc.crypto.totp", "import authsvc.db", "crypto/"),
        ("authsvc.services.login", "from flask import request", "services never"),
        ("authsvc.services.login", "from authsvc.http.io import db", "services never"),
        (
            "authsvc.services.login",
            "from authsvc.mail.worker import OutboxWorker",
            "services never",
        ),
        ("authsvc.ratelimit", "import flask", "only http/"),
        ("authsvc.models.accounts", "from authsvc.services import audit", "models import"),
        ("authsvc.http.me", "from authsvc.app import Runtime", "only cli"),
        ("authsvc.mail.worker", "from authsvc.app import build_runtime", "only cli"),
        (
            "authsvc.services.login",
            "def f():\n    from authsvc.services import accounts\n",
            "function-local",
        ),
        ("authsvc.services.totp", "from .. import app", "only cli"),
    ],
)
def test_the_checker_catches_each_kind_of_backward_arrow(module, source, complaint):
    found = violations(imports_of(source, module))

    assert any(complaint in v for v in found), found


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("authsvc.cli", "from authsvc.app import build_runtime"),
        ("authsvc.gunicorn_app", "from authsvc.app import create_app"),
        ("authsvc.commands.users", "from authsvc.app import build_runtime"),
        ("authsvc.http.public", "from flask import Blueprint\nfrom authsvc.services import login"),
        (
            "authsvc.services.accounts",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from authsvc.services.factors import FactorInfo\n",
        ),
        ("authsvc.crypto.blocklist", "from authsvc.crypto.passwords import normalize"),
        ("authsvc.services.totp", "def f():\n    import json\n"),
    ],
)
def test_the_checker_allows_forward_arrows(module, source):
    assert violations(imports_of(source, module)) == []
