"""Event counts four quarter hours to a row: ``event_hours`` replaces ``event_buckets``.

The grain is still the quarter hour: a row holds one UTC hour's four quarter-hour counts of
one name. A query by the hour, or of any zone whose offset is whole hours, then reads a
quarter of the rows (docs/architecture.md). The counts are moved here with SQL frozen in this
file; a bucket's hour and quarter are its bits (``& -4`` and ``& 3``), which round down for
buckets before 1970 too, on both databases.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

QUARTERS = ("q0", "q1", "q2", "q3")


def upgrade() -> None:
    op.create_table(
        "event_hours",
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(255), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in QUARTERS),
        sa.PrimaryKeyConstraint("bucket", "event", "shard", name=op.f("pk_event_hours")),
    )
    sums = ", ".join(
        f"sum(CASE WHEN (bucket & 3) = {quarter} THEN n ELSE 0 END)"
        for quarter in range(len(QUARTERS))
    )
    op.execute(
        f"INSERT INTO event_hours (bucket, event, shard, {', '.join(QUARTERS)}) "
        f"SELECT bucket & -4, event, shard, {sums} FROM event_buckets GROUP BY 1, 2, 3"
    )
    op.drop_table("event_buckets")


def downgrade() -> None:
    op.create_table(
        "event_buckets",
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(255), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("bucket", "event", "shard", name=op.f("pk_event_buckets")),
    )
    for quarter, name in enumerate(QUARTERS):
        op.execute(
            f"INSERT INTO event_buckets (bucket, event, shard, n) "
            f"SELECT bucket + {quarter}, event, shard, {name} FROM event_hours WHERE {name} <> 0"
        )
    op.drop_table("event_hours")
