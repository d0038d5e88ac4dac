"""Consent settings: a vocabulary the store cannot hold is refused at startup, naming the setting."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from tailor_consent.server import ConsentSettings


@pytest.mark.parametrize("purposes", [["x" * 65], [""], ["has space"], []])
def test_a_purpose_the_store_cannot_hold_is_refused(purposes: list[str]) -> None:
    with pytest.raises(ValidationError, match="consent_purposes"):
        ConsentSettings(consent_purposes=purposes)


def test_the_default_vocabulary_and_longest_names_are_accepted() -> None:
    settings = ConsentSettings(consent_channels=["email", "x" * 64], consent_legal_bases=["Consent"])
    assert "x" * 64 in settings.registry().channels
    assert "third_party_sharing" in ConsentSettings().registry().purposes
