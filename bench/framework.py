"""What a benchmark is: its figures (with targets) and a function that measures them."""

from __future__ import annotations

import gc
import itertools
import operator
import resource
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
SCRATCH_DIR = BENCH_DIR / "out"
"""Data directories and logs of benchmark runs (git-ignored)."""

_COMPARISONS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le}
PROC_STAT = Path("/proc/stat")


@contextmanager
def cpu_steal() -> Iterator[Callable[[], float | None]]:
    """Measure the share (%) of CPU time the hypervisor gave to other guests while this machine's
    CPUs wanted to run ("steal"), over the block: `with cpu_steal() as stolen: ...; stolen()`.
    On a shared cloud host, a run with much steal is slower through no fault of the code. None
    where /proc/stat does not say."""
    before = _steal_and_total()
    after: tuple[int, int] | None = None

    def stolen() -> float | None:
        end = after or _steal_and_total()
        if before is None or end is None or end[1] <= before[1]:
            return None
        return round(100 * (end[0] - before[0]) / (end[1] - before[1]), 2)

    try:
        yield stolen
    finally:
        after = _steal_and_total()


def _steal_and_total() -> tuple[int, int] | None:
    """(steal, all) CPU time since boot in clock ticks, summed over the CPUs."""
    ticks = _cpu_ticks()
    return None if ticks is None else (ticks[7], sum(ticks))


def _cpu_ticks() -> list[int] | None:
    """CPU time since boot in clock ticks, summed over the CPUs: user, nice, system, idle, iowait,
    irq, softirq, steal. (Guest time, the fields after, is already counted in user and nice.)"""
    try:
        first = PROC_STAT.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if len(first) < 9 or first[0] != "cpu":
        return None
    return [int(value) for value in first[1:9]]


class MachineTimeline:
    """What the whole machine did, second by second, while a timed phase ran: the share of its cores
    busy, waiting for I/O and stolen by the host, and how much written data the kernel still held
    (Dirty + Writeback: it writes that back in bursts, and commits wait behind them). So that a slow
    stretch of a run can be told apart: the machine saturated, the disk busy, or the host slow.
    Samples /proc twice a second in a thread (a few hundred microseconds each)."""

    INTERVAL_S = 0.5

    def __init__(self) -> None:
        self.samples: list[tuple[float, list[int], int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="machine-timeline", daemon=True)

    def __enter__(self) -> MachineTimeline:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            sample = _cpu_ticks_and_unwritten_kb()
            if sample is not None:
                self.samples.append((time.time(), *sample))
            self._stop.wait(self.INTERVAL_S)

    def at(self, moment: float) -> dict[str, float]:
        """The machine over the sampling interval that holds wall-clock `moment` (empty if none)."""
        for (start, before, _), (end, after, unwritten_kb) in itertools.pairwise(self.samples):
            if start <= moment < end:
                ticks = [b - a for a, b in zip(before, after, strict=True)]
                total = sum(ticks[:8]) or 1
                busy = total - ticks[3] - ticks[4] - ticks[7]  # running here: not idle, waiting or stolen
                return {
                    "busy_pct": round(100 * busy / total, 1),
                    "iowait_pct": round(100 * ticks[4] / total, 1),
                    "steal_pct": round(100 * ticks[7] / total, 1),
                    "unwritten_mb": round(unwritten_kb / 1024, 1),
                }
        return {}


def _cpu_ticks_and_unwritten_kb() -> tuple[list[int], int] | None:
    ticks = _cpu_ticks()
    if ticks is None:
        return None
    try:
        memory = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    return ticks, sum(int(line.split()[1]) for line in memory if line.startswith(("Dirty:", "Writeback:")))


def process_tree_cpu_s(pid: int) -> float:
    """CPU time (user + system, s) of a process and every descendant, living or exited: each
    living process's own time plus that of its exited children (counted once their parent reaped
    them, as PostgreSQL's postmaster does its backends and autovacuum workers)."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return total
    for process in tree:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue  # exited since listed: its time is now its parent's, read after it or lost
        total += times.user + times.system + times.children_user + times.children_system
    return total


@contextmanager
def cpu_use(roots: Mapping[str, int]) -> Iterator[Callable[[], dict[str, float]]]:
    """CPU seconds spent over the block by each named process tree (name -> root pid), by "clients"
    (the benchmark's own process and the children it ran to completion inside the block, e.g. the
    load generators) and by the whole machine ("machine", all cores, anything running):
    `with cpu_use({...}) as used: ...; used()`."""

    def sample() -> dict[str, float]:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        machine = psutil.cpu_times()
        figures = {name: process_tree_cpu_s(pid) for name, pid in roots.items()}
        figures["clients"] = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
        figures["machine"] = machine.user + machine.system + machine.nice + machine.irq + machine.softirq
        return figures

    before = sample()
    after: dict[str, float] | None = None

    def used() -> dict[str, float]:
        end = after or sample()
        return {name: max(0.0, end[name] - before[name]) for name in before}

    try:
        yield used
    finally:
        after = sample()


def quantile_ms(sorted_seconds: Sequence[float], fraction: float) -> float:
    """The `fraction` quantile of latencies in seconds, sorted ascending, in milliseconds."""
    return sorted_seconds[min(len(sorted_seconds) - 1, int(fraction * len(sorted_seconds)))] * 1000


@contextmanager
def frozen_heap() -> Iterator[None]:
    """For a timed phase driven from the benchmark's own process: everything allocated before it
    (prepared requests, earlier phases' data) is moved out of the garbage collector's sight, so a
    collection during timing scans only what the phase allocates. Otherwise a full collection of
    that heap pauses the client for tens of milliseconds, and calls it sends or reads late count
    that pause as the service's latency (as bench/loadgen.py's processes do at start)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@dataclass(frozen=True)
class Target:
    comparison: str
    """">=" or "<="."""
    value: float

    def __post_init__(self) -> None:
        if self.comparison not in _COMPARISONS:
            raise ValueError(f"unknown comparison {self.comparison!r}")

    def met_by(self, value: float) -> bool:
        return _COMPARISONS[self.comparison](value, self.value)

    def __str__(self) -> str:
        return f"{self.comparison} {self.value:,g}"


def at_least(value: float) -> Target:
    return Target(">=", value)


def at_most(value: float) -> Target:
    return Target("<=", value)


@dataclass(frozen=True)
class Figure:
    """One measured number: its key in results.json, what it is, and optionally its target."""

    key: str
    label: str
    unit: str = ""
    target: Target | None = None


Steps = Callable[[int], None]


class Reporter:
    """What a benchmark uses to show progress: steps with or without a known total, and notes."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    @contextmanager
    def step(self, description: str, total: float | None = None) -> Iterator[Steps]:
        task = self._progress.add_task(description, total=total)

        def advance(amount: int = 1) -> None:
            self._progress.advance(task, amount)

        try:
            yield advance
        finally:
            self._progress.update(task, total=total or 1, completed=total or 1)
            self._progress.stop_task(task)

    def note(self, message: str) -> None:
        self._progress.console.print(f"  [dim]{message}[/dim]")


@dataclass
class Context:
    """Given to a benchmark's run function."""

    report: Reporter
    smoke: bool = False
    """A quick run with tiny sizes to check that the benchmark works; its figures are not recorded."""


@dataclass(frozen=True)
class Benchmark:
    name: str
    run: Callable[[Context], dict[str, float]]
    figures: list[Figure]
    notes: list[str] = field(default_factory=list)
    """Shown under the table in RESULTS.md: what the figures mean and how they were measured."""


def progress_display(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
