"""Memory of a process tree as PSS, sampled in a background thread.

PSS, not RSS: the workers are forked from a fork server and share its pages (NumPy,
ORT, the model's weights where the fork server preloaded them); RSS counts those pages
once per process, PSS splits them between the processes that share them, so the sum
over the tree is what the machine really spends.

Reading ``smaps_rollup`` walks the process's page tables: 4-7 ms for a worker, ~30 ms
per sample for a 2-worker service, which at 4 samples a second would take ~5% of a
2-core machine from the service under test. So each process's PSS is read every
``exact_every_s``, and every tick in between adds the change of its anonymous RSS
(``/proc/<pid>/statm``, microseconds): new anonymous pages are private, so they count
1:1 in PSS. The /proc scan for new processes also runs every ``exact_every_s``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def pss_mb(pid: int) -> float | None:
    """The process's proportional set size in MB, or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def anon_mb(pid: int) -> float | None:
    """Resident anonymous memory (resident minus file-backed and shmem) in MB."""
    try:
        fields = Path(f"/proc/{pid}/statm").read_text().split()
    except OSError:
        return None
    return (int(fields[1]) - int(fields[2])) * PAGE_MB


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def tree(root_pid: int) -> list[int]:
    """``root_pid`` and every process below it, from one pass over /proc.

    (tests.support.descendants_of rescans /proc once per process in the tree; at four
    samples a second that is CPU taken from the service under test.)
    """
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            pid = int(entry.name)
            children.setdefault(_ppid(pid), []).append(pid)
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


@dataclass
class _Proc:
    pid: int
    kind: str  # web, fork server, worker, resource tracker, other
    pss_mb: float = 0.0  # at the last exact read
    anon_mb: float = 0.0  # at the last exact read
    last_mb: float = 0.0
    peak_mb: float = 0.0
    samples: int = 0


@dataclass
class PssSampler:
    """Every ``interval_s``: the PSS of ``root_pid`` and of all its descendants.

    Keeps the peak of the total and each process's own peak. ``root_label`` names the
    root: "web" for ``dlaas serve``, "app" for the peer. ``exact_every_s=interval_s``
    reads smaps_rollup on every tick (exact, and costly; see the module docstring).
    """

    root_pid: int
    interval_s: float = 0.25
    root_label: str = "web"
    exact_every_s: float = 2.0
    peak_total_mb: float = 0.0
    last_total_mb: float = 0.0
    cpu_s: float = 0.0  # the sampler's own CPU time, so a bench can report its cost
    _procs: dict[int, _Proc] = field(default_factory=dict)
    _live: list[int] = field(default_factory=list)
    _exact_at: float = float("-inf")
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> PssSampler:
        self.sample(exact=True)
        self._thread = threading.Thread(target=self._loop, name="pss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample(exact=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            started = time.thread_time()
            self.sample()
            self.cpu_s += time.thread_time() - started

    def _kind(self, pid: int) -> str:
        if pid == self.root_pid:
            return self.root_label
        cmd = _cmdline(pid)
        if "resource_tracker" in cmd:
            return "resource tracker"
        if "forkserver" in cmd:
            parent = _ppid(pid)
            return "fork server" if parent == self.root_pid else "worker"
        if " worker" in cmd:  # spawned without the fork server: ``dlaas worker ...``
            return "worker"
        return "other"

    def sample(self, exact: bool = False) -> float:
        """One sample; returns the total PSS in MB. Safe to call beside the thread."""
        with self._lock:
            return self._sample(exact)

    def current(self) -> dict[str, float]:
        """Each live process's PSS in MB at the last sample, labelled as in ``peaks``."""
        with self._lock:
            live = set(self._live)
            return self._labelled(lambda p: p.last_mb, live)

    def _sample(self, exact: bool) -> float:
        now = time.monotonic()
        exact = exact or now - self._exact_at >= self.exact_every_s
        if exact:
            self._exact_at = now
            self._live = tree(self.root_pid)
        total, live = 0.0, []
        for pid in self._live:
            anon = anon_mb(pid)
            proc = self._procs.get(pid)
            if anon is not None and (exact or proc is None):
                pss = pss_mb(pid)
                if pss is not None:
                    proc = proc or self._procs.setdefault(pid, _Proc(pid, self._kind(pid)))
                    proc.pss_mb, proc.anon_mb = pss, anon
            if anon is None or proc is None:
                continue  # gone
            mb = proc.last_mb = proc.pss_mb + anon - proc.anon_mb
            proc.peak_mb = max(proc.peak_mb, mb)
            proc.samples += 1
            total += mb
            live.append(pid)
        self._live = live
        self.last_total_mb = total
        self.peak_total_mb = max(self.peak_total_mb, total)
        return total

    def peaks(self) -> dict[str, float]:
        """Each process's peak PSS in MB, labelled; workers numbered in order of start.

        A process seen in one sample only (the fork server's readiness probe, say) is left
        out of the per-process list; it still counted in the totals.
        """
        with self._lock:
            return self._labelled(lambda p: p.peak_mb, None)

    def _labelled(self, value: Callable[[_Proc], float], only: set[int] | None) -> dict[str, float]:
        out: dict[str, float] = {}
        workers = 0
        for proc in self._procs.values():  # in the order first seen
            if proc.samples < 2 and proc.pid != self.root_pid:
                continue
            label = proc.kind
            if label == "worker":
                workers += 1
                label = f"worker {workers}"
            elif label in out or label == "other":
                label = f"{label} (pid {proc.pid})"
            if only is None or proc.pid in only:
                out[label] = round(value(proc), 1)
        return out

    def summary(self) -> str:
        parts = ", ".join(f"{label} {mb:.0f}" for label, mb in self.peaks().items())
        return f"peak total {self.peak_total_mb:.0f} MB; peak per process (MB): {parts}"
