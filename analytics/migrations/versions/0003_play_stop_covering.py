"""Add the event name to the partial play/stop index, so that /sessions reads only the index.

The sessions window reads every play/stop event of the range in (user_id, occurred_at, id)
order and needs each one's name; with the name in the index, PostgreSQL answers from the index
alone (an index-only scan) and SQLite uses it as a covering index, instead of visiting the table
once per event in an order unrelated to where the rows lie.

On PostgreSQL the new index is built beside the old one and swapped in, so the table is only
closed to readers for the moment of the swap (writers wait for the build).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

NAME = "ix_events_play_stop"
PLAY_STOP = "event IN ('play', 'stop')"


def _replace(columns: list[str]) -> None:
    where = dict(postgresql_where=sa.text(PLAY_STOP), sqlite_where=sa.text(PLAY_STOP))
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(f"{NAME}_new", "events", columns, **where)
        op.drop_index(NAME, table_name="events")
        op.execute(f"ALTER INDEX {NAME}_new RENAME TO {NAME}")
    else:
        op.drop_index(NAME, table_name="events")
        op.create_index(NAME, "events", columns, **where)


def upgrade() -> None:
    _replace(["user_id", "occurred_at", "id", "event"])


def downgrade() -> None:
    _replace(["user_id", "occurred_at", "id"])
