"""``flask --app analytics <command>`` (``flask --app wsgi <command>`` from the project's root):
operator commands, registered on the app in init_app."""

from __future__ import annotations

import gzip
import io
import logging
import os
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta
from typing import BinaryIO, TypeVar, cast

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from analytics import importer, keys, retention, writer
from analytics.aggregates import REGISTRY
from analytics.config import parse_rate
from analytics.db import get_engine, get_session, ping
from analytics.models import utcnow
from analytics.periods import bucket_of

T = TypeVar("T")
C = TypeVar("C", bound=click.Command)
COMMANDS: list[click.Command] = []


def command(func: C) -> C:
    """Register a click command defined below on every app."""
    COMMANDS.append(func)
    return func


def init_app(app: Flask) -> None:
    for cmd in COMMANDS:
        app.cli.add_command(cmd)


@command
@click.command("migrate")
@with_appcontext
def migrate() -> None:
    """Create the tables, or upgrade them to this version's schema (alembic upgrade head).

    Runs the migrations the package carries, so it works from any folder, with no alembic.ini.
    Safe to repeat: a database already up to date is left as it is.
    """
    # Alembic's own log (set up at import, then each step) gives way to the lines below.
    with _quiet("alembic"):
        _migrate(current_app.config["DATABASE_URL"])


def _migrate(url: str) -> None:
    # Imported here: the other commands have no use for alembic.
    from analytics import migrations

    where = make_url(url).render_as_string(hide_password=True)
    target = migrations.head()
    try:
        before = migrations.current(url)
        if before == target:
            click.echo(f"The database at {where} is up to date (revision {target})")
            return
        # A line before a migration that may take long (0008 reads every event).
        click.echo(f"Upgrading the database at {where} from {before or 'empty'} to {target}")
        migrations.upgrade(url)
        after = migrations.current(url)
    except SQLAlchemyError as exc:
        raise click.ClickException(_database_failure(exc)) from None
    click.echo(f"The database at {where} is at revision {after}")


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Only warnings and errors from this logger while the block runs."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


@command
@click.command("purge")
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=None,
    help="Keep events this many days instead of RETENTION_DAYS.",
)
@click.option(
    "--dry-run", is_flag=True, help="Report how many events would be purged; delete nothing."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Events deleted per transaction (default: 1000; 200 on SQLite).",
)
@click.option(
    "--full-speed",
    is_flag=True,
    help="Do not rest between batches (by default the purge rests as long as each "
    "batch took, leaving the API most of the machine).",
)
@with_appcontext
def purge(days: int | None, dry_run: bool, batch_size: int | None, full_speed: bool) -> None:
    """Delete events received more than RETENTION_DAYS (or --days) days ago.

    Events received strictly before now minus the period (whole seconds, UTC) are deleted, in
    batches of one short transaction each, so the API keeps serving. Safe to repeat or to run
    beside another purge. Then the aggregates' rows of buckets over an hour old that writers
    spread over shards are merged.
    """
    if days is None:
        days = current_app.config["RETENTION_DAYS"]
    cutoff = retention.retention_cutoff(days, utcnow())
    before = retention.format_cutoff(cutoff)
    pace = 0.0 if full_speed else retention.DEFAULT_PACE
    engine = get_engine()
    try:
        if dry_run:
            count = retention.count_expired(engine, cutoff)
            click.echo(f"Would purge {count} events received before {before}")
            return
        # The count only sizes the progress bar: a purge run from cron or a timer skips it.
        expected = retention.count_expired(engine, cutoff) if sys.stdout.isatty() else 0
        if expected:
            with click.progressbar(
                length=expected, label=f"Purging events received before {before}"
            ) as bar:
                purged = retention.purge_expired(
                    engine, cutoff, batch_size=batch_size, pace=pace, on_batch=bar.update
                )
        else:
            purged = retention.purge_expired(engine, cutoff, batch_size=batch_size, pace=pace)
        # Buckets an hour old no longer get live writes: merge what writers spread over
        # shards, so that reads do not sum it again every time.
        writer.fold_aggregates(engine, bucket_of(utcnow() - timedelta(hours=1)))
    except SQLAlchemyError as exc:
        raise click.ClickException(_database_failure(exc)) from None
    click.echo(f"Purged {purged} events received before {before}")


def _database_failure(exc: SQLAlchemyError) -> str:
    """One line for the operator: which database, and the driver's own first sentence."""
    return _failure_text(*importer.describe_error(exc))


# A command that works wherever the package is installed (alembic needs the checkout's ini).
MIGRATE_HINT = "run flask --app analytics migrate"


