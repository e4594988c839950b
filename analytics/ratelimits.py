"""Rate limits: per key (its ``--rate``), or per client address (RATE_LIMIT_ANONYMOUS) for
requests without a valid key; 429 "Rate limit exceeded" over the limit, and ``RateLimit-*``
headers on every response a limit applies to.

One allowance is shared by every endpoint a client calls, in fixed windows (a batch is one
request). Counts live in Redis when RATE_LIMIT_STORAGE_URL names one, so they hold across
processes and hosts; in memory otherwise, where each process counts alone. Should Redis stop
answering, each process counts in memory until it answers again, rather than refusing or
failing requests.

A process takes counts from Redis a few at a time and hands them out itself (``Leases``), so
that a busy key costs a Redis round trip every few dozen requests, not every request. A count
is only handed out once Redis has counted it, so a limit is never exceeded; what a process took
and has not yet handed out can make another process refuse a little early (docs/decisions.md).

Rates are parsed, and counted in memory, by ``limits``, the library under flask-limiter.
flask-limiter itself is not used on the request path: it asks its storage three times per
request (the count, then the count and expiry again for the headers), which took
Redis-backed requests to under half the throughput of unlimited ones; here one script call
both counts and says when the window ends, and the calls of a process's concurrent requests
share round trips (``RedisCounts``; docs/decisions.md).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from functools import lru_cache

import redis
from flask import Flask, Response, current_app, g, request
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage

from analytics.auth import current_access
from analytics.errors import APIError

EXTENSION_KEY = "analytics.ratelimits"
EXCEEDED = "Rate limit exceeded"
# A Redis that does not answer costs a request this long at most before memory takes over...
REDIS_TIMEOUT_SECONDS = 0.5
# ...and is tried again after this long.
REDIS_RETRY_SECONDS = 5.0
log = logging.getLogger(__name__)

# A process takes at most this share of what is left of a window's allowance at once, and at
# most LEASE_MOST counts...
LEASE_SHARE = 16
LEASE_MOST = 64
# ...and takes twice as many as last time only when it handed out the last ones within this
# long: a process that sees a key seldom takes one count at a time, and strands none.
LEASE_BUSY_SECONDS = 1.0

# Counts ARGV[2] requests and tells when their window ends, in one round trip. The first call
# of a window starts it; a count left without an expiry (never by this script) is given one.
COUNT_SCRIPT = """
local count = redis.call('INCRBY', KEYS[1], ARGV[2])
if count == tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1]) * 1000
end
return {count, ttl}
"""


@lru_cache(maxsize=1024)
def parse(rate: str) -> tuple[RateLimitItem, ...]:
    return tuple(parse_many(rate))


@dataclass(frozen=True)
class Count:
    """Where a request leaves its allowance: what the RateLimit headers say."""

    limit: int
    remaining: int
    reset_seconds: int
    exceeded: bool


class Counter:
    """Fixed-window counts, in Redis or in this process's memory."""

    def __init__(self, storage_url: str, prefix: str):
        self.prefix = prefix
        self.memory = MemoryStorage()
        self._redis_down_until = 0.0
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._redis: Leases | None = None
        if not storage_url.startswith("memory"):
            self._client = redis.Redis.from_url(
                storage_url,
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            )
            self._redis = Leases(RedisCounts(self._client))

    def close(self) -> None:
        """Close the Redis connections and stop the memory store's expiry timer."""
        self.memory.timer.cancel()
        if self._client is not None:
            self._client.close()

    def hit(self, rate: str, bucket: str) -> Count:
        """Count one request of ``bucket`` against each limit of ``rate``."""
        counts = [self._hit_one(item, bucket) for item in parse(rate)]
        # The header describes the limit the request broke, else the one closest to it.
        return min(counts, key=lambda count: (not count.exceeded, count.remaining))

    def _hit_one(self, item: RateLimitItem, bucket: str) -> Count:
        key = item.key_for(self.prefix, bucket)
        window = item.get_expiry()
        count, seconds = self._count(key, window, item.amount)
        return Count(
            limit=item.amount,
            remaining=max(0, item.amount - count),
            reset_seconds=max(0, math.ceil(seconds)),
            exceeded=count > item.amount,
        )

    def _count(self, key: str, window: int, limit: int) -> tuple[int, float]:
        if self._redis is not None and time.monotonic() >= self._redis_down_until:
            try:
                return self._redis.count(key, window, limit)
            except redis.RedisError as exc:
                with self._lock:
                    self._redis_down_until = time.monotonic() + REDIS_RETRY_SECONDS
                log.warning(
                    "rate limit storage unavailable (%s): counting in this process for now",
                    exc.__class__.__name__,
                )
        count = self.memory.incr(key, window)
        return count, self.memory.get_expiry(key) - time.time()


