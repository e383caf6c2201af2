"""Which models and versions a service serves, and in what state: the repository index.

The web tier holds one ``ModelIndex``. A version is ``READY`` once checked and (when
loaded while serving) warmed by a real batch through the workers; ``LOADING`` while
that runs; ``UNAVAILABLE`` with a reason when its file is broken, it was unloaded, or a
newer version replaced it. Requests go to the versions its policy serves: the highest
READY one (``latest``), or any READY one (``all``). Nothing here touches ONNX Runtime.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dlaas.errors import ModelError, ModelNotFound, ModelUnavailable
from dlaas.model.repository import Entry, find_entry, scan
from dlaas.model.spec import ModelSpec, Preprocessing

State = Literal["READY", "LOADING", "UNAVAILABLE"]


@dataclass
class VersionState:
    state: State
    reason: str = ""


@dataclass
class ModelState:
    """One model as served: its labels and preprocessing, and each version's state."""

    name: str
    labels: tuple[str, ...] = ()
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    max_batch_size: int = 8
    policy: str = "latest"
    versions: dict[int, VersionState] = field(default_factory=dict)
    reason: str = ""  # why the model as a whole is unavailable (its config), if it is
    in_repository: bool = True

    def ready(self) -> list[int]:
        return sorted(v for v, s in self.versions.items() if s.state == "READY")

    @property
    def state(self) -> State:
        if self.ready():
            return "READY"
        if any(s.state == "LOADING" for s in self.versions.values()):
            return "LOADING"
        return "UNAVAILABLE"

    def serving(self) -> int | None:
        """The version a request that names none goes to."""
        ready = self.ready()
        return ready[-1] if ready else None


@dataclass(frozen=True)
class Target:
    """A request's model and version, resolved: what its tasks carry."""

    model: str
    version: int | None  # None: the worker's own model (a --model FILE service)
    labels: tuple[str, ...]


