"""Files that reload when they change on disk: TLS certificates, the API keys file, the
JWKS file.

A :class:`WatchedFiles` holds the value parsed from a set of files and the sha256 of
their contents. :meth:`WatchedFiles.refresh` reads them again (blocking file I/O: the
server calls it from a worker thread, every ``LSTM_SERVE_TLS__RELOAD_INTERVAL_S``) and
swaps the value in one assignment when the contents changed and parse. Content, not
mtime, decides: Kubernetes rotates a mounted Secret by swapping a symlink, and a file
rewritten twice within one mtime tick still counts. A change that does not parse is
logged and counted, and the previous value stays in use.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

from lstm_serve.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")


class WatchedFiles(Generic[T]):
    """The parsed value of ``paths``, kept current by :meth:`refresh`."""

    def __init__(
        self, name: str, paths: Sequence[Path], parse: Callable[[list[bytes]], T], metrics: Metrics
    ) -> None:
        """Read and parse the files now; a file that is missing or does not parse
        raises, so a server never starts with a broken security file."""
        self.name = name
        self.paths = tuple(paths)
        self._parse = parse
        self._metrics = metrics
        contents = self._read()
        self.value: T = parse(contents)
        self._digest = self._hash(contents)
        self.generation = 0
        """Bumped on every successful reload."""

    def _read(self) -> list[bytes]:
        return [path.read_bytes() for path in self.paths]

    @staticmethod
    def _hash(contents: list[bytes]) -> bytes:
        digest = hashlib.sha256()
        for content in contents:
            digest.update(len(content).to_bytes(8, "big"))
            digest.update(content)
        return digest.digest()

    def refresh(self) -> bool:
        """Reload when the contents changed; True when a new value is in use. Blocking:
        call it off the event loop."""
        try:
            contents = self._read()
        except OSError as exc:
            return self._failed(f"cannot read: {exc.strerror or exc}", None)
        digest = self._hash(contents)
        if digest == self._digest:
            return False
        try:
            value = self._parse(contents)
        except Exception as exc:
            return self._failed(str(exc), digest)
        self.value = value
        self._digest = digest
        self.generation += 1
        self._metrics.credential_reloads.labels(self.name, "ok").inc()
        log.info("%s reloaded from %s", self.name, ", ".join(str(p) for p in self.paths))
        return True

    def _failed(self, why: str, digest: bytes | None) -> bool:
        # Remember a bad digest, so one broken write is reported once, not every poll.
        if digest is not None:
            self._digest = digest
        self._metrics.credential_reloads.labels(self.name, "failed").inc()
        log.error("%s not reloaded (the previous one stays in use): %s", self.name, why)
        return False