@dataclass
class _Lease:
    """What a process holds of one key's window: counts Redis gave it and it has not handed
    out (largest first, so that ``pop`` gives the smallest), and how it took the last ones."""

    ends: float  # time.monotonic() at the window's end
    free: list[int]
    highest: int  # the highest count Redis gave this process in the window
    size: int  # how many the last call took
    taken_at: float


class Leases:
    """Counts of a window taken from Redis a few at a time, and handed out by this process.

    A process takes one count a call at first, then twice as many as the call before while it
    hands them out within LEASE_BUSY_SECONDS, up to LEASE_MOST and LEASE_SHARE of what is left
    of the allowance. Every count handed out was counted in Redis first, so the processes
    together never let more through than the limit. Once Redis reports the allowance spent,
    the rest of the window is refused here without asking it again.
    """

    PRUNE_AT = 1024  # leases kept before the ended ones are dropped

    def __init__(self, counts: RedisCounts):
        self._counts = counts
        self._lock = threading.Lock()
        self._leases: dict[str, _Lease] = {}
        self._prune_at = self.PRUNE_AT

    def count(self, key: str, window: int, limit: int) -> tuple[int, float]:
        """(this request's count in its window, seconds left in the window)."""
        now = time.monotonic()
        with self._lock:
            lease = self._leases.get(key)
            if lease is not None and now < lease.ends:
                if lease.free:
                    return lease.free.pop(), lease.ends - now
                if lease.highest >= limit:
                    return lease.highest + 1, lease.ends - now
                busy = now - lease.taken_at < LEASE_BUSY_SECONDS
                take = min(lease.size * 2 if busy else 1, LEASE_MOST)
                take = max(1, min(take, (limit - lease.highest) // LEASE_SHARE))
            else:
                take = 1
        highest, ttl_ms = self._counts.count(key, window, take)
        now = time.monotonic()
        ends = now + ttl_ms / 1000
        first = highest - take + 1  # this request's; the rest, up to the limit, are kept
        kept = range(first + 1, min(highest, limit) + 1)
        with self._lock:
            # Concurrent calls answer in any order. One of the window held (it ends when that
            # one ends; the next ends a window later) adds its counts; one of a later window
            # starts a lease; one of a window already replaced lapses with it.
            lease = self._leases.get(key)
            if lease is None or ends > lease.ends + 0.5:
                self._leases[key] = _Lease(ends, sorted(kept, reverse=True), highest, take, now)
                self._prune(now)
            elif ends > lease.ends - 0.5:
                lease.free.extend(kept)
                lease.free.sort(reverse=True)
                lease.highest = max(lease.highest, highest)
                lease.size, lease.taken_at = take, now
        return first, ends - now

    def _prune(self, now: float) -> None:
        if len(self._leases) < self._prune_at:
            return
        self._leases = {key: lease for key, lease in self._leases.items() if now < lease.ends}
        self._prune_at = max(self.PRUNE_AT, 2 * len(self._leases))


class _Pending:
    """One call's counts, on their way to Redis: settled with the count and the window's
    remaining milliseconds, or with the error that kept them from being counted."""

    __slots__ = ("key", "window", "take", "woken", "result", "error")

    def __init__(self, key: str, window: int, take: int):
        self.key, self.window, self.take = key, window, take
        self.woken = threading.Event()
        self.result: tuple[int, int] | None = None
        self.error: BaseException | None = None


class RedisCounts:
    """COUNT_SCRIPT calls of a process's threads, sent together.

    A request that finds no round trip in flight sends its call at once; the calls of
    requests that arrive meanwhile wait and go together, in one pipeline, when it returns,
    sent by the first of them. Each call is still its own script run, so every count is as
    exact as when sent alone; under load a process pays a round trip per group of requests
    instead of per request (docs/decisions.md).
    """

    def __init__(self, client: redis.Redis):
        self._client = client
        self._sha: str | None = None
        self._lock = threading.Lock()
        self._waiting: list[_Pending] = []
        self._sending = False

    def count(self, key: str, window: int, take: int = 1) -> tuple[int, int]:
        """(count after this call's ``take`` requests, milliseconds left in their window)."""
        mine = _Pending(key, window, take)
        with self._lock:
            self._waiting.append(mine)
            lead = not self._sending
            self._sending = True
        if not lead:
            mine.woken.wait()  # settled by the sender of its group, or told to send it
        if mine.result is None and mine.error is None:
            self._send_waiting()
        if mine.error is not None:
            raise mine.error
        assert mine.result is not None
        return mine.result

    def _send_waiting(self) -> None:
        """Send every waiting call in one pipeline, settle them, then wake the first call that
        arrived meanwhile to send the next group (or note that nothing is in flight)."""
        with self._lock:
            group, self._waiting = self._waiting, []
        try:
            results = self._run(group)
            for pending, (count, ttl_ms) in zip(group, results, strict=True):
                pending.result = (int(count), int(ttl_ms))
        except BaseException as exc:  # every caller of the group learns it, and counts alone
            for pending in group:
                pending.error = exc
        finally:
            for pending in group:
                pending.woken.set()
            with self._lock:
                if self._waiting:
                    self._waiting[0].woken.set()
                else:
                    self._sending = False

    def _run(self, group: list[_Pending], tries: int = 2) -> list[tuple[int, int]]:
        if self._sha is None:
            self._sha = self._client.script_load(COUNT_SCRIPT)
        pipe = self._client.pipeline(transaction=False)
        for pending in group:
            pipe.evalsha(self._sha, 1, pending.key, pending.window, pending.take)
        try:
            return pipe.execute()
        except redis.exceptions.NoScriptError:
            # A Redis restarted or flushed forgets its scripts; a call refused for that was
            # not run, so the group can be sent again, once.
            self._sha = None
            if tries == 1:
                raise
            return self._run(group, tries - 1)


def _check() -> None:
    access = current_access()
    if access.scope is None:
        return  # /health, /openapi.json, preflights and unknown paths are never limited
    if access.key is not None:
        rate = access.key.rate
        # The digest rather than the row id: deployments sharing a Redis never share a count.
        bucket = f"key:{access.key.secret_hash[:32]}"
    else:
        rate = current_app.config["RATE_LIMIT_ANONYMOUS"]
        bucket = f"addr:{request.remote_addr}"
    if not rate:
        return
    count = current_app.extensions[EXTENSION_KEY].hit(rate, bucket)
    g.rate_count = count
    if count.exceeded:
        raise APIError(429, EXCEEDED)


def _add_headers(response: Response) -> Response:
    count: Count | None = g.pop("rate_count", None)
    if count is not None:
        response.headers["RateLimit-Limit"] = str(count.limit)
        response.headers["RateLimit-Remaining"] = str(count.remaining)
        response.headers["RateLimit-Reset"] = str(count.reset_seconds)
        if response.status_code == 429:
            response.headers["Retry-After"] = str(max(1, count.reset_seconds))
    return response


def init_app(app: Flask) -> None:
    app.extensions[EXTENSION_KEY] = Counter(
        app.config["RATE_LIMIT_STORAGE_URL"], app.config.get("RATE_LIMIT_KEY_PREFIX", "analytics")
    )
    app.before_request(_check)
    app.after_request(_add_headers)
