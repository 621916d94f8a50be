"""The ``authsvc`` command line. Every command exits non-zero with a one-line reason."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import click
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from authsvc.app import build_runtime, create_app
from authsvc.commands import (
    refuse_a_ring_that_cannot_sign,
    refuse_a_ring_without_its_mac_key,
    sign_audit_head,
    warn_of_factors_no_key_opens,
)
from authsvc.commands.audit import audit
from authsvc.commands.breach import breach_response
from authsvc.commands.keys import keys
from authsvc.commands.outbox import outbox
from authsvc.commands.passwords import breached_passwords
from authsvc.commands.users import users
from authsvc.db import utcnow
from authsvc.errors import AuthsvcError
from authsvc.gunicorn_app import DEFAULT_THREADS, default_workers, reexec_with_hugetlb
from authsvc.gunicorn_app import run as run_gunicorn
from authsvc.logging_setup import configure as configure_logging
from authsvc.schema import schema_is_current, upgrade
from authsvc.services import admin as admin_service
from authsvc.settings import ConfigError, Settings

T = TypeVar("T")


class _Commands(click.Group):
    """Every command fails with one line: a configuration that cannot work is named as such
    (also what only shows when the runtime is built, such as a breached-password store that
    is not one), a database that is unreachable or not migrated too, without the statement
    (or the traceback) behind it, and a file or directory that cannot be made, read or written
    (AUTHSVC_VAR_DIR in a read-only place, a report's --output in no directory), and any
    other failure by its first line. Commands leave these to this one place."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise click.ClickException("configuration: " + "; ".join(exc.problems)) from None
        except DBAPIError as exc:
            first = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else ""
            raise click.ClickException(
                f"database: {type(exc.orig).__name__}: {first} "
                "(is it reachable, and migrated with `authsvc db upgrade`?)"
            ) from None
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{where}{exc.strerror or exc}") from None
        except (click.ClickException, click.Abort, click.exceptions.Exit):
            raise  # click's own: a usage error, Ctrl-C, an exit code
        except Exception as exc:  # anything else: its first line, not a traceback
            raise click.ClickException(f"{type(exc).__name__}: {exc}".splitlines()[0]) from None


@click.group(cls=_Commands)
def main() -> None:
    """authsvc: passwords, TOTP, WebAuthn and breach response for your web apps."""
    configure_logging(os.environ.get("AUTHSVC_LOG_LEVEL", "INFO"))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(min=1),
    show_default="one per core (at least 2) with AUTHSVC_REDIS_URL, else 1",
)
@click.option(
    "--threads",
    default=DEFAULT_THREADS,
    show_default=True,
    type=click.IntRange(min=1),
    help="Threads per worker; AUTHSVC_MAX_CONCURRENT_HASHES of them may hash at once.",
)
@click.option("--dev", is_flag=True, help="Flask's development server (single process).")
@click.option("--no-outbox-thread", is_flag=True, help="Leave the outbox to `authsvc worker`.")
def serve(
    host: str, port: int, workers: int | None, threads: int, dev: bool, no_outbox_thread: bool
) -> None:
    """Run the HTTP service (gunicorn)."""
    settings = Settings.from_env()
    if workers is None:
        workers = default_workers() if settings.redis_url else 1
    if workers > 1 and not settings.redis_url:
        # In-memory counters are per process: N workers would allow N times every limit,
        # the 100 failed checks per account and day included.
        raise click.ClickException(
            "more than one worker needs AUTHSVC_REDIS_URL: rate limits would be per worker"
        )
    reexec_with_hugetlb(settings)
    # What only shows when the runtime is built (a breached-password store that is not one)
    # is one line here, not a traceback in every gunicorn worker that fails to boot.
    runtime = build_runtime(settings)
    if settings.resolved_database_url.startswith("sqlite"):
        settings.var_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _upgrade(settings.resolved_database_url)
    refuse_a_ring_without_its_mac_key(runtime)
    refuse_a_ring_that_cannot_sign(runtime)
    warn_of_factors_no_key_opens(runtime)
    runtime.dispose()
    _refuse_an_address_in_use(host, port)  # last: each check above is named first
    if dev:
        app = create_app(settings, start_worker=not no_outbox_thread)
        app.run(host=host, port=port, threaded=True, debug=False, use_reloader=False)
        return
    run_gunicorn(
        settings,
        host=host,
        port=port,
        workers=workers,
        threads=threads,
        outbox_thread=not no_outbox_thread,
    )


