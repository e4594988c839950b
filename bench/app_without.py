"""The API without some aggregates, to measure what each costs the write path: the names in
BENCH_WITHOUT (comma-separated, e.g. ``active_users``) are taken out of the registry before the
app is made. For benchmarks only: the answers of a server without an aggregate are wrong."""

from __future__ import annotations

import os

from analytics import aggregates, writer

_without = set(filter(None, os.environ.get("BENCH_WITHOUT", "").split(",")))
aggregates.REGISTRY = writer.REGISTRY = tuple(
    aggregate for aggregate in aggregates.REGISTRY if aggregate.name not in _without
)

from analytics.wsgi import app  # noqa: E402,F401
