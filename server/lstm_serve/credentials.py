"""Checking credentials: static API keys, JWTs against a JWKS file, mTLS identities.

Free of gRPC: the interceptor hands over the bearer token (or None) and the client
certificate's identities, and gets a :class:`~lstm_serve.auth.Principal` or an
:class:`~lstm_serve.errors.Unauthenticated` whose message never repeats the credential.

The keys file (``LSTM_SERVE_AUTH__KEYS_FILE``) is JSON::

    {"keys": [
      {"sha256": "<hex of sha256(key)>", "subject": "svc-a", "models": ["har", "kws"]},
      {"mtls_subject": "svc-b", "models": ["*"]}
    ]}

It holds hashes, never keys. ``mtls_subject`` entries map a client certificate whose
subject CN or one of whose SANs equals it to a principal of that name.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from lstm_serve.auth import ALL_MODELS, Principal
from lstm_serve.errors import Unauthenticated, echo
from lstm_serve.metrics import Metrics
from lstm_serve.watch import WatchedFiles

JWT_ALGORITHMS: tuple[str, ...] = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)
"""Asymmetric signatures only: a JWKS holds public keys, and accepting HS* with one
would let anyone who has the public key sign tokens."""

MAX_BEARER_BYTES = 8192
"""Longer bearer tokens are refused before any parsing."""


class CredentialFileError(ValueError):
    """A keys or JWKS file that does not parse; names the file and the entry at fault."""


def _models(value: object, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(m, str) and m for m in value):
        raise CredentialFileError(f'{where}: "models" must be a list of model names, or ["{ALL_MODELS}"]')
    return frozenset(value)


@dataclass(frozen=True)
class KeySet:
    """The parsed keys file: principals by key hash and by mTLS identity."""

    by_hash: dict[str, Principal]
    by_mtls: dict[str, Principal]


def parse_keys(contents: list[bytes], path: str = "keys file") -> KeySet:
    """Parse the keys file (see the module docstring)."""
    try:
        document = json.loads(contents[0])
    except (ValueError, UnicodeDecodeError) as exc:
        raise CredentialFileError(f"{path}: not valid JSON ({exc})") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise CredentialFileError(f'{path}: expected {{"keys": [...]}}')
    by_hash: dict[str, Principal] = {}
    by_mtls: dict[str, Principal] = {}
    for i, entry in enumerate(entries):
        where = f"{path}: keys[{i}]"
        if not isinstance(entry, dict):
            raise CredentialFileError(f"{where}: expected an object")
        models = _models(entry.get("models"), where)
        if "mtls_subject" in entry:
            name = entry["mtls_subject"]
            if not isinstance(name, str) or not name or set(entry) - {"mtls_subject", "models"}:
                raise CredentialFileError(f'{where}: an mTLS entry has "mtls_subject" (a name) and "models" only')
            by_mtls[name] = Principal(name, models, "mtls")
            continue
        digest, subject = entry.get("sha256"), entry.get("subject")
        if not isinstance(digest, str) or len(digest) != 64 or not all(c in "0123456789abcdefABCDEF" for c in digest):
            raise CredentialFileError(f'{where}: "sha256" must be the 64 hex digits of sha256(key)')
        if not isinstance(subject, str) or not subject:
            raise CredentialFileError(f'{where}: "subject" must name the key\'s owner')
        if digest.lower() in by_hash:
            raise CredentialFileError(f"{where}: the same key hash is listed twice")
        by_hash[digest.lower()] = Principal(subject, models, "api-key")
    return KeySet(by_hash, by_mtls)


def parse_jwks(contents: list[bytes], path: str = "JWKS file") -> jwt.PyJWKSet:
    """Parse a JWKS document (``{"keys": [...]}``); every key needs a ``kid``."""
    try:
        keys = jwt.PyJWKSet.from_json(contents[0].decode())
    except (jwt.PyJWKSetError, jwt.PyJWKError, ValueError) as exc:
        raise CredentialFileError(f"{path}: not a usable JWKS ({exc})") from None
    if any(not key.key_id for key in keys.keys):
        raise CredentialFileError(f'{path}: every key needs a "kid"')
    return keys


def key_hash(key: str) -> str:
    """The hex sha256 of an API key, as the keys file lists it."""
    return hashlib.sha256(key.encode()).hexdigest()


class Authenticator:
    """Turns a call's credentials into a principal, with the files' current content."""

    def __init__(
        self,
        *,
        keys_file: str,
        jwks_file: str,
        issuer: str,
        audience: str,
        leeway_s: float,
        metrics: Metrics,
    ) -> None:
        self._keys = (
            WatchedFiles("auth_keys", [Path(keys_file)], lambda c: parse_keys(c, keys_file), metrics)
            if keys_file
            else None
        )
        self._jwks = (
            WatchedFiles("jwks", [Path(jwks_file)], lambda c: parse_jwks(c, jwks_file), metrics)
            if jwks_file
            else None
        )
        self._issuer = issuer
        self._audience = audience
        self._leeway_s = leeway_s

    @property
    def watched(self) -> list[WatchedFiles[Any]]:
        """The files to refresh periodically."""
        return [w for w in (self._keys, self._jwks) if w is not None]

    def authenticate(self, bearer: str | None, peer_names: Sequence[str]) -> Principal:
        """The principal of a call: its bearer token (API key or JWT) when it sends one,
        else its client certificate's identity when the keys file maps it."""
        if bearer is not None:
            return self._bearer(bearer)
        if self._keys is not None:
            by_mtls = self._keys.value.by_mtls
            for name in peer_names:
                if name in by_mtls:
                    return by_mtls[name]
        if peer_names:
            raise Unauthenticated(
                f"client certificate '{echo(peer_names[0])}' is not mapped to a principal (an mtls_subject "
                "entry of the keys file), and the call carries no 'authorization: Bearer' credential"
            )
        raise Unauthenticated(
            "no credential: send 'authorization: Bearer <API key or JWT>' metadata "
            "(lstm-client --token, or LSTM_SERVE_TOKEN)"
        )

    def _bearer(self, token: str) -> Principal:
        if not token or len(token) > MAX_BEARER_BYTES:
            raise Unauthenticated("invalid credential: empty or oversize bearer token")
        if self._keys is not None:
            digest = key_hash(token)
            for known, principal in self._keys.value.by_hash.items():
                if hmac.compare_digest(known, digest):
                    return principal
        if self._jwks is not None and token.count(".") == 2:
            return self._jwt(token, self._jwks.value)
        raise Unauthenticated("invalid credential: the bearer token is not a known API key or a valid JWT")

    def _jwt(self, token: str, keys: jwt.PyJWKSet) -> Principal:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise Unauthenticated("invalid JWT: the header does not parse") from None
        key = next((k for k in keys.keys if k.key_id == kid), None) if isinstance(kid, str) else None
        if key is None:
            raise Unauthenticated("invalid JWT: its key id (kid) is not in the JWKS file")
        try:
            claims = jwt.decode(
                token, key=key, algorithms=list(JWT_ALGORITHMS), audience=self._audience, issuer=self._issuer,
                leeway=self._leeway_s, options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("invalid JWT: expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(f"invalid JWT: the audience is not '{self._audience}'") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(f"invalid JWT: the issuer is not '{self._issuer}'") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"invalid JWT: the '{exc.claim}' claim is missing") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("invalid JWT: the signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid JWT: {type(exc).__name__}") from None
        subject, models = claims.get("sub"), claims.get("models", [])
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated("invalid JWT: 'sub' must be a non-empty string")
        try:
            allowed = _models(models, "JWT") if models else frozenset()
        except CredentialFileError:
            raise Unauthenticated("invalid JWT: the 'models' claim must be a list of model names") from None
        return Principal(subject, allowed, "jwt")
