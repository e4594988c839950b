"""Active users: ``user_ordinals`` (a small number per user) and ``user_bitmaps`` (per quarter
hour, UTC hour, six UTC hours and UTC day, the users with an event there), filled from the events.

The tables and the fill are written out here rather than taken from analytics, so that this
migration keeps doing the same whatever the application becomes later.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections import defaultdict

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BITS = 2048
SPANS = (1, 4, 24, 96)
BUCKET_SQL = {
    "postgresql": "CAST(floor(floor(EXTRACT(EPOCH FROM e.occurred_at)) / 900) AS INTEGER)",
    "sqlite": "((CAST(strftime('%s', substr(e.occurred_at, 1, 19)) AS INTEGER) - "
    "((CAST(strftime('%s', substr(e.occurred_at, 1, 19)) AS INTEGER) % 900) + 900)"
    " % 900) / 900)",
}


def upgrade() -> None:
    conn = op.get_bind()
    name = conn.dialect.name
    bits_type = postgresql.BIT(BITS) if name == "postgresql" else sa.LargeBinary()
    op.create_table(
        "user_ordinals",
        sa.Column("ordinal", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("ordinal", name="pk_user_ordinals"),
        sa.UniqueConstraint("user_id", name="uq_user_ordinals_user_id"),
    )
    op.create_table(
        "user_bitmaps",
        sa.Column("span", sa.SmallInteger(), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("chunk", sa.Integer(), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("bits", bits_type, nullable=False),
        sa.PrimaryKeyConstraint("span", "bucket", "chunk", "shard", name="pk_user_bitmaps"),
    )
    conn.exec_driver_sql(
        "INSERT INTO user_ordinals (user_id) SELECT DISTINCT user_id FROM events ORDER BY user_id"
    )
    masks = defaultdict(int)
    active = conn.exec_driver_sql(
        f"SELECT DISTINCT o.ordinal, {BUCKET_SQL[name]} FROM events AS e "
        f"JOIN user_ordinals AS o ON o.user_id = e.user_id"
    )
    for ordinal, bucket in active:
        chunk, bit = divmod(ordinal, BITS)
        for span in SPANS:
            masks[(span, bucket - bucket % span, chunk)] |= 1 << (BITS - 1 - bit)
    rows = [
        {"span": span, "bucket": bucket, "chunk": chunk, "bits": bits.to_bytes(BITS // 8, "big")}
        for (span, bucket, chunk), bits in sorted(masks.items())
    ]
    if name == "postgresql":
        for row in rows:
            row["bits"] = "x" + row["bits"].hex()
        statement = sa.text(
            f"INSERT INTO user_bitmaps VALUES "
            f"(:span, :bucket, :chunk, 0, CAST(:bits AS bit({BITS})))"
        )
    else:
        statement = sa.text("INSERT INTO user_bitmaps VALUES (:span, :bucket, :chunk, 0, :bits)")
    for start in range(0, len(rows), 10_000):
        conn.execute(statement, rows[start : start + 10_000])


def downgrade() -> None:
    op.drop_table("user_bitmaps")
    op.drop_table("user_ordinals")
