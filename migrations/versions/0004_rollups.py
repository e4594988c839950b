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
    # Events stored before this revision are counted once, here.
    from analytics import rollups

    rollups.rebuild(op.get_bind())


def downgrade() -> None:
    op.drop_table("session_counts")
    op.drop_table("event_counts")
