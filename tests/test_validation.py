"""The quick path of event validation (schemas.quick_load_event) answers exactly as
TrackEventSchema does: for any item it accepts, the loaded event is the schema's, and it never
accepts an item the schema refuses. Items it does not accept go to the schema, which words the
error, so only acceptance needs proving."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from analytics.ingest import parse_general_timestamp, parse_timestamp
from analytics.schemas import TrackEventSchema, has_nul, json_text_is_nul_free, quick_load_event
from analytics.validation import InvalidEvent, load_event

SCHEMA = TrackEventSchema()
MISSING = object()

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)
# Values at and around each rule's edges, besides arbitrary text and JSON.
names = st.one_of(
    st.sampled_from(
        [
            "play",
            "stop",
            "date",
            "Date",
            "",
            " ",
            "\t\n",
            "a\x00b",
            "x" * 255,
            "x" * 256,
            " play ",
            "é" * 255,
            "é" * 256,
        ]
    ),
    st.text(max_size=6),
    json_values,
)
timestamps = st.one_of(
    st.sampled_from(
        [
            "2025-01-18T14:30:00Z",
            "2025-01-18T14:30:00.123456789+05:30",
            "2025-01-18T14:30:00",
            "2025-01-18",
            "2025-02-30T00:00:00Z",
            "2025-01-18T14:30:00+24:00",
            "2025-01-18 14:30",
            " 2025-01-18T14:30:00Z ",
            "2999-01-01T00:00:00Z",
            "2025-01-18T14:30:00\x00",
            "",
        ]
    ),
    st.text(max_size=8),
    json_values,
)
event_ids = st.one_of(
    st.sampled_from(["", "e", "x" * 128, "x" * 129, "a\x00", " "]), st.text(max_size=8), json_values
)
metadata = st.one_of(
    json_values,
    st.dictionaries(st.text(max_size=4), json_values, max_size=3),
    st.just({"k\x00": 1}),
    st.just({"k": ["\x00"]}),
)
FIELDS = (
    ("event", names),
    ("user_id", names),
    ("timestamp", timestamps),
    ("metadata", metadata),
    ("event_id", event_ids),
)


@st.composite
def items(draw):
    item = {}
    for key, values in FIELDS:
        value = draw(st.one_of(st.just(MISSING), values))
        if value is not MISSING:
            item[key] = value
    extra = draw(st.dictionaries(st.text(max_size=4), json_values, max_size=2))
    item.update({key: value for key, value in extra.items() if key not in item})
    return item


def schema_answer(item):
    try:
        return SCHEMA.load(item)
    except ValidationError:
        return None


@pytest.mark.slow
def test_quick_path_accepts_only_what_the_schema_accepts_and_loads_the_same():
    accepted = []

    @settings(max_examples=3000, deadline=None)
    @given(st.one_of(items(), json_values))
    def agrees(item):
        quick = quick_load_event(item)
        if quick is not None:
            accepted.append(item)
            assert quick == schema_answer(item)

    agrees()
    # Some of the items took the quick path: the comparison above did happen.
    assert len(accepted) >= 10


@pytest.mark.parametrize(
    "item",
    [
        {"event": "play", "user_id": "u1"},
        {"event": "play", "user_id": "u1", "timestamp": None, "metadata": None, "event_id": None},
        {
            "event": "purchase",
            "user_id": "ü",
            "timestamp": "2025-01-18T14:30:00.5+05:30",
            "metadata": {"cart": [{"sku": "é", "n": 2}], "ok": True},
            "event_id": "x" * 128,
        },
        {"event": " play", "user_id": "u1", "timestamp": "2025-01-18T14:30:00", "extra": [1, 2]},
    ],
)
def test_plainly_valid_events_take_the_quick_path(item):
    quick = quick_load_event(item)
    assert quick is not None
    assert quick == SCHEMA.load(item)


def test_the_quick_path_keeps_the_text_of_the_timestamp():
    quick = quick_load_event(
        {"event": "play", "user_id": "u", "timestamp": "2025-01-18T14:30:00+01:00"}
    )
    assert quick["timestamp"] == datetime(2025, 1, 18, 13, 30, tzinfo=UTC)
    assert quick["raw_timestamp"] == "2025-01-18T14:30:00+01:00"


@pytest.mark.parametrize(
    "item, message",
    [
        ({"event": "date", "user_id": "u"}, 'event "date" is reserved'),
        ({"event": "play", "user_id": " "}, "user_id must contain at least one non-whitespace"),
        ({"event": "play", "user_id": "u", "event_id": ""}, "event_id must be 1 to 128 characters"),
        (
            {"event": "play", "user_id": "u", "metadata": {"a": "\x00"}},
            "metadata must not contain NUL",
        ),
        ({"event": "play", "user_id": "u", "timestamp": "2025-01-18"}, "timestamp must be"),
        ([1], "Event must be a JSON object"),
    ],
)
def test_what_the_quick_path_refuses_is_worded_by_the_schema(item, message):
    assert quick_load_event(item) is None
    with pytest.raises(InvalidEvent) as caught:
        load_event(item)
    assert message in caught.value.message


# --- the shortcuts inside the quick path --------------------------------------------------------


@pytest.mark.slow
@settings(max_examples=3000, deadline=None)
@given(st.one_of(items(), json_values))
def test_a_batch_text_without_the_nul_escape_needs_no_nul_walk(item):
    # What the batch endpoint and the import pass as nul_free: the answer must not change.
    text = json.dumps(item).encode()
    nul_free = json_text_is_nul_free(text)
    if nul_free:
        assert not has_nul(json.loads(text))
    assert quick_load_event(item, nul_free) == quick_load_event(item)


@pytest.mark.parametrize(
    "text, expected",
    [
        (b'{"event": "play", "user_id": "u"}', True),
        (b'{"event": "play", "user_id": "u\\u0000"}', False),
        (b'{"event": "play", "user_id": "u", "metadata": {"k\\u0000": 1}}', False),
        (b'{"event": "play", "user_id": "u\\\\u0000"}', False),  # a backslash: no NUL, walk anyway
    ],
)
def test_the_nul_escape_is_looked_for_in_the_text(text, expected):
    assert json_text_is_nul_free(text) is expected


digits = st.integers
common_timestamps = st.builds(
    lambda y, mo, d, h, mi, s, fraction, zone: (
        f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{fraction}{zone}"
    ),
    digits(0, 9999),
    digits(0, 13),
    digits(0, 32),
    digits(0, 24),
    digits(0, 60),
    digits(0, 61),
    st.sampled_from(["", ".5", ".123", ".123456", ".1234567", ".000000"]),
    st.one_of(
        st.sampled_from(
            ["", "Z", "+00:00", "-00:00", "+23:59", "-23:59", "+24:00", "+05:60", "+0530", "z"]
        ),
        st.builds(
            lambda sign, h, m: f"{sign}{h:02d}:{m:02d}",
            st.sampled_from("+-"),
            digits(0, 25),
            digits(0, 61),
        ),
    ),
)


def general_answer(text):
    try:
        return parse_general_timestamp(text)
    except ValueError as exc:
        return str(exc)


def quick_answer(text):
    try:
        return parse_timestamp(text)
    except ValueError as exc:
        return str(exc)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None)
@given(st.one_of(common_timestamps, timestamps.filter(lambda value: isinstance(value, str))))
def test_common_timestamps_read_by_fromisoformat_as_by_the_general_rule(text):
    answer = quick_answer(text)
    assert answer == general_answer(text)
    if isinstance(answer, datetime):
        assert answer.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "2025-01-18T14:30:00Z",
        "0001-01-01T00:00:00+05:00",
        "9999-12-31T23:59:59.999999-05:00",
        "2024-02-29T00:00:00",
    ],
)
def test_edges_of_the_common_shape(text):
    assert quick_answer(text) == general_answer(text)
