"""Every benchmark `python -m bench` knows: one line per benchmark module."""

from __future__ import annotations

from bench import consent, identity, profile
from bench.framework import Benchmark

BENCHMARKS: dict[str, Benchmark] = {
    "consent": consent.BENCHMARK,
    "identity": identity.BENCHMARK,
    "profile": profile.BENCHMARK,
}
