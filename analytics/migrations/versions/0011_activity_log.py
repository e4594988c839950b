"""Active users are written to a log: ``activity_log`` holds (user, bucket) pairs that writers
append and that a fold moves into ``user_bitmaps`` in bulk (docs/architecture.md).

The table starts empty: every event is already in the bitmaps. A downgrade would lose the
pairs not yet folded, so it refuses while there are any; `flask --app wsgi rebuild-aggregates`
(with the service stopped) empties the log by computing the bitmaps from the events.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "activity_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_activity_log"),
    )


def downgrade() -> None:
    pending = op.get_bind().exec_driver_sql("SELECT count(*) FROM activity_log").scalar()
    if pending:
        raise RuntimeError(
            f"activity_log holds {pending} pairs not yet in user_bitmaps: stop the service and "
            "run `flask --app wsgi rebuild-aggregates` before downgrading"
        )
    op.drop_table("activity_log")
