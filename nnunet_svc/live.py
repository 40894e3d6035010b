"""The live model registry: which predictors serve right now, and swapping them without a restart.

A `Generation` is one loaded registry: task specs, warmed predictors and their digests. The
server holds exactly one and replaces it whole (one attribute assignment), so a call that took
a predictor keeps it until it finishes, even when a reload swaps in new ones meanwhile.

A reload (SIGHUP, or the registry file's content changing: `watch`) parses the file, builds and
warms every new or changed task beside the serving ones (unchanged tasks keep their predictor),
and swaps only when all of them loaded. When anything fails the serving generation stays and
`reload_error` says why (`load_error` when nothing serves yet).
"""
from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Callable

from nnunet_svc.registry import DEFAULT_REGISTRY, TaskSpec, load_registry, model_digest, model_version

log = logging.getLogger("medseg.nnunet")


@lru_cache(maxsize=1)
def nnunet_version() -> str:
    """Version of the installed nnunetv2 package (part of every result's provenance)."""
    try:
        return metadata.version("nnunetv2")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Generation:
    """One loaded registry. Never mutated: a reload builds a new one."""

    registry: dict[str, TaskSpec] = field(default_factory=dict)
    predictors: dict = field(default_factory=dict)  # task -> TaskPredictor (ready)
    digests: dict[str, str] = field(default_factory=dict)  # task -> model_digest
    source: str = ""  # sha256 of the registry file's bytes it was read from

    def provenance(self, task: str) -> dict:
        """What names the weights behind an output of `task` (ModelProvenance's fields)."""
        spec = self.registry[task]
        return dict(task=task, model_versions=[model_version(m) for m in spec.models],
                    digest=self.digests[task], nnunet_version=nnunet_version())


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class LiveModels:
    """The serving generation plus what went wrong loading the next one.

    `build(registry, progress)` turns task specs into warmed predictors (the server binds the
    device and limits); it runs on the loading thread, beside calls using the old generation."""

    def __init__(self, path: Path | str | None, build: Callable[..., dict],
                 registry: dict[str, TaskSpec] | None = None):
        self.path = Path(path or DEFAULT_REGISTRY).resolve()
        self.build = build
        self.current = Generation()
        self.load_error: str | None = None  # nothing serves: why
        self.reload_error: str | None = None  # the last reload failed; `current` keeps serving
        self.on_swap: Callable[[Generation], None] | None = None  # e.g. health -> SERVING
        self._lock = threading.Lock()  # one load at a time
        self._failed_source = ""  # a broken file is not retried until it changes (or SIGHUP)
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._force = False
        self._pending_digests: dict[str, str] = {}
        self._loaded = threading.Event()  # the initial load has been tried
        # What is being loaded, listed (not ready) while it loads.
        self.pending: dict[str, TaskSpec] = {}
        if registry is None:
            try:
                self.pending, _ = self._read()
            except ValueError as exc:
                self.load_error = self._public(str(exc))
                self._failed_source = self._source_or_empty()
                log.error("model registry unusable: %s", exc)
        else:
            self.pending = dict(registry)

    # --- helpers ------------------------------------------------------------------------

    def _public(self, message: str) -> str:
        """Error text without server paths: folders relative to the registry's folder."""
        return (message.replace(str(self.path), self.path.name)
                .replace(str(self.path.parent) + "/", ""))

    def _read(self) -> tuple[dict[str, TaskSpec], str]:
        try:
            source = _file_digest(self.path)
        except OSError as exc:
            raise ValueError(f"model registry {self.path} cannot be read: {exc.strerror}") from exc
        return load_registry(self.path), source

    def digest(self, task: str) -> str:
        """The task's model digest: the serving one, else hashed once (checkpoints are large)."""
        if task in self.current.digests:
            return self.current.digests[task]
        if task not in self._pending_digests:
            try:
                self._pending_digests[task] = model_digest(self.listed()[task].models)
            except OSError:
                return ""
        return self._pending_digests[task]

    def listed(self) -> dict[str, TaskSpec]:
        """Tasks ListModels shows: the serving ones, and while nothing serves, the pending."""
        return self.current.registry or self.pending

    # --- loading ------------------------------------------------------------------------

    def load(self, progress=None) -> bool:
        """Initial load (registry given or read in __init__). False when it failed."""
        try:
            if self.load_error:
                return False
            return self._swap(dict(self.pending), self._source_or_empty(), progress)
        finally:
            self._loaded.set()

    def _source_or_empty(self) -> str:
        try:
            return _file_digest(self.path)
        except OSError:
            return ""

    def reload(self, progress=None) -> bool:
        """Read the registry file again; build and warm what changed; swap when all loaded."""
        with self._lock:
            try:
                registry, source = self._read()
            except ValueError as exc:
                return self._failed(str(exc), self._source_or_empty())
        if not self.current.predictors:
            self.pending, self._pending_digests = registry, {}
        return self._swap(registry, source, progress)

    def _failed(self, message: str, source: str) -> bool:
        message = self._public(message)
        self._failed_source = source
        if self.current.predictors:
            self.reload_error = message
            log.error("registry reload failed, the loaded models keep serving: %s", message)
        else:
            self.load_error = message
            log.error("models failed to load: %s", message)
        return False

    def _swap(self, registry: dict[str, TaskSpec], source: str, progress=None) -> bool:
        with self._lock:
            old = self.current
            step = {"message": ""}

            def report(stage, fraction, message):
                step["message"] = message
                log.info("%s", message)
                if progress:
                    progress(stage, fraction, message)

            try:
                digests = {name: model_digest(spec.models) for name, spec in registry.items()}
                reused = {name: old.predictors[name] for name, spec in registry.items()
                          if name in old.predictors and old.registry.get(name) == spec
                          and old.digests.get(name) == digests[name]}
                changed = {name: spec for name, spec in registry.items() if name not in reused}
                built = self.build(changed, report) if changed else {}
            except Exception as exc:  # noqa: BLE001 - reported through ListModels and the log
                where = f" ({step['message']})" if step["message"] else ""
                log.exception("model loading failed")
                return self._failed(f"{type(exc).__name__}{where}: {exc}", source)
            predictors = {name: reused.get(name) or built[name] for name in registry}
            self.current = Generation(registry, predictors, digests, source)  # the swap
            self.pending, self._pending_digests = {}, {}
            self.load_error = self.reload_error = None
            self._failed_source = ""
            log.info("models ready: %s (new or changed: %s)", ", ".join(predictors),
                     ", ".join(changed) or "none")
        if self.on_swap:
            self.on_swap(self.current)
        return True

    # --- triggers -----------------------------------------------------------------------

    def request_reload(self) -> None:
        """Reload soon, even when the file looks unchanged (SIGHUP; safe in a signal handler)."""
        self._force = True
        self._wake.set()

    def watch(self, interval: float) -> None:
        """Loop (on its own thread): reload when the registry file's content changes or a
        reload was requested. A file that failed is retried only once it changes again."""
        self._loaded.wait()
        while not self._stopped.is_set():
            self._wake.wait(interval if interval > 0 else None)
            self._wake.clear()
            if self._stopped.is_set():
                return
            force, self._force = self._force, False
            source = self._source_or_empty()
            if force or (source and source != self.current.source and source != self._failed_source):
                self.reload()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