def _failure_text(kind: str, reason: str) -> str:
    where = get_engine().url.render_as_string(hide_password=True)
    if kind == "missing-table":
        return f"no events table in the database at {where} ({MIGRATE_HINT}): {reason}"
    if kind == "unreachable":
        return f"cannot reach the database at {where}: {reason}"
    return f"database error at {where}: {reason}"


@command
@click.command("import")
@click.argument("source", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(importer.FORMATS),
    default=None,
    help="ndjson or csv. Default: from the extension (.ndjson, .jsonl, .json, .csv, "
    "each maybe .gz); required for standard input.",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(1, 10000),
    default=importer.DEFAULT_CHUNK_SIZE,
    show_default=True,
    help="Events stored per transaction.",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write every rejected line (number and reason) and the summary to this file.",
)
@with_appcontext
def import_command(source: str, fmt: str | None, chunk_size: int, report: str | None) -> None:
    """Import events from an NDJSON or CSV file, or standard input (-).

    Every line is checked by the POST /track rules; invalid lines are skipped and listed with
    their line numbers. Events are committed in chunks; events with an event_id are stored once
    however often they are imported, so an interrupted import is resumed by running it again.

    Exit status: 0 when every event is stored (or was already); 3 when the import finished but
    some lines were rejected; 1 when it stopped early (database unreachable, unreadable input),
    keeping the chunks already committed; 2 for a usage error.
    """
    fmt = fmt or importer.guess_format(source if source != "-" else "")
    if fmt is None:
        raise click.UsageError(
            f"cannot tell the format of {source!r}: use --format ndjson or --format csv"
        )
    session = get_session()
    try:
        ping(session)
        session.rollback()  # end the read transaction: each chunk opens its own write one
    except SQLAlchemyError as exc:
        raise click.ClickException(_database_failure(exc)) from None

    with ExitStack() as stack:
        raw, stream = _open_source(source, stack)
        try:
            report_file = (
                stack.enter_context(open(report, "w", encoding="utf-8")) if report else None
            )
        except OSError as exc:
            raise click.ClickException(f"cannot write {report}: {exc.strerror or exc}") from None
        shown: list[str] = []

        def on_rejected(number: int, message: str) -> None:
            line = f"line {number}: {message}"
            if len(shown) < IMPORT_REJECTED_SHOWN:
                shown.append(line)
            if report_file:
                report_file.write(line + "\n")

        bar = None
        size = _file_size(raw)
        if size is not None and sys.stdout.isatty():
            bar = stack.enter_context(click.progressbar(length=size, label=f"Importing {source}"))

        def on_chunk(_summary: object) -> None:
            if bar is not None:
                bar.update(raw.tell() - bar.pos)

        cfg = current_app.config
        job = importer.Importer(
            session,
            cfg["METADATA_MAX_BYTES"],
            chunk_size=chunk_size,
            writers=importer.writers_for(get_engine()),
            on_rejected=on_rejected,
            on_chunk=on_chunk,
        )
        failure = None
        try:
            job.run(importer.open_lines(stream, fmt))
        except SQLAlchemyError as exc:
            failure = _database_failure(exc)
        except importer.UnusableInput as exc:
            failure = str(exc)
        except (OSError, EOFError) as exc:  # includes a damaged .gz file
            failure = f"cannot read {source}: {exc}"
        except KeyboardInterrupt:
            failure = "interrupted"
        if bar is not None:
            bar.render_finish()
        summary = job.summary
        text = (
            f"{source}: {summary.accepted} accepted, {summary.duplicates} duplicates, "
            f"{summary.rejected} rejected"
        )
        if failure and summary.last_line:
            text += (
                f"; stopped after line {summary.last_line} (committed up to there; "
                f"run the same import again to resume)"
            )
        elif failure:
            text += "; stopped before anything was committed"
        if report_file:
            report_file.write(text + "\n")
    click.echo(text)
    for line in shown:
        click.echo(f"  {line}")
    if summary.rejected > len(shown):
        more = summary.rejected - len(shown)
        click.echo(
            f"  ... and {more} more"
            + (f" (all in {report})" if report else " (use --report FILE to list them all)")
        )
    if failure:
        raise click.ClickException(failure)
    if summary.rejected:
        click.get_current_context().exit(IMPORT_EXIT_REJECTED)


IMPORT_REJECTED_SHOWN = 20
IMPORT_EXIT_REJECTED = 3


def _open_source(source: str, stack: ExitStack) -> tuple[BinaryIO, BinaryIO]:
    """(the file as opened, the binary stream of its lines): they differ for .gz files."""
    try:
        raw = cast(
            BinaryIO, stack.enter_context(click.open_file(source, "rb"))
        )  # "-": standard input
    except OSError as exc:
        raise click.ClickException(f"cannot read {source}: {exc.strerror or exc}") from None
    if source.lower().endswith(".gz"):
        return raw, cast(BinaryIO, stack.enter_context(gzip.open(raw, "rb")))
    return raw, raw


