"""Pre-aggregated event and session counts per UTC day, filled from the stored events.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
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
    # Events stored before this revision are counted once, here (frozen SQL: a migration
    # never imports application code, which may change after it).
    for statement in fill_statements(op.get_bind().dialect.name):
        op.execute(statement)


def fill_statements(dialect: str) -> list[str]:
    """The SQL that counts the stored events and sessions per UTC day, as of this revision."""
    if dialect == "postgresql":

        def day(ts):
            return f"CAST(({ts}) AT TIME ZONE 'UTC' AS DATE)"

        def microseconds(start, end):
            return f"CAST(EXTRACT(EPOCH FROM ({end}) - ({start})) * 1000000 AS BIGINT)"
    else:

        def day(ts):
            return f"substr({ts}, 1, 10)"

        def microseconds(start, end):
            def epoch(ts):
                return (
                    f"(CAST(strftime('%s', substr({ts}, 1, 19)) AS INTEGER) * 1000000"
                    f" + CAST(substr({ts}, 21, 6) AS INTEGER))"
                )

            return f"({epoch(end)} - {epoch(start)})"

    return [
        f"INSERT INTO event_counts (day, event, shard, n) "
        f"SELECT {day('occurred_at')}, event, id % 16, count(*) FROM events GROUP BY 1, 2, 3",
        f"INSERT INTO session_counts (day, shard, sessions, total_us) "
        f"SELECT {day('occurred_at')}, id % 16, count(*), "
        f"sum({microseconds('occurred_at', 'next_at')}) FROM ("
        f"SELECT id, event, occurred_at, "
        f"lead(event) OVER (PARTITION BY user_id ORDER BY occurred_at, id) AS next_event, "
        f"lead(occurred_at) OVER (PARTITION BY user_id ORDER BY occurred_at, id) AS next_at "
        f"FROM events WHERE event IN ('play', 'stop')) AS sequence "
        f"WHERE event = 'play' AND next_event = 'stop' GROUP BY 1, 2",
    ]


def downgrade() -> None:
    op.drop_table("session_counts")
    op.drop_table("event_counts")
