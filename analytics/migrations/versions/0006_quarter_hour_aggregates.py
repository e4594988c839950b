"""Aggregates per UTC quarter hour instead of per UTC day, and one row per session.

``event_buckets`` and ``session_buckets`` replace ``event_counts`` and ``session_counts``:
a quarter-hour bucket is the grain that answers every time zone exactly. ``sessions`` keeps
each play/stop session. All three are filled from the stored events here, with SQL frozen in
this file. The index on (occurred_at, event) served only the old all-users /metrics.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTCDateTime = sa.DateTime(timezone=True)


def _expressions(dialect: str):
    """(bucket of a timestamp, microseconds between two) in this database's SQL."""
    if dialect == "postgresql":

        def bucket(ts):
            return f"CAST(floor(floor(EXTRACT(EPOCH FROM {ts})) / 900) AS INTEGER)"

        def microseconds(start, end):
            return f"CAST(EXTRACT(EPOCH FROM ({end}) - ({start})) * 1000000 AS BIGINT)"

        return bucket, microseconds

    def seconds(ts):
        return f"CAST(strftime('%s', substr({ts}, 1, 19)) AS INTEGER)"

    def bucket(ts):
        return f"(({seconds(ts)} - (({seconds(ts)} % 900) + 900) % 900) / 900)"

    def microseconds(start, end):
        def epoch(ts):
            return f"({seconds(ts)} * 1000000 + CAST(substr({ts}, 21, 6) AS INTEGER))"

        return f"({epoch(end)} - {epoch(start)})"

    return bucket, microseconds


def upgrade() -> None:
    op.create_table(
        "event_buckets",
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(255), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("bucket", "event", "shard", name=op.f("pk_event_buckets")),
    )
    op.create_table(
        "sessions",
        sa.Column("play_id", BigId, autoincrement=False, nullable=False),
        sa.Column("stop_id", BigId, nullable=False),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("play_at", UTCDateTime, nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("duration_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("play_id", name=op.f("pk_sessions")),
    )
    op.create_index("ix_sessions_user_id_play_at", "sessions", ["user_id", "play_at"])
    op.create_table(
        "session_buckets",
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("sessions", sa.BigInteger(), nullable=False),
        sa.Column("total_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("bucket", "shard", name=op.f("pk_session_buckets")),
    )
    bucket, microseconds = _expressions(op.get_bind().dialect.name)
    op.execute(
        f"INSERT INTO event_buckets (bucket, event, shard, n) "
        f"SELECT {bucket('occurred_at')}, event, 0, count(*) FROM events GROUP BY 1, 2"
    )
    op.execute(
        f"INSERT INTO sessions (play_id, stop_id, user_id, play_at, bucket, duration_us) "
        f"SELECT id, next_id, user_id, occurred_at, {bucket('occurred_at')}, "
        f"{microseconds('occurred_at', 'next_at')} FROM ("
        f"SELECT id, user_id, event, occurred_at, "
        f"lead(id) OVER (PARTITION BY user_id ORDER BY occurred_at, id) AS next_id, "
        f"lead(event) OVER (PARTITION BY user_id ORDER BY occurred_at, id) AS next_event, "
        f"lead(occurred_at) OVER (PARTITION BY user_id ORDER BY occurred_at, id) AS next_at "
        f"FROM events WHERE event IN ('play', 'stop')) AS sequence "
        f"WHERE event = 'play' AND next_event = 'stop'"
    )
    op.execute(
        "INSERT INTO session_buckets (bucket, shard, sessions, total_us) "
        "SELECT bucket, 0, count(*), sum(duration_us) FROM sessions GROUP BY bucket"
    )
    op.drop_table("event_counts")
    op.drop_table("session_counts")
    op.drop_index("ix_events_occurred_at_event", table_name="events")


def downgrade() -> None:
    op.create_index("ix_events_occurred_at_event", "events", ["occurred_at", "event"])
    op.create_table(
        "event_counts",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("event", sa.String(255), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "event", "shard", name=op.f("pk_event_counts")),
    )
    op.create_table(
        "session_counts",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("sessions", sa.BigInteger(), nullable=False),
        sa.Column("total_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "shard", name=op.f("pk_session_counts")),
    )
    # Revision 0004's own frozen fill, loaded from its file beside this one.
    spec = importlib.util.spec_from_file_location(
        "revision_0004", Path(__file__).with_name("0004_rollups.py")
    )
    revision_0004 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(revision_0004)
    for statement in revision_0004.fill_statements(op.get_bind().dialect.name):
        op.execute(statement)
    op.drop_table("session_buckets")
    op.drop_index("ix_sessions_user_id_play_at", table_name="sessions")
    op.drop_table("sessions")
    op.drop_table("event_buckets")
