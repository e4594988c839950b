"""mypy's settings (pyproject.toml) are strict enough to catch a row of the wrong type on the
write path: the kind of mistake untyped row dicts let through."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow

WRONG_ROWS = '''
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from analytics import writer
from analytics.rows import EventRow, StoredEvent


def store(session: Session) -> None:
    now = datetime.now(UTC)
    writer.store_events(session, [{"event": "play", "user_id": "u"}])
    EventRow(event="play", user_id=1, occurred_at=now, received_at=now, metadata_json="null")
    StoredEvent(now, "1", "play", "u")
'''


def mypy(source: str, tmp_path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "snippet.py"
    path.write_text(source)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), str(path)],
        cwd=ROOT,  # the project's settings, from pyproject.toml
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_mypy_refuses_rows_of_the_wrong_type(tmp_path):
    result = mypy(WRONG_ROWS, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for line_number in (12, 13, 14):  # the dict, the user_id, the id
        assert any(f"snippet.py:{line_number}: error" in line for line in lines), result.stdout


def test_the_same_rows_typed_right_pass(tmp_path):
    right = (
        WRONG_ROWS.replace('[{"event": "play", "user_id": "u"}]', "[]")
        .replace("user_id=1", 'user_id="1"')
        .replace('StoredEvent(now, "1",', "StoredEvent(now, 1,")
    )
    result = mypy(right, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
