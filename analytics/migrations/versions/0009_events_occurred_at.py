"""An index on the events' (occurred_at, id): GET /events reads a range of time oldest first
(by timestamp, then arrival) straight from it, without sorting the range first, so the export
starts at once and runs in flat memory.

On PostgreSQL it is built CONCURRENTLY, so ingest goes on while it is built.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

NAME = "ix_events_occurred_at_id"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.create_index(NAME, "events", ["occurred_at", "id"], postgresql_concurrently=True)
    else:
        op.create_index(NAME, "events", ["occurred_at", "id"])


def downgrade() -> None:
    op.drop_index(NAME, table_name="events")
