"""Resume tokens: a session snapshot sealed with AES-256-GCM.

Format (all of it opaque to clients)::

    0x01 | key id length (1 byte) | key id (UTF-8) | nonce (12 bytes) | ciphertext + tag

The header (format byte and key id) is the associated data, so neither can be changed
without the tag failing. A fresh random nonce is drawn for every seal. The first key of
the key file seals; every key opens, so keys rotate without dropping sessions: add the
new key first, keep the old one until its tokens have expired, then remove it.

The key file is JSON: ``{"keys": [{"id": "k1", "key": "<standard base64 of 32 bytes>"}]}``;
``lstm-serve keygen FILE`` writes one.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lstm_serve.errors import InvalidInput, echo

TOKEN_FORMAT = 1
NONCE_BYTES = 12
KEY_BYTES = 32


class KeyFileError(ValueError):
    """The token key file is missing, unreadable or malformed."""


@dataclass(frozen=True)
class TokenKey:
    id: str
    key: bytes


def load_keys(path: Path) -> list[TokenKey]:
    """The keys of a key file, sealing key first."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: cannot read the token key file: {exc}") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise KeyFileError(f'{path}: expected {{"keys": [{{"id": ..., "key": ...}}, ...]}} with at least one key')
    keys = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"]:
            raise KeyFileError(f"{path}: keys[{i}].id: a non-empty string is required")
        try:
            key = base64.b64decode(str(entry.get("key", "")), validate=True)
        except binascii.Error:
            raise KeyFileError(f"{path}: keys[{i}].key: not standard base64 (RFC 4648 section 4)") from None
        if len(key) != KEY_BYTES or len(entry["id"].encode()) > 255:
            raise KeyFileError(f"{path}: keys[{i}]: the key must be {KEY_BYTES} bytes and the id at most 255 bytes")
        keys.append(TokenKey(entry["id"], key))
    if len({k.id for k in keys}) != len(keys):
        raise KeyFileError(f"{path}: key ids must be unique")
    return keys


def write_key_file(path: Path, key_id: str = "k1") -> None:
    """Write a new key file with one fresh random key, readable by its owner only."""
    document = {"keys": [{"id": key_id, "key": base64.b64encode(os.urandom(KEY_BYTES)).decode()}]}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(document, out, indent=2)
        out.write("\n")


class TokenSealer:
    """Seals and opens resume tokens with a key set."""

    def __init__(self, keys: list[TokenKey], max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._sealing = keys[0]
        self._aeads = {k.id: AESGCM(k.key) for k in keys}

    def seal(self, plaintext: bytes) -> bytes:
        """A token for ``plaintext``."""
        kid = self._sealing.id.encode()
        header = bytes([TOKEN_FORMAT, len(kid)]) + kid
        nonce = os.urandom(NONCE_BYTES)
        return header + nonce + self._aeads[self._sealing.id].encrypt(nonce, plaintext, header)

    def open(self, token: bytes, field: str) -> bytes:
        """The plaintext of a token; INVALID_ARGUMENT naming ``field`` when it does not open."""
        if len(token) > self.max_bytes:
            raise InvalidInput(
                f"{field}: {len(token)} bytes exceeds the limit of {self.max_bytes} "
                "(LSTM_SERVE_SESSIONS__MAX_TOKEN_BYTES)"
            )
        if len(token) < 2 or token[0] != TOKEN_FORMAT:
            raise InvalidInput(f"{field}: not a resume token of this server (format {TOKEN_FORMAT})")
        end = 2 + token[1]
        kid = token[2:end].decode("utf-8", "replace")
        aead = self._aeads.get(kid)
        if aead is None:
            raise InvalidInput(
                f"{field}: sealed with key id '{echo(kid)}', which this server does not have; "
                "it was sealed elsewhere or its key was retired"
            )
        nonce, sealed = token[end : end + NONCE_BYTES], token[end + NONCE_BYTES :]
        try:
            return aead.decrypt(nonce, sealed, token[:end])
        except (InvalidTag, ValueError):
            raise InvalidInput(f"{field}: tampered or truncated (authentication failed)") from None
