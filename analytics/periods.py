"""Time arithmetic in SQL, the one place that knows SQL dialects.

Three constructs, each compiled once per dialect with ``@compiles``:

- ``utc_date(timestamp)``: the UTC calendar date of a stored timestamp, a ``Date`` (stored by
  SQLite as ``YYYY-MM-DD`` text, as SQLAlchemy's Date is). Cheap to compute and to group by:
  queries count per date first and label the periods from the (few) dates afterwards.
- ``period_label(date, group_by)``: the period of a date (a ``utc_date`` value or a Date column)
  as text ``YYYY-MM-DD``:
  ``day``: the date; ``week``: the Monday of its ISO week; ``month``: ``YYYY-MM-01``. Labels
  sort as text in chronological order.
- ``microseconds_between(start, end)``: ``end - start`` of two stored timestamps as an exact
  integer number of microseconds.

How the ``events`` timestamps are stored (see ``models.UTCDateTime``) decides how they are read:
on PostgreSQL a ``timestamptz``, converted with ``AT TIME ZONE 'UTC'`` so that the session's
TimeZone setting never changes a date; on SQLite UTC text ``YYYY-MM-DD HH:MM:SS.ffffff``.

Supporting another database means adding one ``@compiles`` function per construct; on a dialect
without one, compiling a statement fails loudly instead of producing wrong periods.
"""
from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import BigInteger, Date, String
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import FunctionElement

from analytics.models import sqlite_timestamp


class utc_date(FunctionElement):
    """The UTC calendar date of a stored timestamp."""

    type = Date()
    inherit_cache = True
    name = "utc_date"

    def __init__(self, timestamp: ColumnElement):
        super().__init__(timestamp)


class PeriodLabel(FunctionElement):
    """The ``YYYY-MM-DD`` label of the period of a date; see period_label."""

    type = String()
    inherit_cache = True
    name = "period_label"
    group_by: str


# One class per kind of period, so that the kind is part of the compiled-statement cache key.
class DayLabel(PeriodLabel):
    inherit_cache = True
    group_by = "day"


class WeekLabel(PeriodLabel):
    inherit_cache = True
    group_by = "week"


class MonthLabel(PeriodLabel):
    inherit_cache = True
    group_by = "month"


_LABELS = {cls.group_by: cls for cls in (DayLabel, WeekLabel, MonthLabel)}
GROUP_BYS = tuple(_LABELS)


def period_label(day: ColumnElement, group_by: str) -> PeriodLabel:
    """The ``YYYY-MM-DD`` label of the day, ISO week or month of a date."""
    try:
        return _LABELS[group_by](day)
    except KeyError:
        raise ValueError(f"group_by must be one of {GROUP_BYS}, got {group_by!r}") from None


class microseconds_between(FunctionElement):
    """``end - start`` in whole microseconds, computed exactly (no floating point)."""

    type = BigInteger()
    inherit_cache = True
    name = "microseconds_between"

    def __init__(self, start: ColumnElement, end: ColumnElement):
        super().__init__(start, end)


def _arguments(element, compiler, **kw) -> list[str]:
    return [compiler.process(argument, **kw) for argument in element.clauses]


@compiles(utc_date)
@compiles(PeriodLabel)
@compiles(microseconds_between)
def _unsupported(element, compiler, **kw):
    raise CompileError(f"{type(element).__name__} is not implemented for the "
                       f"{compiler.dialect.name} dialect (see analytics/periods.py)")


# PostgreSQL: timestamptz.
@compiles(utc_date, "postgresql")
def _utc_date_postgresql(element, compiler, **kw):
    [timestamp] = _arguments(element, compiler, **kw)
    return f"CAST(({timestamp}) AT TIME ZONE 'UTC' AS DATE)"


