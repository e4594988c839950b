"""``flask --app wsgi import``: NDJSON and CSV files through the POST /track rules, on both
backends."""

from __future__ import annotations

import gzip
import json
from concurrent.futures import Future

import pytest
from sqlalchemy import text

from analytics.importer import ImportSummary, _InOrder
from tests.helpers import (
    FUTURE_WARNING,
    TRUNCATED_WARNING,
    metadata_of_size,
    run_in_terminal,
    stored,
    unreachable_url,
)
from tests.helpers import run_flask as run_flask_text

HEADER = "event,user_id,timestamp,event_id,metadata"


def ev(n: int, **fields) -> str:
    return json.dumps(
        {"event": "play", "user_id": "u", "timestamp": f"2025-01-18T14:30:{n:02d}Z", **fields}
    )


def write(path, lines, newline="\n") -> str:
    path.write_text(newline.join(lines) + newline, encoding="utf-8")
    return str(path)


def run_import(runner, *args, input=None):
    return runner.invoke(args=["import", *args], input=input)


def test_ndjson_file_with_bad_lines(runner, engine, tmp_path):
    source = write(
        tmp_path / "events.ndjson",
        [
            ev(0, event_id="a"),  # 1
            "",  # 2 blank: skipped
            '{"event": "play"}',  # 3 no user_id
            "{not json",  # 4
            ev(5, event_id="a"),  # 5 duplicate of line 1
            "[1, 2]",  # 6 not an object
            ev(7, timestamp="yesterday"),  # 7
            ev(8),  # 8
        ],
    )
    result = run_import(runner, source)
    assert result.exit_code == 3, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{source}: 2 accepted, 1 duplicates, 4 rejected"
    assert lines[1:] == [
        "  line 3: user_id is required",
        "  line 4: Malformed JSON",
        "  line 6: Event must be a JSON object",
        "  line 7: timestamp must be an ISO 8601 date and time, e.g. 2025-01-18T14:30:00Z",
    ]
    assert [(row.event_id, row.occurred_at.second) for row in stored(engine)] == [
        ("a", 0),
        (None, 8),
    ]


def test_a_clean_file_exits_0_and_rerunning_it_stores_nothing_new(runner, engine, tmp_path):
    source = write(tmp_path / "events.jsonl", [ev(i, event_id=f"id{i}") for i in range(10)])
    first = run_import(runner, source)
    assert first.exit_code == 0, first.output
    assert first.output == f"{source}: 10 accepted, 0 duplicates, 0 rejected\n"
    again = run_import(runner, source)
    assert again.exit_code == 0
    assert again.output == f"{source}: 0 accepted, 10 duplicates, 0 rejected\n"
    assert len(stored(engine)) == 10


def test_an_interrupted_import_resumes_by_running_it_again(runner, engine, tmp_path):
    lines = [ev(i % 60, event_id=f"id{i}", user_id=f"user{i % 7}") for i in range(250)]
    # What an import stopped after 100 lines had committed.
    assert run_import(runner, write(tmp_path / "part.ndjson", lines[:100])).exit_code == 0
    result = run_import(runner, write(tmp_path / "all.ndjson", lines), "--chunk-size", "30")
    assert result.exit_code == 0, result.output
    assert "150 accepted, 100 duplicates, 0 rejected" in result.output
    assert sorted(row.event_id for row in stored(engine)) == sorted(f"id{i}" for i in range(250))


def test_line_numbers_stay_right_across_chunks(runner, engine, tmp_path):
    lines = [ev(i % 60) if i % 4 else '{"user_id": "u"}' for i in range(1, 21)]
    result = run_import(runner, write(tmp_path / "e.ndjson", lines), "--chunk-size", "3")
    assert result.exit_code == 3
    assert [line.split(":")[0].strip() for line in result.output.splitlines()[1:]] == [
        f"line {n}" for n in (4, 8, 12, 16, 20)
    ]
    assert len(stored(engine)) == 15


def test_the_report_file_lists_every_rejected_line_and_the_summary(runner, engine, tmp_path):
    lines = ['{"event": "e"}' if i % 2 else ev(0) for i in range(60)]
    report = tmp_path / "report.txt"
    result = run_import(
        runner, write(tmp_path / "e.ndjson", lines), "--report", str(report), "--chunk-size", "7"
    )
    assert result.exit_code == 3
    written = report.read_text().splitlines()
    assert written[:-1] == [f"line {n}: user_id is required" for n in range(2, 61, 2)]
    assert written[-1].endswith(": 30 accepted, 0 duplicates, 30 rejected")
    # The terminal gets the first few and a pointer to the rest.
    shown = result.output.splitlines()
    assert len(shown) == 1 + 20 + 1
    assert shown[-1] == f"  ... and 10 more (all in {report})"


