"""Sessions as resume tokens: seal a committed state for the client, open one it
brings back. A token holds everything a replica needs to continue the session, so any
replica with the same keys can, with no shared store."""

from __future__ import annotations

from lstm_serve import snapshot
from lstm_serve.errors import InvalidInput, PreconditionFailed, ServeError, echo
from lstm_serve.lanes import Lane
from lstm_serve.metrics import Metrics
from lstm_serve.state import SessionState, now_ms
from lstm_serve.tokens import TokenSealer


class ResumeTokens:
    """Seals and opens the states of sessions; off without a key file."""

    def __init__(self, sealer: TokenSealer | None, ttl_s: float, metrics: Metrics) -> None:
        self._sealer = sealer
        self._ttl_ms = int(ttl_s * 1000)
        self._metrics = metrics

    @property
    def enabled(self) -> bool:
        """True when the server has token keys."""
        return self._sealer is not None

    def _require(self, field: str) -> TokenSealer:
        if self._sealer is None:
            raise PreconditionFailed(
                f"{field}: resume tokens are off on this server (no LSTM_SERVE_SESSIONS__TOKEN_KEYS_FILE); "
                "continue by session id on the replica that holds the session"
            )
        return self._sealer

    def seal(self, state: SessionState, lane: Lane, field: str = "return_token") -> bytes:
        """A token of ``state``, valid for the token TTL."""
        sealer = self._require(field)
        token = sealer.seal(snapshot.encode(state, lane.manifest, now_ms() + self._ttl_ms))
        labels = (lane.ref.name, lane.ref.version)
        self._metrics.tokens_issued.labels(*labels).inc()
        self._metrics.token_bytes.labels(*labels).observe(len(token))
        return token

    def require(self, field: str) -> None:
        """FAILED_PRECONDITION naming ``field`` when tokens are off."""
        self._require(field)

    def resume(self, token: bytes, session_id: str, lane: Lane, prefix: str = "") -> SessionState | None:
        """The state to resume from ``token`` (None without one); ``session_id``, when
        given, must be the token's. ``prefix`` is the fields' message path, e.g. ``config.``."""
        if not token:
            return None
        try:
            state = self.open(token, lane, f"{prefix}resume_token")
        except ServeError:
            self._metrics.resumes.labels("token", "refused").inc()
            raise
        if session_id and session_id != state.session_id:
            raise InvalidInput(
                f"{prefix}session_id: '{echo(session_id)}' conflicts with the token's session "
                f"'{echo(state.session_id)}'; send either, or both for the same session"
            )
        self._metrics.resumes.labels("token", "ok").inc()
        return state

    def open(self, token: bytes, lane: Lane, field: str) -> SessionState:
        """The state a token seals, validated against ``lane``'s model version."""
        plaintext = self._require(field).open(token, field)
        state, expires_ms = snapshot.decode(plaintext, lane.manifest, lane.runtime.content_hash, field)
        if expires_ms <= now_ms():
            raise InvalidInput(
                f"{field}: expired {(now_ms() - expires_ms) / 1000:.0f} s ago (tokens live "
                f"LSTM_SERVE_SESSIONS__TOKEN_TTL_S); resume from a newer token or start a new session"
            )
        return state
