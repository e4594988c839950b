"""Local periods as runs of UTC quarter-hour buckets: the grain of every aggregate.

Aggregates count per *bucket*: whole 15-minute steps of UTC time since the epoch. Every zone's
UTC offset is a whole number of quarter hours, and (under the rules in force since 2012) every
change of offset falls on a quarter hour, so every local hour, day, week and month of every
zone is a union of whole buckets, and summing buckets answers any of them exactly.
``local_periods`` works out which buckets make up which period for a query; the database then
sums per period with ``dialects.period_index``. No SQL in here. See docs/architecture.md.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

UTC = UTC
BUCKET = timedelta(minutes=15)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
GROUP_BYS = ("hour", "day", "week", "month")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# Local dates lie within this much of the same UTC date (offsets run from -12:00 to +14:00).
_MARGIN = timedelta(hours=15)
_HOUR = timedelta(hours=1)
_FIRST = datetime(1, 1, 1, tzinfo=UTC)
# How often the offset is looked at: no zone changes it twice within this time.
_PROBE = timedelta(hours=6)


def bucket_of(at: datetime) -> int:
    """The bucket of an aware instant (rounded down)."""
    return (at - EPOCH) // BUCKET


def bucket_start(bucket: int) -> datetime:
    return EPOCH + bucket * BUCKET


@dataclass(frozen=True)
class Periods:
    """The periods of a query, in order, and the buckets that make them up.

    The buckets from ``bounds[0]`` to ``bounds[-1]`` are cut into runs at ``bounds``; run i
    (``bounds[i]`` up to ``bounds[i+1]``) belongs to the period labelled ``run_labels[i]``, or
    to none when that is None (outside the range). A period may own several runs: the hour
    that repeats when clocks go back, or a day whose midnight is repeated.
    """

    labels: tuple[str, ...]
    bounds: tuple[int, ...]
    run_labels: tuple[str | None, ...]

    @property
    def first_bucket(self) -> int:
        return self.bounds[0]

    @property
    def end_bucket(self) -> int:
        return self.bounds[-1]

    @functools.cached_property
    def step(self) -> int | None:
        """The runs' common length in buckets when every run has it (then a bucket's run is
        plain arithmetic), else None."""
        lengths = {b - a for a, b in zip(self.bounds, self.bounds[1:])}
        return lengths.pop() if len(lengths) == 1 else None

    @functools.cached_property
    def label_of_index(self) -> tuple[str | None, ...]:
        """The label of each value ``period_index`` can return (None: outside every run)."""
        return (None, *self.run_labels, None)

    @functools.cached_property
    def merges_runs(self) -> bool:
        """Whether some period owns more than one run."""
        return sum(label is not None for label in self.run_labels) > len(self.labels)


def _offset_text(offset: timedelta) -> str:
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(offset) // timedelta(minutes=1)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _offset_at(zone: ZoneInfo, at: datetime) -> timedelta:
    try:
        offset = at.astimezone(zone).utcoffset()
    except OverflowError:  # local time before year 1 or after 9999: the zone's first rule
        offset = zone.utcoffset(at.replace(tzinfo=None))
    assert offset is not None  # a ZoneInfo knows the offset of every instant
    return offset


def _constant_offsets(
    zone: ZoneInfo, start: datetime, end: datetime
) -> list[tuple[datetime, datetime, timedelta]]:
    """[start, end) cut where the zone's offset changes: (from, to, offset) pieces."""
    pieces = []
    at, offset = start, _offset_at(zone, start)
    probe = start
    while probe < end:
        # (Compared before adding: near the end of time the sum would not exist.)
        following = end if end - probe <= _PROBE else probe + _PROBE
        changed = _offset_at(zone, following) if following < end else offset
        if changed != offset:
            # Find the bucket where it changes (offset changes fall on quarter hours).
            change = probe + BUCKET
            while _offset_at(zone, change) == offset:
                change += BUCKET
            pieces.append((at, change, offset))
            at, offset = change, _offset_at(zone, change)
        probe = following
    pieces.append((at, end, offset))
    return pieces


def _label(local: datetime, offset: timedelta, group_by: str, week_start: int) -> str:
    day = local.date()
    if group_by == "hour":
        return f"{day.isoformat()}T{local.hour:02d}:00{_offset_text(offset)}"
    if group_by == "week":
        day -= timedelta(days=(day.weekday() - week_start) % 7)
    elif group_by == "month":
        day = day.replace(day=1)
    return day.isoformat()


def _next_boundary(local: datetime, offset: timedelta, group_by: str, end: datetime) -> datetime:
    """The next instant a label or the range can change at: the next local hour or the next
    local midnight (at most ``end``)."""
    try:
        if group_by == "hour":
            step = local.replace(minute=0, second=0, microsecond=0) + _HOUR
        else:
            step = datetime.combine(local.date() + timedelta(days=1), time.min)
        return min(step.replace(tzinfo=UTC) - offset, end)
    except OverflowError:  # the last local day there is
        return end


@functools.lru_cache(maxsize=256)
def local_periods(
    start: date, end: date, zone_name: str = "UTC", group_by: str = "day", week_start: int = 0
) -> Periods:
    """The periods of the local dates ``start`` to ``end`` (inclusive) in zone ``zone_name``,
    grouped by ``group_by`` (hour, day, week, month); weeks start on ``week_start``
    (0 = Monday). Labels as API.md ("Query options") defines them."""
    if group_by not in GROUP_BYS:
        raise ValueError(f"group_by must be one of {GROUP_BYS}, got {group_by!r}")
    zone = ZoneInfo(zone_name)
    try:
        lo = datetime.combine(start, time.min, tzinfo=UTC) - _MARGIN
    except OverflowError:
        lo = _FIRST
    try:
        hi = datetime.combine(end + timedelta(days=1), time.min, tzinfo=UTC) + _MARGIN
    except OverflowError:
        hi = datetime.max.replace(tzinfo=UTC) - _HOUR  # (whole buckets up to the end of time)
        hi = bucket_start(bucket_of(hi))
    bounds: list[int] = []
    run_labels: list[str | None] = []
    labels: dict[str, None] = {}
    for piece_start, piece_end, offset in _constant_offsets(zone, lo, hi):
        at = piece_start
        while at < piece_end:
            try:
                local = (at + offset).replace(tzinfo=None)
            except OverflowError:  # a local time before year 1 or after 9999: in no range
                label = None
                following = min(_FIRST - offset, piece_end) if offset < timedelta(0) else piece_end
            else:
                label = (
                    _label(local, offset, group_by, week_start)
                    if start <= local.date() <= end
                    else None
                )
                following = _next_boundary(local, offset, group_by, piece_end)
            if not run_labels or run_labels[-1] != label:
                bounds.append(bucket_of(at))
                run_labels.append(label)
            if label is not None:
                labels.setdefault(label)
            at = following
    bounds.append(bucket_of(hi))
    # Leading and trailing runs outside the range are not needed.
    while run_labels and run_labels[-1] is None:
        run_labels.pop()
        bounds.pop()
    while run_labels and run_labels[0] is None:
        run_labels.pop(0)
        bounds.pop(0)
    return Periods(tuple(labels), tuple(bounds), tuple(run_labels))
