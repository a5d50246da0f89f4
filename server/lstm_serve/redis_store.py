"""A shared session store on Redis: any replica or worker continues any session.

Each session is one Redis hash ``<prefix>s:<id>`` with two fields: ``v``, the store
version, and ``s``, the SessionSnapshot bytes (the same encoding a resume token
seals). Every write is compare-and-set on ``v`` in one Lua script, so a stale
writer (a paused process that lost its lease) can never overwrite newer state: it
gets :class:`~lstm_serve.sessions.StaleState` and drops its copy. Every write
refreshes the key's TTL (the idle TTL) and a tombstone ``<prefix>x:<id>`` that outlives
it, so a late caller hears "expired", not "unknown".

Ownership: a process that holds a session (a stream while attached, a Predict for the
call) holds a lease ``<prefix>l:<id>`` (SET NX PX) naming itself; a second process
asking for the session gets FAILED_PRECONDITION naming the holder and when the lease
runs out. A dead process's lease expires and anyone may take over.

A store that is down or slow answers within ``op_timeout_s`` per operation with
UNAVAILABLE ("session store unavailable"); nothing is half-written, because every
write is a single script.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from lstm_serve import snapshot
from lstm_serve.errors import SessionConflict, StoreUnavailable, echo
from lstm_serve.metrics import Metrics
from lstm_serve.repository import ModelRepository
from lstm_serve.sessions import StaleState
from lstm_serve.state import SessionState

T = TypeVar("T")

TOMBSTONE_S = 3600.0
"""How long after expiry a session id still answers NOT_FOUND "expired"."""

_CAS = """
local current = redis.call('HGET', KEYS[1], 'v')
local expected = tonumber(ARGV[1])
if expected == 0 then
  if current then return -1 end
elseif (not current) or tonumber(current) ~= expected then
  if current then return tonumber(current) end
  return -2
end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 's', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[5])
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  return 1
end
return 0
"""


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
        from lstmserve.v1 import session_pb2 as spb

        ref = spb.SessionSnapshot.FromString(data).model
        entry = self._repository.find(ref.name, ref.version)
        runtime = entry.require_runtime()
        state, _ = snapshot.decode(data, runtime.manifest, runtime.content_hash, f"session '{echo(session_id)}'")
        return state


class RedisSessionStore:
    """Session states in Redis, with leases and fencing."""

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
        key_prefix: str = "lstm-serve:",
        password: str | None = None,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.lease_s = lease_s
        self._codec = codec
        self._metrics = metrics
        self._timeout = op_timeout_s
        self._prefix = key_prefix
        self._redis = aioredis.Redis.from_url(
            url, password=password, socket_timeout=op_timeout_s, socket_connect_timeout=op_timeout_s,
            retry_on_timeout=False,
        )
        self._cas = self._redis.register_script(_CAS)
        self._release = self._redis.register_script(_RELEASE)
        self._renew = self._redis.register_script(_RENEW)

    def _key(self, kind: str, session_id: str) -> str:
        return f"{self._prefix}{kind}:{session_id}"

    async def _op(self, name: str, call: Callable[[], Awaitable[T]]) -> T:
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(call(), self._timeout)
        except (RedisError, TimeoutError, OSError) as exc:
            self._metrics.store_errors.labels(name, type(exc).__name__).inc()
            raise StoreUnavailable(
                f"session store unavailable ({name}: {type(exc).__name__}); retry with backoff, the "
                "session is unchanged"
            ) from None
        finally:
            self._metrics.store_latency.labels(name).observe(time.perf_counter() - started)

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
        keys = [self._key("s", state.session_id), self._key("x", state.session_id)]
        result = await self._op(
            "write", lambda: self._cas(keys=keys, args=[expected, version, data, ttl_ms, tomb_ms])
        )
        if int(result) != 0:
            self._metrics.fencing_rejections.inc()
            found = "exists already" if int(result) == -1 else (
                "gone" if int(result) == -2 else f"at version {int(result)}"
            )
            raise StaleState(
                f"session_id: session '{echo(state.session_id)}' changed meanwhile (expected version "
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
        keys = [self._key("s", session_id), self._key("x", session_id)]
        removed = await self._op("delete", lambda: self._redis.delete(*keys))
        if removed:
            self._metrics.sessions_ended.labels(reason).inc()

    async def expire(self, now_ms: int, held: Callable[[str], bool]) -> list[str]:
        """Redis expires idle sessions itself (key TTLs); nothing to do here."""
        return []

    async def count(self) -> int:
        """Not tracked: the cap is not enforced on a shared store (see README)."""
        return 0

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
        taken = await self._op("lease", lambda: self._redis.set(key, holder, nx=True, px=ms))
        if taken:
            return
        current = await self._op("lease", lambda: self._redis.get(key))
        left = await self._op("lease", lambda: self._redis.pttl(key))
        owner = current.decode() if isinstance(current, bytes) else str(current or "another replica")
        if owner == holder:
            return
        self._metrics.lease_conflicts.inc()
        raise SessionConflict(
            f"session_id: session '{echo(session_id)}' is held by {owner} for another {max(int(left), 0) / 1000:.1f} s "
            "(its lease); retry after that, or where it is held"
        )

    async def renew_lease(self, session_id: str, holder: str) -> bool:
        """Extend this holder's lease and the session's TTL; False when it was lost."""
        keys = [self._key("l", session_id), self._key("s", session_id)]
        ms = int(self.lease_s * 1000)
        renewed = await self._op("lease", lambda: self._renew(keys=keys, args=[holder, ms, int(self.ttl_s * 1000)]))
        return bool(renewed)

    async def release_lease(self, session_id: str, holder: str) -> None:
        """Give the lease up (only if this holder still has it)."""
        key = self._key("l", session_id)
        await self._op("lease", lambda: self._release(keys=[key], args=[holder]))
