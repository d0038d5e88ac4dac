"""Identity settings: what an operator configures is what the service enforces."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from tailor_identity.domain.model import DEFAULT_LIMITS
from tailor_identity.server import IdentitySettings


def test_a_configured_limit_overrides_its_type_only() -> None:
    limits = IdentitySettings(identity_limits={"email": 5}).identity_limits
    assert limits == {**DEFAULT_LIMITS, "email": 5}
    assert limits["loyalty_id"] == 1


@pytest.mark.parametrize("limits", [{"emails": 5}, {"email": -1}])
def test_a_misspelt_type_or_a_limit_below_one_is_refused(limits: dict[str, int]) -> None:
    with pytest.raises(ValidationError):
        IdentitySettings(identity_limits=limits)


def test_the_phone_region_is_read_whatever_its_case() -> None:
    settings = IdentitySettings(identity_phone_region="us")
    assert settings.key_maker().key("phone", "(415) 555-0100").value == "+14155550100"
    with pytest.raises(ValidationError):
        IdentitySettings(identity_phone_region="USA")


def test_an_email_rule_for_an_internationalized_domain_applies() -> None:
    settings = IdentitySettings(identity_email_strip_plus_tags=["Bücher.de"], identity_email_ignore_dots=[])
    keys = settings.key_maker()
    assert keys.key("email", "ann+shop@bücher.de").value == keys.key("email", "ann@xn--bcher-kva.de").value
    with pytest.raises(ValidationError):
        IdentitySettings(identity_email_strip_plus_tags=["a..b"])