def test_rules_are_those_of_track(runner, engine, tmp_path):
    big = metadata_of_size(5000)
    source = write(
        tmp_path / "e.ndjson",
        [
            json.dumps({"event": "a", "user_id": "u", "metadata": big}),
            json.dumps({"event": "b", "user_id": "u", "timestamp": "2999-01-01T00:00:00Z"}),
            json.dumps({"event": "date", "user_id": "u"}),
            json.dumps({"event": "c", "user_id": "u\u0000"}),
            json.dumps({"event": "d", "user_id": "u", "event_id": "x" * 129}),
        ],
    )
    result = run_import(runner, source)
    assert result.exit_code == 3
    assert "2 accepted, 0 duplicates, 3 rejected" in result.output
    assert "line 3: event" in result.output
    assert "line 4: user_id must not contain NUL" in result.output
    assert "line 5: event_id must be 1 to 128 characters" in result.output
    a, b = stored(engine)
    assert a.meta == {"warning": TRUNCATED_WARNING, "originalSize": 5000}
    assert b.meta["timestamp_warning"] == FUTURE_WARNING


def test_csv_file(runner, engine, tmp_path):
    source = write(
        tmp_path / "events.csv",
        [
            HEADER,
            'play,u1,2025-01-18T14:30:00Z,e1,"{""song_id"": ""s1"", ""n"": [1, 2]}"',  # 2
            "stop,u1,2025-01-18T14:33:20+01:00,e2,",  # 3
            "stop,,,,",  # 4
            'play,u2,,,"{not json"',  # 5
            "",  # 6 blank
            'skip,u3,,,"[1]"',  # 7
            '"multi',  # 8 (starts)
            'line",u4,2025-01-18T00:00:00Z,e4,',  # 9
            "play,u5,2025-01-18T00:00:00Z",  # 10 short
            "play,u1,2025-01-19T00:00:00Z,e1,",  # 11 duplicate
        ],
        newline="\r\n",
    )
    result = run_import(runner, source)
    assert result.exit_code == 3, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{source}: 3 accepted, 1 duplicates, 4 rejected"
    assert lines[1:] == [
        "  line 4: user_id is required",
        "  line 5: metadata is not valid JSON",
        "  line 7: metadata must be a JSON object",
        "  line 10: Expected 5 columns, found 3",
    ]
    rows = stored(engine)
    assert [(r.event, r.user_id, r.event_id) for r in rows] == [
        ("play", "u1", "e1"),
        ("stop", "u1", "e2"),
        ("multi\r\nline", "u4", "e4"),
    ]
    assert rows[0].meta == {"song_id": "s1", "n": [1, 2]}
    assert rows[1].occurred_at.isoformat() == "2025-01-18T13:33:20+00:00"
    assert rows[1].meta is None


def test_csv_columns_in_any_order_with_extra_ones(runner, engine, tmp_path):
    source = write(tmp_path / "e.csv", ["User_ID , comment, Event", "u1,hello,play"])
    result = run_import(runner, source)
    assert result.exit_code == 0, result.output
    [row] = stored(engine)
    assert (row.event, row.user_id, row.event_id, row.meta) == ("play", "u1", None, None)


def test_csv_without_the_required_columns_stops_before_importing(runner, engine, tmp_path):
    result = run_import(runner, write(tmp_path / "e.csv", ["name,user", "play,u1"]))
    assert result.exit_code == 1
    assert "missing: event, user_id" in result.output
    assert "Traceback" not in result.output
    assert stored(engine) == []


def test_lines_that_are_not_utf8_are_rejected(runner, engine, tmp_path):
    ndjson = tmp_path / "e.ndjson"
    ndjson.write_bytes(
        ev(0).encode() + b"\n" + b'{"event": "pl\xe9y", "user_id": "u"}\n' + ev(1).encode() + b"\n"
    )
    csv_file = tmp_path / "e.csv"
    csv_file.write_bytes(b"\xef\xbb\xbfevent,user_id\nplay,u\xff\nplay,u2\n")
    result = run_import(runner, str(ndjson))
    assert "line 2: Line is not valid UTF-8" in result.output
    result = run_import(runner, str(csv_file))
    assert "line 2: Line is not valid UTF-8" in result.output
    assert [row.user_id for row in stored(engine)] == ["u", "u", "u2"]