def _refuse_an_address_in_use(host: str, port: int) -> None:
    """Stop with one line when ``host``:``port`` cannot be listened on (in use, not an address
    of this machine, a name that does not resolve): gunicorn tried five times, a second apart,
    logging each attempt, and the development server printed lines of its own. A bound test
    socket, closed at once; a port taken in between still fails as before."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            probe.bind(address)
    except OSError as exc:  # socket.gaierror too
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None


@main.command()
def worker() -> None:
    """Drain the outbox (mail, webhooks, background jobs) until interrupted."""
    runtime = build_runtime(Settings.from_env())
    with runtime.engine.connect() as conn:  # unreachable: one line, from _Commands
        if not schema_is_current(conn):
            raise click.ClickException(
                "database: the schema is not current (run `authsvc db upgrade`)"
            )
    refuse_a_ring_that_cannot_sign(runtime)
    warn_of_factors_no_key_opens(runtime)
    sign_audit_head(runtime)
    stop = threading.Event()
    # SIGTERM (systemd, docker, kubernetes) and Ctrl-C end the worker between deliveries: the
    # one under way finishes, the rest of its batch is handed back, due at once.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: stop.set())
    click.echo("authsvc worker: draining the outbox", err=True)
    runtime.worker.run(stop, poll_interval=runtime.settings.outbox_poll_interval)
    runtime.dispose()
    click.echo("authsvc worker: stopped", err=True)


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration (Alembic upgrade head)."""
    settings = Settings.from_env()
    if settings.resolved_database_url.startswith("sqlite"):
        settings.var_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _upgrade(settings.resolved_database_url)
    click.echo("database is at head", err=True)


def _upgrade(url: str) -> None:
    """Alembic upgrade head (`db upgrade`, and `serve` on SQLite); any failure is one line,
    such as a database a later release upgraded, at a revision this one does not know."""
    try:
        upgrade(url)
    except Exception as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""]
        raise click.ClickException(f"upgrade failed: {type(exc).__name__}: {reason[0]}") from None


@main.group()
def admin() -> None:
    """Administration."""


def _admin_work(work: Callable[[Session], T]) -> T:
    """Run ``work`` in one transaction of the configured database; any failure is one line."""
    settings = Settings.from_env()
    try:
        runtime = build_runtime(settings)
        try:
            sign_audit_head(runtime)
            with runtime.sessionmaker.begin() as session:
                return work(session)
        finally:
            runtime.dispose()
    except AuthsvcError as exc:
        raise click.ClickException(str(exc)) from None


@admin.command("create-key")
@click.option("--name", required=True, help="Who or what uses the key.")
def admin_create_key(name: str) -> None:
    """Create an admin API key; prints the key alone on stdout (it is stored hashed)."""
    _, secret = _admin_work(lambda s: admin_service.create_key(s, name=name, now=utcnow()))
    click.echo(secret)


@admin.command("list-keys")
def admin_list_keys() -> None:
    """Admin keys, one per line: id, created, last used, revoked (or -), name."""

    def line(at: datetime | None) -> str:
        return at.isoformat(timespec="seconds") if at else "-"

    for key in _admin_work(admin_service.list_keys):
        times = (line(key.created_at), line(key.last_used_at), line(key.revoked_at))
        click.echo("\t".join((key.id, *times, key.name)))


@admin.command("revoke-key")
@click.argument("key_id")
def admin_revoke_key(key_id: str) -> None:
    """Revoke an admin key by its id (see list-keys): it opens nothing from now on."""
    revoked = _admin_work(lambda s: admin_service.revoke_key(s, key_id=key_id, now=utcnow()))
    click.echo(f"{key_id} revoked" if revoked else f"{key_id} was revoked already", err=True)


main.add_command(breach_response)
main.add_command(audit)
main.add_command(keys)
main.add_command(outbox)
main.add_command(breached_passwords)
main.add_command(users)
