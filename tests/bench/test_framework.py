"""bench.framework: what the profile benchmark charges each process tree (cpu_use), the frozen heap
of a client timing calls from its own process (frozen_heap), and the machine's second-by-second
timeline (MachineTimeline)."""

import gc
import subprocess
import sys
import time

from bench.framework import MachineTimeline, cpu_use, frozen_heap

BURN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass\n"
PARENT = (
    "import subprocess, sys, time\n"
    "subprocess.run([sys.executable, '-c', {child!r}], check=True)\n"
    "print('reaped', flush=True)\n"
    "time.sleep(30)\n"
)


def test_a_tree_is_charged_for_a_child_that_burned_cpu_and_exited() -> None:
    """The child's CPU reaches its parent's children_* once reaped: a backend that disconnected, or
    an autovacuum worker, still counts for PostgreSQL."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT.format(child=BURN.format(seconds=0.4))], stdout=subprocess.PIPE, text=True
    )
    try:
        with cpu_use({"tree": parent.pid}) as used:
            assert parent.stdout is not None
            assert parent.stdout.readline().strip() == "reaped"
        spent = used()
        assert set(spent) == {"tree", "clients", "machine"}
        assert spent["tree"] >= 0.3  # of 0.4 s: the child may have begun before the first reading
        assert spent["machine"] >= spent["tree"] * 0.9
    finally:
        parent.kill()
        parent.wait()


def test_clients_are_the_children_the_block_ran_to_completion() -> None:
    with cpu_use({}) as used:
        subprocess.run([sys.executable, "-c", BURN.format(seconds=0.3)], check=True)
        started = time.process_time()
        while time.process_time() < started + 0.1:
            pass
    assert used()["clients"] >= 0.35


def test_a_frozen_heap_is_out_of_the_collectors_sight_only_inside_the_block() -> None:
    prepared = [[index] for index in range(10_000)]  # container objects the collector tracks
    with frozen_heap():
        assert gc.get_freeze_count() >= len(prepared)
        in_sight = {id(tracked) for tracked in gc.get_objects()}
        assert not any(id(item) in in_sight for item in prepared[:3])
    assert gc.get_freeze_count() == 0


def test_the_timeline_shares_each_interval_between_busy_iowait_and_steal() -> None:
    timeline = MachineTimeline()
    # /proc/stat's first eight fields: user, nice, system, idle, iowait, irq, softirq, steal.
    timeline.samples = [
        (100.0, [0, 0, 0, 0, 0, 0, 0, 0], 2048),
        (100.5, [50, 0, 10, 20, 10, 0, 0, 10], 409_600),
    ]
    assert timeline.at(100.2) == {"busy_pct": 60.0, "iowait_pct": 10.0, "steal_pct": 10.0, "unwritten_mb": 400.0}
    assert timeline.at(99.0) == {}
    assert timeline.at(100.5) == {}


def test_the_timeline_samples_the_machine_while_it_runs() -> None:
    with MachineTimeline() as timeline:
        time.sleep(1.2)
    assert len(timeline.samples) >= 2
    busy = timeline.at(timeline.samples[0][0])
    assert 0 <= busy["busy_pct"] <= 100