def test_standard_input_needs_a_format(runner, engine):
    data = "\n".join([ev(0), ev(1)]) + "\n"
    result = run_import(runner, "-", input=data)
    assert result.exit_code == 2
    assert "--format" in result.output
    result = run_import(runner, "-", "--format", "ndjson", input=data)
    assert result.exit_code == 0, result.output
    assert result.output == "-: 2 accepted, 0 duplicates, 0 rejected\n"
    result = run_import(runner, "-", "--format", "csv", input="event,user_id\nplay,u\n")
    assert result.exit_code == 0
    assert len(stored(engine)) == 3


def test_gzipped_files_are_read_by_extension(runner, engine, tmp_path):
    path = tmp_path / "events.csv.gz"
    path.write_bytes(gzip.compress(b"event,user_id\nplay,u1\nstop,u1\n"))
    result = run_import(runner, str(path))
    assert result.exit_code == 0, result.output
    assert len(stored(engine)) == 2
    broken = tmp_path / "broken.ndjson.gz"
    broken.write_bytes(gzip.compress((ev(0) + "\n").encode() * 50)[:-20])
    result = run_import(runner, str(broken))
    assert result.exit_code == 1
    assert "cannot read" in result.output


@pytest.mark.parametrize("name", ["events.txt", "events"])
def test_an_unknown_extension_needs_a_format(runner, tmp_path, name):
    result = run_import(runner, write(tmp_path / name, [ev(0)]))
    assert result.exit_code == 2
    assert "--format" in result.output


def test_a_missing_file_is_a_clear_error(runner, tmp_path):
    result = run_import(runner, str(tmp_path / "nope.ndjson"))
    assert result.exit_code == 1
    assert "cannot read" in result.output and "No such file" in result.output


# --- the real command line ------------------------------------------------------------------------


def run_flask(database_url: str, *args, input: bytes | None = None):
    return run_flask_text(database_url, *args, input=input, text=False)


def test_command_line_from_a_pipe(database_url, engine):
    data = ("\n".join([ev(0, event_id="p1"), "oops", ev(2)]) + "\n").encode()
    done = run_flask(database_url, "import", "-", "--format", "ndjson", input=data)
    assert done.returncode == 3, done.stderr
    assert done.stdout.decode().splitlines() == [
        "-: 2 accepted, 0 duplicates, 1 rejected",
        "  line 2: Malformed JSON",
    ]
    assert done.stderr == b""
    assert len(stored(engine)) == 2


def test_command_line_shows_a_progress_bar_in_a_terminal(database_url, engine, tmp_path):
    source = write(tmp_path / "e.ndjson", [ev(i % 60) for i in range(300)])
    text = run_in_terminal(["import", source, "--chunk-size", "50"], database_url)
    assert f"Importing {source}" in text
    assert "100%" in text
    assert f"{source}: 300 accepted, 0 duplicates, 0 rejected" in text
    assert len(stored(engine)) == 300


def test_an_unreachable_database_is_one_clear_line_and_a_failure(backend, tmp_path):
    source = write(tmp_path / "e.ndjson", [ev(0)])
    done = run_flask(unreachable_url(backend, tmp_path), "import", source)
    assert done.returncode == 1
    assert done.stdout == b""
    [line] = done.stderr.decode().splitlines()
    assert line.startswith("Error: cannot reach the database at ")
    assert "Traceback" not in done.stderr.decode()


def test_a_database_lost_midway_keeps_what_was_committed(app, engine, tmp_path, monkeypatch):
    """The database goes away after the first chunk: the import stops with a clear message,
    the first chunk stays stored, and running the import again finishes the job."""
    source = write(tmp_path / "e.ndjson", [ev(i % 60, event_id=f"id{i}") for i in range(10)])
    calls = {"n": 0}

    from analytics import importer

    original = importer.writer.store_events

    def fail_second_chunk(session, rows):
        calls["n"] += 1
        if any(row.event_id == "id4" for row in rows):  # the second chunk (lines 5 to 8)
            # What a lost connection looks like to the importer: SQLAlchemy found it dead.
            from sqlalchemy.exc import OperationalError

            lost = Exception("server closed the connection")
            raise OperationalError("INSERT", {}, lost, connection_invalidated=True)
        return original(session, rows)

    monkeypatch.setattr(importer.writer, "store_events", fail_second_chunk)
    result = app.test_cli_runner().invoke(args=["import", source, "--chunk-size", "4"])
    monkeypatch.undo()
    assert result.exit_code == 1
    assert "4 accepted, 0 duplicates, 0 rejected; stopped after line 4" in result.output
    assert "run the same import again to resume" in result.output
    assert "cannot reach the database" in result.output
    assert len(stored(engine)) == 4

    again = app.test_cli_runner().invoke(args=["import", source, "--chunk-size", "4"])
    assert again.exit_code == 0, again.output
    assert "6 accepted, 4 duplicates, 0 rejected" in again.output
    assert len(stored(engine)) == 10


