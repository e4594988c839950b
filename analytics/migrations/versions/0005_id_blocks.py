"""PostgreSQL hands out event ids in blocks: the id sequence steps by 1000.

A batch takes one block per 1000 events with a single nextval() and numbers its events
itself, instead of calling nextval() once an event (a few microseconds of server time each).
Every other insert still takes one value, which is the start of a block nobody else gets.
Ids keep their meaning: unique and in arrival order; they are no longer dense. SQLite numbers
rows itself: nothing changes there.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ID_BLOCK = 1000


def _set_increment(step: int) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"DO $$ BEGIN EXECUTE format('ALTER SEQUENCE %s INCREMENT BY {step}', "
        f"pg_get_serial_sequence('events', 'id')); END $$"
    )


def upgrade() -> None:
    _set_increment(ID_BLOCK)


def downgrade() -> None:
    _set_increment(1)
