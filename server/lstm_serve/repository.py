"""The model repository: every ``<root>/<name>/<version>/`` package, loaded or not.

A package that fails to load (bad manifest, manifest that disagrees with the graph,
unreadable ONNX) is kept as a broken entry with the file path and the field at fault.
It is reported in ListModels and health as not ready and never takes the server down.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lstm_serve.errors import ManifestError, ModelNotFound, ModelNotReady, echo
from lstm_serve.manifest import MANIFEST_FILE, Manifest, load_manifest
from lstm_serve.runtime import MemoryArena, ModelRuntime

log = logging.getLogger(__name__)


def version_key(version: str) -> tuple[int, int | str]:
    """Sort key: numeric versions numerically, after non-numeric ones."""
    return (1, int(version)) if version.isdigit() else (0, version)


@dataclass
class ModelEntry:
    """One model version: its manifest and runtime when ready, or why it is not."""

    name: str
    version: str
    path: Path
    manifest: Manifest | None = None
    runtime: ModelRuntime | None = None
    error: str = ""

    @property
    def ready(self) -> bool:
        """True when the package loaded and serves."""
        return self.runtime is not None and not self.error

    def require_runtime(self) -> ModelRuntime:
        """The runtime, or :class:`ModelNotReady` naming the load error."""
        if self.runtime is None:
            raise ModelNotReady(f"model '{self.name}' version {self.version} is not ready: {self.error}")
        return self.runtime

    @property
    def health_names(self) -> list[str]:
        """Health service names for this version: ``models/<name>/<version>``."""
        return [f"models/{self.name}/{self.version}"]


@dataclass
class ModelRepository:
    """All model versions found under ``root``."""

    root: Path
    entries: dict[str, dict[str, ModelEntry]] = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        root: Path,
        providers: list[str],
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        *,
        memory_arena: MemoryArena = "shrink",
        arena_shrink_frames: int = 16384,
    ) -> ModelRepository:
        """Scan ``root`` and load every package; broken ones are recorded, not raised."""
        repo = cls(root=root)
        if not root.is_dir():
            log.error("model repository %s does not exist; serving no models", root)
            return repo
        for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for version_dir in sorted(
                (p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                key=lambda p: version_key(p.name),
            ):
                entry = ModelEntry(model_dir.name, version_dir.name, version_dir)
                try:
                    entry.manifest = load_manifest(version_dir)
                    entry.runtime = ModelRuntime(
                        entry.manifest, version_dir, providers, intra_op_threads, inter_op_threads,
                        memory_arena=memory_arena, arena_shrink_frames=arena_shrink_frames,
                    )
                except ManifestError as exc:
                    entry.error = str(exc)
                except Exception as exc:
                    entry.error = f"{version_dir / 'model.onnx'}: (graph): {exc}"
                if entry.error:
                    log.error("model package not ready: %s", entry.error)
                else:
                    assert entry.runtime is not None
                    log.info(
                        "loaded model %s version %s (providers %s)",
                        entry.name, entry.version, entry.runtime.providers,
                    )
                repo.entries.setdefault(entry.name, {})[entry.version] = entry
        if not any(repo.entries.values()):
            log.warning("no model packages (%s) found under %s", MANIFEST_FILE, root)
        return repo

    def __iter__(self) -> Iterator[ModelEntry]:
        for versions in self.entries.values():
            yield from versions.values()

    def versions(self, name: str) -> list[str]:
        """Every version of ``name``, oldest first."""
        return sorted(self.entries.get(name, {}), key=version_key)

    def find(self, name: str, version: str = "") -> ModelEntry:
        """The entry for ``name`` at ``version`` (or its highest ready version).

        Raises :class:`ModelNotFound` for an unknown name or version.
        """
        versions = self.entries.get(name)
        if not versions:
            known = sorted(self.entries)
            raise ModelNotFound(f"model.name: no model '{echo(name)}'; available models: {echo(known, 512)}")
        if version:
            entry = versions.get(version)
            if entry is None:
                raise ModelNotFound(
                    f"model.version: model '{name}' has no version '{echo(version)}'; "
                    f"versions: {self.versions(name)}"
                )
            return entry
        ready = [e for e in versions.values() if e.ready]
        if not ready:
            newest = versions[self.versions(name)[-1]]
            return newest
        return max(ready, key=lambda e: version_key(e.version))

    def resolve(self, name: str, version: str = "") -> tuple[ModelEntry, ModelRuntime]:
        """Like :meth:`find`, but the entry must be ready (else :class:`ModelNotReady`)."""
        entry = self.find(name, version)
        return entry, entry.require_runtime()
