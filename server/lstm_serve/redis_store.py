"""A shared session store on Redis: any replica or worker continues any session.

Each session is one Redis hash ``<prefix>s:<id>`` with three fields: ``v``, the store
version, ``s``, the SessionSnapshot bytes (the same encoding a resume token seals), and
``w``, the id of the write that put them there. Every write is compare-and-set on ``v``
in one Lua script, so a stale writer (a paused process that lost its lease) can never
overwrite newer state: it gets :class:`~lstm_serve.session_store.StaleState` and drops its
copy. Every write refreshes the key's TTL (the idle TTL) and a tombstone
``<prefix>x:<id>`` that outlives it, so a late caller hears "expired", not "unknown".
A sorted set ``<prefix>index`` scores every session id by when its key expires: the
session cap (``max_sessions``) counts it, over every replica, when a session is created.

Ownership: a process that holds a session (a stream while attached, a Predict for the
call) holds a lease ``<prefix>l:<id>`` (SET NX PX) naming itself; a second process
asking for the session gets FAILED_PRECONDITION naming the holder and when the lease
runs out. A dead process's lease expires and anyone may take over.

Failure budgets: each attempt at an operation gets ``op_timeout_s``; failed attempts
are retried with backoff (50 ms doubling, capped at ``backoff_max_s``) within
``call_budget_s``; then the call gets UNAVAILABLE ("session store unavailable") with a
retry hint, and the store counts as down for the current backoff (calls fail at once
until the next attempt to reconnect). Every operation is safe to repeat: reads, lease
scripts that check the holder, and writes that recognise their own write id, so a
write whose reply was lost is never applied twice. Nothing is half-written, because
every write is a single script. Keys of one session and the index are not in one hash
slot: use one Redis (with replicas), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ReadOnlyError, RedisError, ResponseError

from lstm_serve import snapshot
from lstm_serve.domain import ModelRef
from lstm_serve.errors import Overloaded, SessionConflict, StoreUnavailable, echo
from lstm_serve.manifest import Manifest
from lstm_serve.metrics import Metrics
from lstm_serve.repository import ModelRepository
from lstm_serve.session_store import StaleState
from lstm_serve.state import SessionState

T = TypeVar("T")

TOMBSTONE_S = 3600.0
"""How long after expiry a session id still answers NOT_FOUND "expired"."""

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_CAS = _NOW + """
local cur = redis.call('HMGET', KEYS[1], 'v', 'w')
local current = cur[1]
local expected = tonumber(ARGV[1])
if current and tonumber(current) == tonumber(ARGV[2]) and cur[2] == ARGV[6] then return 0 end
if expected == 0 then
  if current then return -1 end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[7]) then return -3 end
elseif (not current) or tonumber(current) ~= expected then
  if current then return tonumber(current) end
  return -2
end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 's', ARGV[3], 'w', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[5])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[8])
return 0
"""
"""Compare-and-set one session (KEYS: session, tombstone, index). A write carries a
fresh write id: run again after an unknown outcome (a timeout), it finds its own
effect and answers 0 instead of writing twice, so it is safe to retry. A create
(expected 0) first drops the index entries whose TTL ran out and refuses at the cap
(-3)."""

_DELETE = """
redis.call('ZREM', KEYS[3], ARGV[1])
return redis.call('DEL', KEYS[1], KEYS[2])
"""

_COUNT = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""

_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1} end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1}
end
return {0, redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
"""
"""Take the lease, or extend it when this holder has it already (so a retry after an
unknown outcome is harmless); otherwise the holder and the time it has left."""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_RENEW = _NOW + """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  if redis.call('PEXPIRE', KEYS[2], ARGV[3]) == 1 then
    redis.call('ZADD', KEYS[3], 'XX', now + tonumber(ARGV[3]), ARGV[4])
  end
  return 1
end
return 0
"""

BACKOFF_START_S = 0.05
"""The first pause between two attempts at a store operation; it doubles up to the cap."""


class SnapshotCodec:
    """Session states to snapshot bytes and back, validated against the repository."""

    def __init__(self, repository: ModelRepository, ttl_s: float) -> None:
        self._repository = repository
        self._ttl_ms = int(ttl_s * 1000)

    def encode(self, state: SessionState) -> bytes:
        entry = self._repository.find(state.model.name, state.model.version)
        assert entry.manifest is not None
        return snapshot.encode(state, entry.manifest, state.updated_ms + self._ttl_ms)

    def decode(self, data: bytes, session_id: str) -> SessionState:
        state, _ = snapshot.decode_bound(data, self._runtime_of, f"session '{echo(session_id)}'")
        return state

    def _runtime_of(self, ref: ModelRef) -> tuple[Manifest, str]:
        runtime = self._repository.find(ref.name, ref.version).require_runtime()
        return runtime.manifest, runtime.content_hash