class ModelIndex:
    """The served models, the default first. ``check`` (a version's file against its
    config, as ``load_custom_model`` checks) is a parameter so tests can count calls."""

    def __init__(
        self,
        root: Path | None,
        default: str,
        *,
        single: ModelSpec | None = None,
        check: Callable[[Entry, int], ModelSpec] = Entry.spec,
    ) -> None:
        self.root, self.default = root, default
        self._check = check
        self._lock = threading.Lock()
        self._models: dict[str, ModelState] = {}
        if single is not None:  # the user's --model FILE: one model, the worker's own
            self._models[single.name] = ModelState(
                single.name, single.labels, single.preprocessing, in_repository=False,
                versions={1: VersionState("READY")},
            )  # fmt: skip

    def scan_all(self) -> None:
        """Read every model folder and check every version it would serve."""
        if self.root is None:
            return
        for found in scan(self.root):
            if isinstance(found, Entry):
                self._models[found.name] = self._checked(found, warm=False)
            else:
                name, reason = found
                self._models[name] = ModelState(name, reason=reason)

    def _checked(self, entry: Entry, *, warm: bool) -> ModelState:
        """``entry``'s state: each version READY (or LOADING when it must be warmed first)
        or UNAVAILABLE with the check's reason; only the latest with the latest policy."""
        config = entry.config
        model = ModelState(
            entry.name, preprocessing=config.preprocessing,
            max_batch_size=config.max_batch_size, policy=config.version_policy,
        )  # fmt: skip
        wanted = entry.versions if config.version_policy == "all" else entry.versions[-1:]
        for version in entry.versions:
            if version not in wanted:
                model.versions[version] = VersionState(
                    "UNAVAILABLE", "not served: version_policy latest"
                )
                continue
            try:
                spec = self._check(entry, version)
            except ModelError as exc:
                model.versions[version] = VersionState("UNAVAILABLE", str(exc))
                continue
            model.labels = spec.labels
            model.versions[version] = VersionState("LOADING" if warm else "READY")
        if not entry.versions:
            model.reason = f"{entry.folder} has no version folder (1/model.onnx)"
        return model

    def add_own(self, model: ModelState) -> None:
        """A model the workers hold as their own, outside the repository."""
        with self._lock:
            self._models[model.name] = model

    # Reading -----------------------------------------------------------------

    def models(self) -> list[ModelState]:
        """Every model, the default first, then by name."""
        with self._lock:
            found = list(self._models.values())
        return sorted(found, key=lambda m: (m.name != self.default, m.name))

    def get(self, name: str) -> ModelState:
        with self._lock:
            model = self._models.get(name)
        if model is None:
            names = ", ".join(repr(m.name) for m in self.models())
            raise ModelNotFound(f"unknown model {name!r}; this service serves {names}")
        return model

    def resolve(self, name: str | None, version: int | str | None = None) -> Target:
        """Where a request goes; ModelNotFound for an unknown model or version,
        ModelUnavailable for a known one with no READY version."""
        model = self.get(name or self.default)
        if version is None:
            return Target(model.name, self._serving(model), model.labels)
        number = _version_number(model.name, version)
        state = model.versions.get(number)
        if state is None:
            known = sorted(model.versions)
            raise ModelNotFound(f"model {model.name!r} has no version {version!r}; it has {known}")
        if state.state != "READY":
            why = state.reason or "not ready"
            raise ModelUnavailable(f"version {number} of {model.name!r} is {state.state}: {why}")
        return Target(model.name, number if model.in_repository else None, model.labels)

    @staticmethod
    def _serving(model: ModelState) -> int | None:
        number = model.serving()
        if number is None:
            reasons = "; ".join(f"{v}: {s.reason}" for v, s in model.versions.items() if s.reason)
            why = reasons or model.reason or "unloaded"
            raise ModelUnavailable(f"model {model.name!r} has no READY version ({why})")
        return number if model.in_repository else None

    # Changing ----------------------------------------------------------------

    def stage(self, name: str) -> tuple[ModelState, list[int]]:
        """Re-read ``name``'s folder for a load: its new state, with every version to serve
        that is not READY yet marked LOADING; returns the state and those versions."""
        if self.root is None:
            raise ModelNotFound(f"this service has no model repository; {name!r} cannot be loaded")
        try:
            entry = find_entry(self.root, name)
        except ModelError as exc:
            with self._lock:
                self._models[name] = ModelState(name, reason=str(exc))
            raise ModelUnavailable(str(exc)) from exc
        if entry is None:
            raise ModelNotFound(f"unknown model {name!r}: the repository has no {name}/config.json")
        with self._lock:
            old = self._models.get(name)
        fresh = self._checked(entry, warm=True)
        staged = []
        for version, state in fresh.versions.items():
            before = old.versions.get(version) if old is not None else None
            if state.state == "LOADING" and before is not None and before.state == "READY":
                state.state = "READY"  # already serving: no second warm-up
            elif state.state == "LOADING":
                staged.append(version)
        if old is not None:  # old versions keep serving until the new ones are warm
            for version, state in old.versions.items():
                now = fresh.versions.get(version)
                if state.state == "READY" and (now is None or now.reason.startswith("not served")):
                    fresh.versions[version] = VersionState("READY")
        with self._lock:
            self._models[name] = fresh
        return fresh, sorted(staged)

    def finish(self, name: str, results: dict[int, str | None]) -> ModelState:
        """Record each staged version's warm-up (None: it answered); with the latest
        policy the newest READY version then serves alone, the older ones unloaded."""
        with self._lock:
            model = self._models[name]
            for version, error in results.items():
                failed = VersionState("UNAVAILABLE", f"warm-up failed: {error}")
                model.versions[version] = VersionState("READY") if error is None else failed
            if model.policy == "latest" and model.ready():
                newest = model.ready()[-1]
                for version in model.ready()[:-1]:
                    model.versions[version] = VersionState(
                        "UNAVAILABLE", f"unloaded: version {newest} replaced it"
                    )
            return model

    def unload(self, name: str) -> None:
        model = self.get(name)
        with self._lock:
            for state in model.versions.values():
                if state.state != "UNAVAILABLE":
                    state.state, state.reason = "UNAVAILABLE", "unloaded"


def _version_number(name: str, version: int | str) -> int:
    text = str(version)
    if not text.isdigit() or int(text) < 1:
        raise ModelNotFound(
            f"model {name!r} has no version {text!r}; a version is a positive integer"
        )
    return int(text)
