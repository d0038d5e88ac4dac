"""Helpers for consent's tests (the rules' unit tests build records the same way)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tailor_consent.domain.model import ConsentRecord

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def record(customer: str, purpose: str, channel: str, granted: bool, minutes: int) -> ConsentRecord:
    """A record `minutes` after T0, with a request id of its own."""
    return ConsentRecord(
        customer,
        purpose,
        channel,
        granted,
        "web",
        "consent",
        "v1",
        T0 + timedelta(minutes=minutes),
        f"{customer}-{purpose}-{channel}-{minutes}",
    )