# A date given to date_trunc or to_char would be converted to timestamptz, at midnight in the
# session's time zone: the explicit cast to timestamp (without time zone) keeps the session's
# TimeZone out. to_char rather than a cast to text, whose format follows DateStyle.
_PG_LABELS = {
    "day": "to_char({day}, 'YYYY-MM-DD')",
    # date_trunc('week') is the Monday of the ISO week; YYYY is its calendar year (not IYYY).
    "week": "to_char(date_trunc('week', {day}), 'YYYY-MM-DD')",
    # Digits are not to_char pattern characters: '01' is copied as is.
    "month": "to_char({day}, 'YYYY-MM-01')",
}


@compiles(PeriodLabel, "postgresql")
def _period_label_postgresql(element, compiler, **kw):
    [day] = _arguments(element, compiler, **kw)
    return _PG_LABELS[element.group_by].format(day=f"CAST({day} AS TIMESTAMP)")


@compiles(microseconds_between, "postgresql")
def _microseconds_between_postgresql(element, compiler, **kw):
    start, end = _arguments(element, compiler, **kw)
    # EXTRACT returns numeric (PostgreSQL 14+), so the product is exact; the interval of two
    # timestamptz values has no month part, so its epoch is days * 86400 + time, exactly.
    return f"CAST(EXTRACT(EPOCH FROM ({end}) - ({start})) * 1000000 AS BIGINT)"


# SQLite: UTC text. Only the leading date part is handed to SQLite's date functions, because
# they round fractional seconds to milliseconds: 23:59:59.9996 would become the next day.
@compiles(utc_date, "sqlite")
def _utc_date_sqlite(element, compiler, **kw):
    [timestamp] = _arguments(element, compiler, **kw)
    return f"substr({timestamp}, 1, 10)"


_SQLITE_LABELS = {
    "day": "{day}",
    # Back 6 days, then forward to the next Monday (itself when it already is one).
    "week": "date({day}, '-6 days', 'weekday 1')",
    "month": "(substr({day}, 1, 7) || '-01')",
}


@compiles(PeriodLabel, "sqlite")
def _period_label_sqlite(element, compiler, **kw):
    [day] = _arguments(element, compiler, **kw)
    return _SQLITE_LABELS[element.group_by].format(day=day)


def _sqlite_epoch_microseconds(timestamp: str) -> str:
    # Whole seconds from the text without its fraction (strftime would round the fraction to
    # milliseconds), plus the six fraction digits as an integer: exact integer arithmetic.
    return (f"(CAST(strftime('%s', substr({timestamp}, 1, 19)) AS INTEGER) * 1000000"
            f" + CAST(substr({timestamp}, 21, 6) AS INTEGER))")


@compiles(microseconds_between, "sqlite")
def _microseconds_between_sqlite(element, compiler, **kw):
    start, end = _arguments(element, compiler, **kw)
    return f"({_sqlite_epoch_microseconds(end)} - {_sqlite_epoch_microseconds(start)})"


# --- rows passed as one JSON parameter ---------------------------------------------------------
# A statement over many (user_id, occurred_at, id) rows written as VALUES is compiled anew for
# every call (its shape changes with the number of rows); one JSON parameter keeps the
# statement text constant, so it is compiled once and reused. Each database reads JSON its own
# way, and the timestamps must be written as that database compares them.

EVENT_KEY_ROWS = {
    "postgresql": ("SELECT user_id, occurred_at, id FROM json_to_recordset(CAST(:keys AS json)) "
                   "AS k(user_id text, occurred_at timestamptz, id bigint)"),
    "sqlite": ("SELECT json_extract(value, '$.user_id') AS user_id, "
               "json_extract(value, '$.occurred_at') AS occurred_at, "
               "json_extract(value, '$.id') AS id FROM json_each(:keys)"),
}


def event_keys_json(dialect: str, keys) -> str:
    """(user_id, occurred_at, id) triples (aware datetimes) as the JSON that EVENT_KEY_ROWS
    reads."""
    stamp = sqlite_timestamp if dialect == "sqlite" else datetime.isoformat
    return json.dumps([{"user_id": user_id, "occurred_at": stamp(at), "id": id_}
                       for user_id, at, id_ in keys])
