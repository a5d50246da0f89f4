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
from typing import Literal

from lstm_serve.errors import InvalidInput, ManifestError, ModelNotFound, ModelNotReady, echo
from lstm_serve.manifest import MANIFEST_FILE, MODEL_FILE, Manifest, load_manifest
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
    unloaded: bool = False
    """Unloaded through the model repository API: no new work; its sessions finish."""
    signature: tuple[int, ...] = ()
    """Size and modification time of the package's files when it was loaded."""

    @property
    def ready(self) -> bool:
        """True when the package loaded and serves new work."""
        return self.runtime is not None and not self.error and not self.unloaded

    @property
    def state(self) -> Literal["READY", "UNAVAILABLE", "UNLOADED"]:
        """The repository state, as the model repository API reports it."""
        if self.unloaded:
            return "UNLOADED"
        return "READY" if self.ready else "UNAVAILABLE"

    @property
    def reason(self) -> str:
        """Why the version is not ready (empty when it is)."""
        if self.unloaded:
            return "unloaded"
        return self.error

    def require_runtime(self) -> ModelRuntime:
        """The runtime, or :class:`ModelNotReady` naming the load error."""
        if self.runtime is None or self.unloaded:
            raise ModelNotReady(f"model '{self.name}' version {self.version} is not ready: {self.reason}")
        return self.runtime

    @property
    def health_names(self) -> list[str]:
        """Health service names for this version: ``models/<name>/<version>``."""
        return [f"models/{self.name}/{self.version}"]


@dataclass
class RepositoryChange:
    """What one rescan changed."""

    loaded: list[ModelEntry] = field(default_factory=list)
    """Versions that are new."""
    replaced: list[ModelEntry] = field(default_factory=list)
    """Versions loaded afresh in place of an entry (changed, failed or unloaded)."""
    unloaded: list[ModelEntry] = field(default_factory=list)
    """Versions gone from disk."""


def _version_dirs(model_dir: Path) -> list[Path]:
    return sorted(
        (p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: version_key(p.name),
    )


def _signature(version_dir: Path) -> tuple[int, ...]:
    """Size and mtime of the package's files: a cheap test for "changed on disk"."""
    parts: list[int] = []
    for name in (MODEL_FILE, MANIFEST_FILE):
        try:
            st = (version_dir / name).stat()
            parts += [st.st_size, st.st_mtime_ns]
        except OSError:
            parts += [-1, -1]
    return tuple(parts)


@dataclass(frozen=True)
class _Loader:
    providers: list[str]
    intra_op_threads: int
    inter_op_threads: int
    memory_arena: MemoryArena
    arena_shrink_frames: int
    allow_spinning: bool = False

    def load(self, name: str, version_dir: Path) -> ModelEntry:
        """Load one package; a broken one becomes an entry with its error."""
        entry = ModelEntry(name, version_dir.name, version_dir, signature=_signature(version_dir))
        try:
            entry.manifest = load_manifest(version_dir)
            entry.runtime = ModelRuntime(
                entry.manifest, version_dir, self.providers, self.intra_op_threads, self.inter_op_threads,
                memory_arena=self.memory_arena, arena_shrink_frames=self.arena_shrink_frames,
                allow_spinning=self.allow_spinning,
            )
        except ManifestError as exc:
            entry.error = str(exc)
        except Exception as exc:
            entry.error = f"{version_dir / MODEL_FILE}: (graph): {exc}"
        if entry.error:
            log.error("model package not ready: %s", entry.error)
        else:
            assert entry.runtime is not None
            log.info("loaded model %s version %s (providers %s)", entry.name, entry.version, entry.runtime.providers)
        return entry


def check_folder_name(name: str, field: str) -> str:
    """Refuse a model name that is not one folder directly under the repository (a
    path separator, NUL, ``.``/``..`` or a leading dot, which the scan skips), so that
    an explicit load never reads outside the repository. INVALID_ARGUMENT naming
    ``field``."""
    if not name or name.startswith(".") or any(c in name for c in "/\\\x00"):
        raise InvalidInput(
            f"{field}: '{echo(name)}' is not a model folder name; a model is one folder directly under the "
            "repository: no '/', '\\', NUL or leading '.'"
        )
    return name


@dataclass
class ModelRepository:
    """All model versions found under ``root``."""

    root: Path
    entries: dict[str, dict[str, ModelEntry]] = field(default_factory=dict)
    loader: _Loader = field(default_factory=lambda: _Loader(["CPUExecutionProvider"], 1, 1, "shrink", 16384))

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
        allow_spinning: bool = False,
    ) -> ModelRepository:
        """Scan ``root`` and load every package; broken ones are recorded, not raised."""
        repo = cls(root=root)
        repo.loader = _Loader(providers, intra_op_threads, inter_op_threads, memory_arena, arena_shrink_frames,
                              allow_spinning)
        if not root.is_dir():
            log.error("model repository %s does not exist; serving no models", root)
            return repo
        for name in repo.names_on_disk():
            for version_dir in _version_dirs(root / name):
                repo.entries.setdefault(name, {})[version_dir.name] = repo.loader.load(name, version_dir)
        if not any(repo.entries.values()):
            log.warning("no model packages (%s) found under %s", MANIFEST_FILE, root)
        return repo

    def names_on_disk(self) -> list[str]:
        """The model folders under the root now."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def rescan(self, name: str) -> RepositoryChange:
        """Load ``name`` again from disk (blocking: call it off the event loop).

        New versions load; a version whose files changed, that failed, or that was
        unloaded loads afresh and replaces its entry; unchanged ready versions are
        kept (their sessions go on); versions gone from disk are unloaded. Raises
        :class:`ModelNotFound` when the folder does not exist."""
        folder = self.root / check_folder_name(name, "model_name")
        if not folder.is_dir():
            raise ModelNotFound(
                f"model_name: failed to load '{echo(name)}', no version is available in the model repository"
            )
        change = RepositoryChange()
        current = self.entries.setdefault(name, {})
        on_disk = {d.name: d for d in _version_dirs(folder)}
        for version, version_dir in on_disk.items():
            entry = current.get(version)
            if entry is not None and entry.ready and entry.signature == _signature(version_dir):
                continue
            fresh = self.loader.load(name, version_dir)
            current[version] = fresh
            (change.replaced if entry is not None else change.loaded).append(fresh)
        for version, entry in current.items():
            if version not in on_disk and not entry.unloaded:
                entry.unloaded = True
                change.unloaded.append(entry)
        return change

    def unload(self, name: str) -> list[ModelEntry]:
        """Mark every version of ``name`` unloaded; return those that were not."""
        versions = self.entries.get(name)
        if not versions:
            raise ModelNotFound(f"model_name: failed to unload '{echo(name)}': no such model")
        newly = [e for e in versions.values() if not e.unloaded]
        for entry in newly:
            entry.unloaded = True
        return newly

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
