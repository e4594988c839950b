"""Group commit for POST /track: single events from concurrent requests share transactions.

A durable single event costs a transaction: on PostgreSQL several round trips and a WAL flush,
on SQLite the database's one write lock. When a worker serves several requests at once
(gunicorn's threaded workers), each process has one writer thread: request threads hand it
their event and wait; the writer takes every event waiting at that moment, stores them with
``writer.store_events`` in one transaction, and only then wakes each request with its own
result. So every 200 follows its event's commit, and under load one commit serves many
requests. A lone request is written at once (nothing waits for company).

It fails closed: a request whose event has no result (the writer stopped, or the wait passed
its bound) gets an error, never a success. If the shared transaction fails for a reason other
than the database being unreachable or held whole by another writer, each event of the group
is tried again alone, so one event the database refuses, or one user's lock held elsewhere,
cannot fail the others' requests.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass, field

from flask import Flask

from analytics.db import get_session
from analytics.errors import is_unreachable
from analytics.rows import EventRow
from analytics.writer import store_events

EXTENSION_KEY = "analytics.committer"
MAX_GROUP = 200  # events per shared transaction


class NoResult(Exception):
    """The event's fate is unknown: the writer did not report within the wait's bound, or
    stopped without a result. The event may or may not be stored; a retry with the same
    event_id is safe."""


@dataclass(eq=False)
class _Pending:
    row: EventRow
    done: threading.Event = field(default_factory=threading.Event)
    stored: bool | None = None  # None: no result (yet)
    error: BaseException | None = None


class GroupCommitter:
    """One writer thread per process for an app; see the module's description."""

    def __init__(self, app: Flask, wait_seconds: float):
        self._app = app
        self._wait_seconds = wait_seconds
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._thread: threading.Thread | None = None
        # Every writer started, with the queue it reads, so that close() can stop them all.
        self._started: list[tuple[threading.Thread, queue.SimpleQueue[_Pending | None]]] = []

    def store(self, row: EventRow) -> bool:
        """Store one event and commit; whether it was stored (False: a duplicate). Raises what
        storing it raised, or NoResult."""
        self._start()
        pending = _Pending(row)
        self._queue.put(pending)
        if not pending.done.wait(self._wait_seconds):
            raise NoResult(f"no result within {self._wait_seconds} s")
        if pending.error is not None:
            raise pending.error
        if pending.stored is None:
            raise NoResult("the writer stopped without a result")
        return pending.stored

    def _start(self) -> None:
        # After a fork (gunicorn's workers) the parent's thread does not exist: start one per
        # process, on first use (and again should it ever have stopped).
        if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._pid != os.getpid() or self._thread is None or not self._thread.is_alive():
                if self._pid != os.getpid():
                    self._queue = queue.SimpleQueue()
                self._thread = threading.Thread(
                    target=self._run, args=(self._queue,), name="track-writer", daemon=True
                )
                self._thread.start()
                self._started.append((self._thread, self._queue))
                self._pid = os.getpid()

    def close(self, timeout: float = 10.0) -> None:
        """Stop this process's writers once they have written what waits for them (a stopped
        committer starts a writer again on the next store)."""
        with self._lock:
            started, self._started = self._started, []
            self._pid = None
        for thread, incoming in started:
            if thread.is_alive():
                incoming.put(None)  # the writer's signal to stop
        for thread, _ in started:
            thread.join(timeout)

    def _run(self, incoming: queue.SimpleQueue[_Pending | None]) -> None:
        stopping = False
        while not stopping:
            first = incoming.get()
            if first is None:
                return
            group = [first]
            while len(group) < MAX_GROUP:
                try:
                    pending = incoming.get_nowait()
                except queue.Empty:
                    break
                if pending is None:
                    stopping = True  # after this group
                    break
                group.append(pending)
            try:
                self._write(group)
            except BaseException:  # noqa: BLE001 - the group's requests get NoResult
                self._app.logger.exception("the writer lost a group of events")
            finally:
                for pending in group:
                    pending.done.set()

    def _write(self, group: list[_Pending]) -> None:
        with self._app.app_context():
            try:
                self._commit(group)
                return
            except Exception as exc:  # noqa: BLE001 - handed to the waiting requests
                # Alone, each event would meet the same wall: every one fails with it.
                if len(group) == 1 or is_unreachable(exc) or getattr(exc, "whole_database", False):
                    for pending in group:
                        pending.error = exc
                    return
            for pending in group:  # find the event at fault: each alone
                try:
                    self._commit([pending])
                except Exception as exc:  # noqa: BLE001
                    pending.error = exc

    @staticmethod
    def _commit(group: list[_Pending]) -> None:
        stored = store_events(get_session(), [pending.row for pending in group])
        for pending, was_stored in zip(group, stored):
            pending.stored = was_stored


def init_app(app: Flask) -> None:
    app.extensions[EXTENSION_KEY] = GroupCommitter(app, app.config["TRACK_WAIT_SECONDS"])


def store_event(app: Flask, row: EventRow) -> bool:
    """Store one event through the app's group committer."""
    committer: GroupCommitter = app.extensions[EXTENSION_KEY]
    return committer.store(row)
