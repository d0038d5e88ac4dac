from __future__ import annotations

from datetime import UTC, datetime

from bench.results import merge


def test_a_run_replaces_its_benchmarks_figures_and_keeps_the_others() -> None:
    before: dict[str, float | str] = {"identity.old_figure": 1.0, "identity.f1": 0.9, "consent.qps": 5.0}
    after = merge(before, "identity", {"identity.f1": 0.99}, 0.5, datetime(2026, 11, 26, tzinfo=UTC))
    assert after["identity.f1"] == 0.99 and after["consent.qps"] == 5.0
    assert "identity.old_figure" not in after
    assert after["identity.measured_at"] == "2026-11-26T00:00:00+00:00"