class RedisSessionStore:
    """Session states in Redis, with leases and fencing."""

    shared = True

    def __init__(
        self,
        url: str,
        codec: SnapshotCodec,
        metrics: Metrics,
        *,
        ttl_s: float,
        max_sessions: int,
        lease_s: float,
        op_timeout_s: float,
        call_budget_s: float = 3.0,
        backoff_max_s: float = 2.0,
        key_prefix: str = "lstm-serve:",
        password: str | None = None,
        max_connections: int = 8,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.lease_s = lease_s
        self._codec = codec
        self._metrics = metrics
        self._timeout = op_timeout_s
        self._prefix = key_prefix
        self._index = f"{key_prefix}index"
        """A sorted set of every session id, scored by when its key expires: the cap's count."""
        self._budget = call_budget_s
        self._backoff_max = backoff_max_s
        self._backoff = BACKOFF_START_S
        self._down_until = 0.0
        """time.monotonic() before which the store counts as down (no attempt is made)."""
        # No retries inside redis-py: ours know which operations are safe to repeat. A
        # blocking pool: at the cap a call waits for a warm connection, not a new connect.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, password=password, socket_timeout=op_timeout_s, socket_connect_timeout=op_timeout_s,
            retry_on_timeout=False, retry=Retry(NoBackoff(), 0), max_connections=max_connections, timeout=op_timeout_s,
        )
        self._redis = aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
        self._cas = self._redis.register_script(_CAS)
        self._delete = self._redis.register_script(_DELETE)
        self._count = self._redis.register_script(_COUNT)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._release = self._redis.register_script(_RELEASE)
        self._renew = self._redis.register_script(_RENEW)

    def _key(self, kind: str, session_id: str) -> str:
        return f"{self._prefix}{kind}:{session_id}"

    async def _op(self, name: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run one store operation: each attempt within ``op_timeout_s``, retried with
        backoff within ``call_budget_s``. Every operation here is safe to repeat (reads,
        lease scripts that check the holder, writes that recognise their own write id).
        When the budget is spent the store counts as down for the current backoff, so
        the calls behind this one fail at once instead of each waiting out a budget."""
        started = time.perf_counter()
        now = time.monotonic()
        if now < self._down_until:
            self._metrics.store_errors.labels(name, "down").inc()
            raise self._unavailable(name, "down", self._down_until - now)
        deadline = now + self._budget
        delay = BACKOFF_START_S
        try:
            while True:
                left = deadline - time.monotonic()
                try:
                    result = await asyncio.wait_for(call(), max(min(self._timeout, left), 0.001))
                except (RedisError, TimeoutError, OSError) as exc:
                    kind = type(exc).__name__
                    self._metrics.store_errors.labels(name, kind).inc()
                    # Redis answered (a script error, out of memory): repeating changes nothing;
                    # a replica that is read-only during a failover is worth another try.
                    if isinstance(exc, ResponseError) and not isinstance(exc, ReadOnlyError):
                        raise self._unavailable(name, kind, self._backoff) from None
                    if deadline - time.monotonic() <= delay:
                        retry_after = self._backoff
                        self._down_until = time.monotonic() + retry_after
                        self._backoff = min(self._backoff * 2, self._backoff_max)
                        raise self._unavailable(name, kind, retry_after) from None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._backoff_max)
                    continue
                self._backoff = BACKOFF_START_S
                return result
        finally:
            self._metrics.store_latency.labels(name).observe(time.perf_counter() - started)

    @staticmethod
    def _unavailable(name: str, kind: str, retry_after_s: float) -> StoreUnavailable:
        outcome = (
            "the step's write may or may not have landed: retry stating frame_offset, or resume from "
            "started.next_sequence_number"
            if name == "write"
            else "the session is unchanged"
        )
        return StoreUnavailable(
            f"session store unavailable ({name}: {kind}); retry in {retry_after_s:.2f} s or later, with "
            f"backoff; {outcome}",
            retry_after_s,
        )

    async def ping(self) -> bool:
        """True when Redis answers."""
        try:
            return bool(await self._op("ping", self._redis.ping))
        except StoreUnavailable:
            return False

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()

    # ---- SessionStore ----------------------------------------------------------------
    async def get(self, session_id: str) -> SessionState | None:
        """The committed state, or None."""
        fields: list[Any] = await self._op(
            "get", lambda: self._redis.hmget(self._key("s", session_id), ["v", "s"])
        )
        if fields[0] is None or fields[1] is None:
            return None
        return self._codec.decode(fields[1], session_id)

    async def _write(self, state: SessionState, expected: int, version: int) -> SessionState:
        stored = state.advanced(version=version)
        data = self._codec.encode(stored)
        ttl_ms = int(self.ttl_s * 1000)
        tomb_ms = ttl_ms + int(TOMBSTONE_S * 1000)
        sid = state.session_id
        keys = [self._key("s", sid), self._key("x", sid), self._index]
        args: list[bytes | str | int] = [
            expected, version, data, ttl_ms, tomb_ms, uuid.uuid4().hex, self.max_sessions, sid
        ]
        result = int(await self._op("write", lambda: self._cas(keys=keys, args=args)))
        if result == -3:
            self._metrics.sessions_rejected.labels("cap").inc()
            raise Overloaded(
                f"session cap reached: {self.max_sessions} live sessions in the shared store, counted over "
                "every replica (LSTM_SERVE_SESSIONS__MAX_SESSIONS). End idle sessions (End, or Predict "
                "with end_session), wait for idle ones to expire, or raise the cap."
            )
        if result != 0:
            self._metrics.fencing_rejections.inc()
            found = "exists already" if result == -1 else ("gone" if result == -2 else f"at version {result}")
            raise StaleState(
                f"session_id: session '{echo(sid)}' changed meanwhile (expected version "
                f"{expected}, {found}); this step was not applied"
            )
        return stored

    async def create(self, state: SessionState) -> SessionState:
        """Insert a new session at version 1."""
        return await self._write(state, 0, 1)

    async def compare_and_set(self, state: SessionState, expected_version: int) -> SessionState:
        """Replace the session if its stored version is ``expected_version``."""
        return await self._write(state, expected_version, expected_version + 1)

    async def put(self, state: SessionState) -> SessionState:
        """Insert or replace a session with a restored state."""
        for _ in range(3):
            current = await self.get(state.session_id)
            expected = current.version if current is not None else 0
            try:
                return await self._write(state, expected, max(expected, state.version) + 1)
            except StaleState:
                continue
        raise SessionConflict(f"session_id: session '{echo(state.session_id)}' is changing too fast to restore")

    async def delete(self, session_id: str, reason: str) -> None:
        """Remove a session (no tombstone: it ended, it did not expire)."""
        keys = [self._key("s", session_id), self._key("x", session_id), self._index]
        removed = await self._op("delete", lambda: self._delete(keys=keys, args=[session_id]))
        if removed:
            self._metrics.sessions_ended.labels(reason).inc()

    async def expire(self, now_ms: int, held: Callable[[str], bool]) -> list[str]:
        """Redis expires idle sessions itself (key TTLs); nothing to do here."""
        return []

    async def count(self) -> int:
        """Sessions in the store, over every replica (the index, less entries past their TTL)."""
        return int(await self._op("count", lambda: self._count(keys=[self._index])))

    async def was_expired(self, session_id: str) -> bool:
        """True when the session's tombstone outlived it."""
        tomb = await self._op("tombstone", lambda: self._redis.exists(self._key("x", session_id)))
        data = await self._op("tombstone", lambda: self._redis.exists(self._key("s", session_id)))
        return bool(tomb) and not data

    # ---- leases ----------------------------------------------------------------------
    async def acquire_lease(self, session_id: str, holder: str) -> None:
        """Own the session for ``lease_s``; FAILED_PRECONDITION when another holds it."""
        key = self._key("l", session_id)
        ms = int(self.lease_s * 1000)
        reply: list[Any] = await self._op("lease", lambda: self._acquire(keys=[key], args=[holder, ms]))
        if int(reply[0]) == 1:
            return
        owner = reply[1].decode() if isinstance(reply[1], bytes) else "another replica"
        self._metrics.lease_conflicts.inc()
        raise SessionConflict(
            f"session_id: session '{echo(session_id)}' is held by {owner} for another "
            f"{max(int(reply[2]), 0) / 1000:.1f} s (its lease); retry after that, or where it is held"
        )

    async def renew_lease(self, session_id: str, holder: str) -> bool:
        """Extend this holder's lease and the session's TTL; False when it was lost."""
        keys = [self._key("l", session_id), self._key("s", session_id), self._index]
        args: list[str | int] = [holder, int(self.lease_s * 1000), int(self.ttl_s * 1000), session_id]
        renewed = await self._op("lease", lambda: self._renew(keys=keys, args=args))
        return bool(renewed)

    async def release_lease(self, session_id: str, holder: str) -> None:
        """Give the lease up (only if this holder still has it)."""
        key = self._key("l", session_id)
        await self._op("lease", lambda: self._release(keys=[key], args=[holder]))
