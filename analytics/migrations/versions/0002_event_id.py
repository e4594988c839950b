"""Add the client-chosen event_id and the unique (user_id, event_id) that makes retries safe.

Rows whose event_id is NULL never collide: both PostgreSQL and SQLite treat NULLs as distinct
in a unique constraint, so events sent without an event_id are never deduplicated.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch mode: SQLite cannot add a constraint to an existing table, so alembic rebuilds it
    # there (indexes included); PostgreSQL gets plain ALTER TABLE statements.
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("event_id", sa.String(128), nullable=True))
        batch.create_unique_constraint("uq_events_user_id_event_id", ["user_id", "event_id"])


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_constraint("uq_events_user_id_event_id", type_="unique")
        batch.drop_column("event_id")
