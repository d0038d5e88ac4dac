"""The configured vocabulary: purposes, channels and legal bases (strings, not proto enums, so a
deployment can add one by configuration)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PURPOSES = ("marketing", "personalization", "profiling", "analytics", "third_party_sharing")
DEFAULT_CHANNELS = ("email", "sms", "push", "phone", "in_store", "web")
# GDPR Art. 6(1) lawful bases.
DEFAULT_LEGAL_BASES = (
    "consent",
    "contract",
    "legal_obligation",
    "vital_interests",
    "public_task",
    "legitimate_interest",
)


@dataclass(frozen=True)
class Registry:
    purposes: frozenset[str]
    channels: frozenset[str]
    legal_bases: frozenset[str]

    @classmethod
    def of(cls, purposes: list[str], channels: list[str], legal_bases: list[str]) -> Registry:
        return cls(frozenset(purposes), frozenset(channels), frozenset(legal_bases))
