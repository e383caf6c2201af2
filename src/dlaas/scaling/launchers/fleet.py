"""What the EC2 and Auto Scaling launchers share: reading worker heartbeats, draining,
and deciding which instances may be terminated.

A worker's ID is its instance ID. The worker keeps its heartbeat at
``layout.worker_key(id)`` (``state``: a ``WorkerHealth``, that is starting,
idle, busy or stopped) and exits after the batch in hand once ``layout.drain_key(id)``
exists; its instance then powers off.

The launcher terminates an instance itself only when no worker can be holding messages
on it (``assess``): the worker never started, it stopped, or it was asked to drain and
kept reporting idle for ``drain_grace_s``. A worker that reports busy, or an instance
protected from scale-in, is never terminated. Before terminating, the launcher writes
the drain key and reads the heartbeat again, so a worker that is just starting checks
the drain key before its first receive and never picks up a batch that would be lost.
"""

from __future__ import annotations

import builtins
import logging
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from dlaas.errors import DlaasError, ScalingError
from dlaas.jobs import layout
from dlaas.jobs.records import WorkerHealth
from dlaas.scaling.launchers.base import Launcher, WorkerInfo, WorkerState, reported_health
from dlaas.storage.base import Storage

log = logging.getLogger("dlaas.scaling")

ROLE_TAG = "dlaas:role"
CLUSTER_TAG = "dlaas:cluster"
DRAIN_TAG = "dlaas:drain"  # epoch seconds when the controller asked the worker to drain
ROLE = "worker"

Phase = Literal["pending", "running", "leaving"]


@dataclass(frozen=True)
class Instance:
    """An instance as either API reports it, reduced to what the decisions need."""

    id: str
    phase: Phase
    launched_at: float
    drain_requested_at: float | None = None
    protected: bool = False  # Auto Scaling instance scale-in protection


@dataclass(frozen=True)
class Heartbeat:
    """The worker's record; ``state`` None means no record was found."""

    state: WorkerHealth | None = None
    updated_at: float = 0.0


@dataclass(frozen=True)
class Grace:
    """How long the launcher waits before it gives up on an instance."""

    boot_s: float = 900.0  # running, no heartbeat yet: installing dlaas, loading the model
    stop_s: float = 60.0  # heartbeat "stopped" but the instance is up: it failed to power off
    drain_s: float = 120.0  # asked to drain, still "idle": the worker is not listening


@dataclass(frozen=True)
class Assessment:
    state: WorkerState
    busy: bool | None
    retire: str | None = None  # why the launcher may terminate it now, if it may


def assess(instance: Instance, heartbeat: Heartbeat, now: float, grace: Grace) -> Assessment:
    """Map an instance and its worker's heartbeat to a worker state, and say whether the
    launcher may terminate it. Pure, so the rules read as a table in the tests."""
    busy = heartbeat.state == "busy" or instance.protected
    drained = instance.drain_requested_at is not None
    if instance.phase == "leaving":
        return Assessment(WorkerState.DRAINING, busy)
    if busy:
        state = WorkerState.DRAINING if drained else WorkerState.RUNNING
        return Assessment(state, True)  # never terminated, whatever else holds
    if instance.phase == "pending":
        if drained:
            return Assessment(WorkerState.DRAINING, False, "drained before it booted")
        return Assessment(WorkerState.STARTING, None)
    if heartbeat.state == "stopped":
        stopped_for_s = now - heartbeat.updated_at
        if drained or stopped_for_s >= grace.stop_s:
            return Assessment(WorkerState.DRAINING, False, "its worker has exited")
        return Assessment(WorkerState.DRAINING, False)
    if drained:
        if heartbeat.state is None:
            return Assessment(WorkerState.DRAINING, False, "drained before its worker started")
        assert instance.drain_requested_at is not None
        if now - instance.drain_requested_at >= grace.drain_s:
            return Assessment(WorkerState.DRAINING, False, "still idle long after a drain request")
        return Assessment(WorkerState.DRAINING, False)
    if heartbeat.state is None:
        if now - instance.launched_at >= grace.boot_s:
            return Assessment(WorkerState.STARTING, None, "no worker heartbeat since launch")
        return Assessment(WorkerState.STARTING, None)
    if heartbeat.state == "idle":
        return Assessment(WorkerState.RUNNING, False)
    return Assessment(WorkerState.STARTING, None)  # "starting", or a state we do not know