def test_a_database_without_tables_stops_the_import_clearly(
    scratch_database, app_factory, tmp_path
):
    """A database error reaches the operator as one clear line (here: a database nobody ran
    the migrations on)."""
    app = app_factory(scratch_database)
    source = write(tmp_path / "e.ndjson", [ev(i % 60) for i in range(10)])
    result = app.test_cli_runner().invoke(args=["import", source, "--chunk-size", "4"])
    assert result.exit_code == 1, result.output
    assert "stopped before anything was committed" in result.output
    assert "Error: no events table in the database at " in result.output
    assert "(run flask --app analytics migrate)" in result.output
    assert "Traceback" not in result.output


# --- chunks written side by side, counted in file order ---------------------------------------


def finished(result=None, error=None):
    future = Future()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
    return future


def drive(futures, last_lines, fail_reading_after=None):
    summary, rejected = ImportSummary(), []

    def work():
        for number, (future, last_line) in enumerate(zip(futures, last_lines)):
            if number == fail_reading_after:
                raise OSError("damaged input")
            yield (lambda future=future: future), last_line

    counting = _InOrder(
        summary, lambda number, message: rejected.append(number), lambda summary: None
    )
    return summary, rejected, counting, work()


def test_a_failed_chunk_ends_the_committed_prefix_but_later_commits_still_count():
    summary, rejected, counting, work = drive(
        [
            finished((4, 0, [])),
            finished(error=RuntimeError("lost")),
            finished((3, 1, [(27, "bad")])),
        ],
        [10, 20, 30],
    )
    with pytest.raises(RuntimeError):
        counting.drive(work, depth=3)
    assert summary.last_line == 10  # lines 11 to 20 are not committed: resume from there
    assert (summary.accepted, summary.duplicates, summary.rejected) == (7, 1, 1)
    assert rejected == [27]


def test_an_input_error_keeps_the_chunks_already_written_in_the_prefix():
    summary, _, counting, work = drive(
        [finished((4, 0, [])), finished((4, 0, [])), finished((4, 0, []))],
        [10, 20, 30],
        fail_reading_after=2,
    )
    with pytest.raises(OSError):
        counting.drive(work, depth=2)
    assert summary.last_line == 20
    assert summary.accepted == 8


@pytest.mark.parametrize("writers", [1, 2, 3])
def test_several_writers_store_everything_and_count_in_file_order(database_url, engine, writers):
    from sqlalchemy.orm import Session

    from analytics.db import make_engine
    from analytics.importer import Importer, Line

    lines = [
        Line(n, json.loads(ev(n % 60, event_id=f"id{n % 70}", user_id=f"u{n % 7}")), True)
        for n in range(1, 101)
    ]
    lines[41] = Line(42, {"event": "play"})
    counted = []
    own = make_engine(database_url)
    try:
        job = Importer(
            Session(own, expire_on_commit=False),
            10000,
            chunk_size=9,
            writers=writers,
            on_rejected=lambda number, message: counted.append(number),
            on_chunk=lambda summary: counted.append(summary.last_line),
        )
        summary = job.run(iter(lines))
    finally:
        own.dispose()
    assert (summary.accepted, summary.duplicates, summary.rejected) == (69, 30, 1)
    assert summary.last_line == 100
    # Chunk ends (every 9th line) in order, and line 42 reported before the end of its chunk.
    assert counted == [9, 18, 27, 36, 42, 45, 54, 63, 72, 81, 90, 99, 100]
    assert len(stored(engine)) == 69
    with engine.connect() as conn:  # and the daily totals took each stored event once
        assert conn.execute(text("SELECT sum(q0 + q1 + q2 + q3) FROM event_hours")).scalar() == 69
