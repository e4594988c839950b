"""The active users' log, folded in the background: one thread a process, woken by a write
whose event ids hit the cadence (``active_users.folds_log``) once it has committed, so that
neither that write nor the requests queued behind it wait for the fold. The thread folds in
chunks, each its own transaction (``writer.fold_activity``), so that other writers wait for a
chunk at most. Reads, deletes and the purge fold for themselves, so nothing depends on this
thread for exact answers: a fold it could not do (a busy database) is left for the next.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from sqlalchemy import Engine

log = logging.getLogger(__name__)


class Folder:
    """The thread of one process and the engines it has been asked to fold the log of."""

    def __init__(self, fold: Callable[[Engine], None]):
        self._fold = fold
        self._lock = threading.Condition()
        self._pending: dict[int, Engine] = {}
        self._busy = False
        self._thread: threading.Thread | None = None
        self._pid = 0

    def wake(self, engine: Engine) -> None:
        with self._lock:
            self._pending[id(engine)] = engine
            # Started here, not at import: a thread does not survive gunicorn's fork.
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="fold", daemon=True)
                self._thread.start()
            self._lock.notify()

    def wait_idle(self, timeout: float) -> bool:
        """Whether every fold asked for so far is done within ``timeout`` seconds."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._pending and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: bool(self._pending))
                engines = list(self._pending.values())
                self._pending.clear()
                self._busy = True
            for engine in engines:
                try:
                    self._fold(engine)
                except Exception:  # the log stays for the next fold; reads fold for themselves
                    log.warning("the active users' log could not be folded", exc_info=True)
            with self._lock:
                self._busy = False
                self._lock.notify_all()