class FleetLauncher(Launcher):
    """The shared half of the EC2 and Auto Scaling launchers; see the module docstring.

    Subclasses list their instances (``_describe``), start more (``launch``), mark a
    drain in the cloud (``_tag_drain``) and terminate (``_terminate``).
    """

    def __init__(
        self,
        *,
        storage: Storage,
        grace: Grace | None = None,
        heartbeat_max_age_s: float = 5.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``heartbeat_max_age_s``: how long ``list`` may reuse a heartbeat it read
        (the controller lists every second; each read is one storage GET)."""
        self.storage = storage
        self.grace = grace or Grace()
        self.heartbeat_max_age_s = heartbeat_max_age_s
        self.clock = clock or time.time
        self.terminated: list[tuple[str, str]] = []  # (instance ID, reason), for operators
        self._heartbeats: dict[str, tuple[float, Heartbeat]] = {}
        self._known: set[str] = set()
        self._lock = threading.Lock()

    # What subclasses provide ----------------------------------------------------

    @abstractmethod
    def _describe(self) -> builtins.list[Instance]:
        """Instances of this fleet that are pending, running or on their way out."""

    @abstractmethod
    def _tag_drain(self, instance_ids: Sequence[str], at: float) -> None:
        """Record the drain request on the instances, so it survives a controller restart."""

    @abstractmethod
    def _terminate(self, instance_ids: Sequence[str]) -> None: ...

    # The Launcher interface --------------------------------------------------------

    def list(self) -> builtins.list[WorkerInfo]:
        """The fleet as the controller sees it; instances that may go are terminated."""
        with self._lock:
            instances = self._describe()
            self._forget_gone({i.id for i in instances})
            now = self.clock()
            infos: builtins.list[WorkerInfo] = []
            retire: dict[str, str] = {}
            for instance in instances:
                verdict = assess(instance, self._heartbeat(instance), now, self.grace)
                if verdict.retire:
                    retire[instance.id] = verdict.retire
                infos.append(
                    WorkerInfo(instance.id, verdict.state, instance.launched_at, verdict.busy)
                )
            if retire:
                gone = self._retire({i.id: i for i in instances}, retire)
                infos = [
                    WorkerInfo(w.id, WorkerState.DRAINING, w.started_at, False)
                    if w.id in gone
                    else w
                    for w in infos
                ]
            return infos

    def drain(self, worker_ids: Sequence[str]) -> None:
        """Ask each worker to finish its batch and exit; terminate those holding nothing."""
        if not worker_ids:
            return
        with self._lock:
            instances = {i.id: i for i in self._describe()}
            ids = [w for w in worker_ids if w in instances]
            unknown = sorted(set(worker_ids) - set(ids))
            if unknown:
                log.info("drain_skipped_unknown", extra={"worker_ids": unknown})
            if not ids:
                return
            now = self.clock()
            for worker_id in ids:
                self._request_drain(worker_id, now)
            try:
                self._tag_drain(ids, now)
            except DlaasError as exc:  # the drain key alone is enough for the worker
                log.warning("drain_tag_failed", extra={"error": str(exc)})
            log.info("workers_drain", extra={"worker_ids": ids})
            drained = {i: replace(instances[i], drain_requested_at=now) for i in ids}
            retire = {}
            for worker_id, instance in drained.items():
                verdict = assess(instance, self._heartbeat(instance, fresh=True), now, self.grace)
                if verdict.retire:
                    retire[worker_id] = verdict.retire
            if retire:
                self._retire(drained, retire)

    # Internals ------------------------------------------------------------------------

    def _retire(self, instances: dict[str, Instance], reasons: dict[str, str]) -> set[str]:
        """Terminate the instances in ``reasons`` that still qualify after a fresh look.

        Each is marked drained first, closing the race with a worker that starts right
        now: it checks the drain key before its first receive, so it holds nothing.
        """
        now = self.clock()
        fresh = [i for i in reasons if instances[i].drain_requested_at is None]
        for worker_id in fresh:
            self._request_drain(worker_id, now)
        if fresh:
            try:
                self._tag_drain(fresh, now)
            except DlaasError as exc:
                log.warning("drain_tag_failed", extra={"error": str(exc)})
        confirmed: dict[str, str] = {}
        for worker_id, reason in reasons.items():
            instance = instances[worker_id]
            if instance.drain_requested_at is None:
                instance = replace(instance, drain_requested_at=now)
            heartbeat = self._heartbeat(instance, fresh=True)
            if assess(instance, heartbeat, now, self.grace).retire:
                confirmed[worker_id] = reason
        if not confirmed:
            return set()
        self._terminate(sorted(confirmed))
        for worker_id, reason in confirmed.items():
            self.terminated.append((worker_id, reason))
            log.warning(
                "worker_instance_terminated", extra={"worker_id": worker_id, "reason": reason}
            )
        return set(confirmed)

    def _heartbeat(self, instance: Instance, *, fresh: bool = False) -> Heartbeat:
        if instance.phase != "running":
            return Heartbeat()
        now = time.monotonic()
        cached = self._heartbeats.get(instance.id)
        if not fresh and cached is not None and now - cached[0] < self.heartbeat_max_age_s:
            return cached[1]
        heartbeat = self._read_heartbeat(instance.id)
        self._heartbeats[instance.id] = (now, heartbeat)
        return heartbeat

    def _read_heartbeat(self, worker_id: str) -> Heartbeat:
        try:
            record = self.storage.get_json(layout.worker_key(worker_id))
        except FileNotFoundError:
            return Heartbeat()
        except (DlaasError, ValueError) as exc:
            # Unknown is not "absent": treat it as busy so nothing is terminated on a guess.
            log.warning("heartbeat_unreadable", extra={"worker_id": worker_id, "error": str(exc)})
            return Heartbeat(state="busy")
        if not isinstance(record, dict):
            return Heartbeat(state="busy")
        updated_at = record.get("updated_at")
        return Heartbeat(
            state=reported_health(record),
            updated_at=float(updated_at) if isinstance(updated_at, int | float) else 0.0,
        )

    def _request_drain(self, worker_id: str, at: float) -> None:
        try:
            self.storage.put_json(layout.drain_key(worker_id), {"requested_at": at})
        except DlaasError as exc:
            raise ScalingError(
                f"cannot ask worker {worker_id} to drain: writing its drain key failed: {exc}"
            ) from exc

    def _forget_gone(self, present: set[str]) -> None:
        """Delete the records of workers whose instances are gone, once seen gone."""
        for worker_id in self._known - present:
            self._heartbeats.pop(worker_id, None)
            for key in (layout.worker_key(worker_id), layout.drain_key(worker_id)):
                try:
                    self.storage.delete(key)
                except DlaasError as exc:
                    log.warning(
                        "worker_record_cleanup_failed", extra={"key": key, "error": str(exc)}
                    )
        self._known = present


def tag_value(tags: Sequence[dict[str, Any]] | None, key: str) -> str | None:
    for tag in tags or ():
        if tag.get("Key") == key:
            return str(tag.get("Value"))
    return None


def parse_drain_tag(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return 0.0  # set by hand to something else: still a drain request, long ago
