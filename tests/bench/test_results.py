from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench import framework
from bench.framework import Benchmark, Figure, cpu_steal
from bench.results import merge, render


def test_a_run_replaces_its_benchmarks_figures_and_keeps_the_others() -> None:
    before: dict[str, float | str] = {"identity.old_figure": 1.0, "identity.f1": 0.9, "consent.qps": 5.0}
    after = merge(before, "identity", {"identity.f1": 0.99}, 0.5, datetime(2026, 11, 26, tzinfo=UTC))
    assert after["identity.f1"] == 0.99 and after["consent.qps"] == 5.0
    assert "identity.old_figure" not in after
    assert after["identity.measured_at"] == "2026-11-26T00:00:00+00:00"


def test_the_runs_cpu_steal_is_kept_and_a_busy_host_is_flagged() -> None:
    quiet = merge({}, "identity", {"identity.f1": 0.99}, 0.1, steal_pct=0.4)
    busy = merge({}, "identity", {"identity.f1": 0.99}, 0.1, steal_pct=12.5)
    assert quiet["identity.steal_pct"] == 0.4
    benchmarks = [Benchmark("identity", lambda context: {}, [Figure("identity.f1", "F1")])]
    assert "CPU steal during the run: 0.4%" in render(quiet, benchmarks)
    assert "Busy host" not in render(quiet, benchmarks)
    assert "**Busy host:** CPU steal during the run: 12.5%" in render(busy, benchmarks)


def test_cpu_steal_is_the_share_of_cpu_time_stolen_over_the_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stat = tmp_path / "stat"
    monkeypatch.setattr(framework, "PROC_STAT", stat)
    stat.write_text("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 1 2 3\n")
    with cpu_steal() as stolen:
        stat.write_text("cpu  150 0 60 850 10 0 0 70 0 0\n")  # 140 ticks more, 30 of them stolen
    stat.write_text("cpu  999 0 999 999 10 0 0 999 0 0\n")  # after the block: not counted
    assert stolen() == round(100 * 30 / 140, 2)