def _file_size(raw: BinaryIO) -> int | None:
    """The size of a regular file (for the progress bar); None for pipes and terminals."""
    try:
        info = os.fstat(raw.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


@command
@click.command("rebuild-aggregates")
@with_appcontext
def rebuild_aggregates() -> None:
    """Recompute the aggregates (event counts, sessions) from the stored events.

    The API keeps them exact by itself; this is for after events were changed behind its back
    (restored from a backup, edited or deleted with SQL). Runs in one transaction, while
    writers wait.
    """
    try:
        writer.rebuild_aggregates(get_engine())
    except SQLAlchemyError as exc:
        raise click.ClickException(_database_failure(exc)) from None
    click.echo("Rebuilt the aggregates: " + ", ".join(a.name for a in REGISTRY))


@command
@click.group("keys")
def keys_group() -> None:
    """Create, list and revoke access keys (see deploy/README.md, "Access keys")."""


def _check_option(check: Callable[[str], T]) -> Callable[..., T | list[T] | None]:
    def callback(
        _ctx: object, _param: object, values: str | tuple[str, ...] | None
    ) -> T | list[T] | None:
        try:
            if isinstance(values, tuple):
                return [check(value) for value in values]
            return None if values is None else check(values)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


def _keys_failure(exc: SQLAlchemyError) -> str:
    kind, reason = importer.describe_error(exc)
    if kind == "missing-table":
        where = get_engine().url.render_as_string(hide_password=True)
        return f"no keys table in the database at {where} ({MIGRATE_HINT}): {reason}"
    return _failure_text(kind, reason)


@keys_group.command("create")
@click.argument("name", callback=_check_option(keys.check_name))
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(keys.SCOPES),
    help="What the key allows: ingest, read or admin (everything). Repeatable.",
)
@click.option(
    "--origin",
    "origins",
    multiple=True,
    callback=_check_option(keys.check_origin),
    help="A browser origin the key may be used from, e.g. https://example.com. "
    "Repeatable; without it, any origin.",
)
@click.option(
    "--rate",
    default=None,
    callback=_check_option(parse_rate),
    help="The key's own rate limit, e.g. 100/second or 5000/hour; without it, none.",
)
@with_appcontext
def keys_create(name: str, scopes: tuple[str, ...], origins: list[str], rate: str | None) -> None:
    """Create a key and print its secret, once, alone on the last line."""
    session = get_session()
    try:
        secret = keys.create_key(session, name, list(scopes), origins, rate, utcnow())
        session.commit()
    except keys.KeyProblem as exc:
        raise click.ClickException(str(exc)) from None
    except SQLAlchemyError as exc:
        raise click.ClickException(_keys_failure(exc)) from None
    details = [
        f"scopes {' '.join(s for s in keys.SCOPES if s in scopes)}",
        f"origins {' '.join(origins)}" if origins else "any origin",
        f"rate {rate}" if rate else "no rate limit of its own",
    ]
    click.echo(f"Created key {name!r}: {'; '.join(details)}.")
    click.echo("Its secret follows; it is shown only this once and cannot be recovered:")
    click.echo(secret)


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else "never"


@keys_group.command("list")
@with_appcontext
def keys_list() -> None:
    """List every key (never its secret): name, scopes, origins, rate, created, last used."""
    try:
        rows = keys.list_keys(get_session())
    except SQLAlchemyError as exc:
        raise click.ClickException(_keys_failure(exc)) from None
    if not rows:
        click.echo("No keys. Create one with: flask --app analytics keys create NAME --scope read")
        return
    table = [("NAME", "SCOPES", "ORIGINS", "RATE", "CREATED", "LAST USED", "STATUS")]
    for key in rows:
        table.append(
            (
                key.name,
                key.scopes.replace(" ", ","),
                (key.origins or "*").replace(" ", ","),
                key.rate or "-",
                _when(key.created_at),
                _when(key.last_used_at),
                f"revoked {_when(key.revoked_at)}" if key.revoked_at else "active",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


@keys_group.command("revoke")
@click.argument("name")
@with_appcontext
def keys_revoke(name: str) -> None:
    """Revoke a key: every worker refuses it within seconds. Its name stays taken."""
    session = get_session()
    try:
        key = keys.revoke_key(session, name, utcnow())
        revoked_at = key.revoked_at
        session.commit()
    except keys.KeyProblem as exc:
        raise click.ClickException(str(exc)) from None
    except SQLAlchemyError as exc:
        raise click.ClickException(_keys_failure(exc)) from None
    click.echo(f"Revoked key {name!r} at {_when(revoked_at)}.")
